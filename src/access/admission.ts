// Connection admission, in two steps: the connection rate per address (a token bucket),
// charged before the credentials are verified, so an unauthenticated flood costs a bucket
// lookup and not a signature check; then, once the user is known, the caps on open
// connections per user and per address. With --workers the primary process owns the counts,
// so the limits hold for the whole node, not per worker (see node/primary.ts).

import { TokenBucket } from './token-bucket.js'

export interface AdmissionRequest {
  readonly userId: string | null
  /** The per-address limit key (access/client-address.ts); null: not limited per address. */
  readonly address: string | null
}

export type AdmissionResult =
  | { readonly ok: true }
  | { readonly ok: false; readonly reason: string; readonly retryAfterMs: number }

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

const ADMITTED: AdmissionResult = { ok: true }
/** How long a client refused by a connection cap should wait before trying again. */
const CAP_RETRY_MS = 5000
/** Buckets of addresses that went quiet are forgotten after this long. */
const SWEEP_INTERVAL_MS = 30_000

export class LocalAdmission implements Admission {
  private readonly perUser = new Map<string, number>()
  private readonly perIp = new Map<string, number>()
  private readonly rates = new Map<string, TokenBucket>()

  constructor(private readonly limits: AdmissionLimits, private readonly clock: () => number = Date.now) {
    setInterval(() => this.sweep(), SWEEP_INTERVAL_MS).unref()
  }

  charge(ip: string | null): AdmissionResult {
    const { connectRatePerIp } = this.limits
    if (connectRatePerIp <= 0 || ip === null) return ADMITTED
    const now = this.clock()
    let bucket = this.rates.get(ip)
    if (bucket === undefined) {
      bucket = new TokenBucket(connectRatePerIp, connectRatePerIp * 2, now)
      this.rates.set(ip, bucket)
    }
    if (bucket.take(now)) return ADMITTED
    return { ok: false, reason: `more than ${connectRatePerIp} new connections per second from this address`, retryAfterMs: Math.max(1000, bucket.waitMs(now)) }
  }

  admit({ userId, address: ip }: AdmissionRequest): AdmissionResult {
    const { maxConnectionsPerUser, maxConnectionsPerIp } = this.limits
    const ipCount = ip === null ? 0 : this.perIp.get(ip) ?? 0
    if (ip !== null && maxConnectionsPerIp > 0 && ipCount >= maxConnectionsPerIp) {
      return { ok: false, reason: `at most ${maxConnectionsPerIp} connections per address`, retryAfterMs: CAP_RETRY_MS }
    }
    const userCount = userId === null ? 0 : this.perUser.get(userId) ?? 0
    if (userId !== null && maxConnectionsPerUser > 0 && userCount >= maxConnectionsPerUser) {
      return { ok: false, reason: `at most ${maxConnectionsPerUser} connections per user`, retryAfterMs: CAP_RETRY_MS }
    }
    if (ip !== null) this.perIp.set(ip, ipCount + 1)
    if (userId !== null) this.perUser.set(userId, userCount + 1)
    return ADMITTED
  }

  release({ userId, address: ip }: AdmissionRequest): void {
    if (ip !== null) decrement(this.perIp, ip)
    if (userId !== null) decrement(this.perUser, userId)
  }

  private sweep(): void {
    const now = this.clock()
    for (const [ip, bucket] of this.rates) if (bucket.full(now)) this.rates.delete(ip)
  }
}

function decrement(map: Map<string, number>, key: string): void {
  const n = (map.get(key) ?? 0) - 1
  if (n > 0) map.set(key, n)
  else map.delete(key)
}
