// Connection admission, in two steps: the connection rate per address (a token bucket),
// charged before the credentials are verified, so an unauthenticated flood costs a bucket
// lookup and not a signature check; then, once the user is known, the caps on open
// connections per user and per address. With --workers the primary process owns the counts,
// so the limits hold for the whole node, not per worker (see node/primary.ts).

import { FULL, TokenRate } from './token-bucket.js'

export interface AdmissionRequest {
  readonly userId: string | null
  /** The per-address limit key (access/client-address.ts); null: not limited per address. */
  readonly address: string | null
}

export type AdmissionResult =
  | { readonly ok: true }
  | { readonly ok: false; readonly reason: string; readonly retryAfterMs: number; readonly cause: RefusalCause }

/** Which limit refused a connection: one metric label per cause, so an alert can tell a
 * flood from one address (connect_rate) from a user with too many tabs (per_user). */
export type RefusalCause = 'connect_rate' | 'per_address' | 'per_user' | 'node_busy'

export interface Admission {
  /** Spends one new connection from the address's rate; before anything else is checked. */
  charge(address: string | null): AdmissionResult | Promise<AdmissionResult>
  /** The caps on open connections. */
  admit(request: AdmissionRequest): AdmissionResult | Promise<AdmissionResult>
  /** Called once for every admitted connection when it closes, with the very object that was
   * passed to admit(): it is the connection's ticket. */
  release(request: AdmissionRequest): void
}

export interface AdmissionLimits {
  readonly maxConnectionsPerUser: number
  readonly maxConnectionsPerIp: number
  readonly connectRatePerIp: number
}

export const ADMITTED: AdmissionResult = { ok: true }

/** Whether charge() spends anything for this address: the rate is on and the address is
 * limited (trusted proxies' addresses are not). */
export function rateLimited(limits: AdmissionLimits, address: string | null): boolean {
  return limits.connectRatePerIp > 0 && address !== null
}

/** What admit() counts for a request: its address and user, each only while its cap is on.
 * Both null: nothing to count, so nothing to ask the primary for either (node/serve.ts). */
export function countedFor(limits: AdmissionLimits, { userId, address }: AdmissionRequest): { ip: string | null; user: string | null } {
  return { ip: limits.maxConnectionsPerIp > 0 ? address : null, user: limits.maxConnectionsPerUser > 0 ? userId : null }
}
/** How long a client refused by a connection cap should wait before trying again. */
const CAP_RETRY_MS = 5000
/** Buckets of addresses that went quiet are forgotten after this long. */
const SWEEP_INTERVAL_MS = 30_000

export class LocalAdmission implements Admission {
  // Counted only while their cap is on: an address or user that is never limited costs no
  // entry (a map entry per connection, with one user or address each).
  private readonly perUser = new Map<string, number>()
  private readonly perIp = new Map<string, number>()
  /** Connect-rate buckets by address (token-bucket.ts: one number each). */
  private readonly buckets = new Map<string, number>()
  private readonly connectRate: TokenRate | null

  constructor(private readonly limits: AdmissionLimits, private readonly clock: () => number = Date.now) {
    this.connectRate = limits.connectRatePerIp > 0 ? new TokenRate(limits.connectRatePerIp, limits.connectRatePerIp * 2) : null
    setInterval(() => this.sweep(), SWEEP_INTERVAL_MS).unref()
  }

  charge(ip: string | null): AdmissionResult {
    const rate = this.connectRate
    if (rate === null || !rateLimited(this.limits, ip)) return ADMITTED
    const now = this.clock()
    const bucket = this.buckets.get(ip!) ?? FULL
    const next = rate.take(bucket, now)
    if (next !== null) {
      this.buckets.set(ip!, next)
      return ADMITTED
    }
    return { ok: false, reason: `more than ${rate.rate} new connections per second from this address`, retryAfterMs: Math.max(1000, rate.waitMs(bucket, now)), cause: 'connect_rate' }
  }

  admit(request: AdmissionRequest): AdmissionResult {
    const { maxConnectionsPerUser, maxConnectionsPerIp } = this.limits
    const { ip, user } = countedFor(this.limits, request)
    const ipCount = ip === null ? 0 : this.perIp.get(ip) ?? 0
    if (ip !== null && ipCount >= maxConnectionsPerIp) {
      return { ok: false, reason: `at most ${maxConnectionsPerIp} connections per address`, retryAfterMs: CAP_RETRY_MS, cause: 'per_address' }
    }
    const userCount = user === null ? 0 : this.perUser.get(user) ?? 0
    if (user !== null && userCount >= maxConnectionsPerUser) {
      return { ok: false, reason: `at most ${maxConnectionsPerUser} connections per user`, retryAfterMs: CAP_RETRY_MS, cause: 'per_user' }
    }
    if (ip !== null) this.perIp.set(ip, ipCount + 1)
    if (user !== null) this.perUser.set(user, userCount + 1)
    return ADMITTED
  }

  release({ userId, address }: AdmissionRequest): void {
    if (address !== null && this.limits.maxConnectionsPerIp > 0) decrement(this.perIp, address)
    if (userId !== null && this.limits.maxConnectionsPerUser > 0) decrement(this.perUser, userId)
  }

  private sweep(): void {
    const rate = this.connectRate
    if (rate === null) return
    const now = this.clock()
    for (const [ip, bucket] of this.buckets) if (rate.full(bucket, now)) this.buckets.delete(ip)
  }
}

function decrement(map: Map<string, number>, key: string): void {
  const n = (map.get(key) ?? 0) - 1
  if (n > 0) map.set(key, n)
  else map.delete(key)
}
