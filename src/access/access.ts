// One way in for every transport: who is asking (authenticate) and whether they hold a role
// (producer, admin). WebSocket upgrades, SSE, GET /jobs, the producer API, the admin API and
// the demo all come through here, so every refusal is counted the same way.

import type { HttpRequest } from 'uWebSockets.js'
import type { Metrics } from '../support/metrics.js'
import { AuthError, claimCovers, principalFor, tokenFrom, type Authenticator, type Principal } from './auth.js'
import { TokenBucket } from './token-bucket.js'

export type Transport = 'websocket' | 'sse' | 'http'

/** What a request presented: read from the request before any await (uWS requests are only
 * valid during their callback). */
export interface Credentials {
  readonly authorization: string
  readonly queryToken: string
}

export function credentialsOf(req: HttpRequest): Credentials {
  return { authorization: req.getHeader('authorization'), queryToken: req.getQuery('token') ?? '' }
}

/** What a producer credential allows: `jobs` null means any job; `admin` may also replace a
 * job's recorded owner. `owners` null means any owner may be recorded; otherwise only the
 * owners it covers (ids or `prefix*` patterns) or, when `self` is set, that exact user id. */
export interface ProducerGrant {
  readonly admin: boolean
  readonly jobs: readonly string[] | null
  readonly owners: readonly string[] | null
  readonly self: string | null
}

const ANY_PRODUCER: ProducerGrant = { admin: false, jobs: null, owners: null, self: null }
const ANY_ADMIN: ProducerGrant = { admin: true, jobs: null, owners: null, self: null }
const NOBODY: readonly string[] = Object.freeze([])

/** A producer token's grant. Its `owners` claim says whom it may record as owner; without
 * one, a token scoped by a `jobs` claim may record only itself (its sub) and an unscoped one
 * anybody, as the static producer key may. */
export function producerGrantOf(principal: Principal): ProducerGrant {
  const jobs = principal.jobs.length > 0 ? principal.jobs : null
  if (principal.owners !== undefined) return { admin: false, jobs, owners: principal.owners, self: null }
  return jobs === null ? ANY_PRODUCER : { admin: false, jobs, owners: NOBODY, self: principal.userId }
}

/** Why the grant may not record `owner` as a job's owner, or null when it may. */
export function ownerRefusal(grant: ProducerGrant, owner: string): string | null {
  if (grant.owners === null || claimCovers(grant.owners, owner) || owner === grant.self) return null
  return grant.self === null
    ? `this producer token may not record ${owner} as a job's owner (its owners claim)`
    : `this producer token may not record ${owner} as a job's owner: a token scoped by a jobs claim records only itself (${grant.self}) unless its owners claim names others`
}

/** Why a producer or admin credential was refused: none valid (401), or none valid and the
 * address is over its failure budget (429). */
export type CredentialRefusal = 'unauthorized' | 'throttled'

/** Failed producer/admin credentials per address: a burst of this many, then one a second. */
const FAILURE_BURST = 10
const FAILURES_PER_SEC = 1

/**
 * The failed-credential throttle. Validity is checked first, always: a correct static key (a
 * constant-time compare) or a valid token (a signature check, none for a token in the
 * principal cache) is answered whatever else came from its address, since that address may
 * be a NAT, a proxy or the same host as an attacker. Only failures are counted per address;
 * past the burst they are answered 429 rather than 401, with the connection closed.
 */
export class Access {
  private readonly failures = new Map<string, TokenBucket>()

  constructor(readonly auth: Authenticator, private readonly metrics: Metrics) {
    // Addresses that stopped failing are forgotten.
    setInterval(() => {
      const now = Date.now()
      for (const [ip, bucket] of this.failures) if (bucket.full(now)) this.failures.delete(ip)
    }, 30_000).unref()
  }

  get enabled(): boolean {
    return this.auth.enabled
  }

  /** The caller's principal (null with access control off), or the AuthError that refuses it.
   * For the WebSocket, SSE and job reads: the token from the Authorization header, else from
   * `?token=` (browsers cannot set headers on a WebSocket or an EventSource). */
  async authenticate(credentials: Credentials, transport: Transport): Promise<Principal | null | AuthError> {
    try {
      return await principalFor(this.auth, tokenFrom(credentials.authorization, credentials.queryToken))
    } catch (err) {
      const refusal = err instanceof AuthError ? err : new AuthError(`invalid token: ${(err as Error).message}`, 'invalid')
      this.metrics.countRefusal(transport, `token_${refusal.code}`)
      return refusal
    }
  }

  /** The admin routes: true for the static admin key or a token with the admin role, both
   * from the Authorization header only (never `?token=`: URLs end up in logs). With access
   * control off and no admin key set, anyone who reaches the gateway is admin. */
  async checkAdmin(credentials: Credentials, ip: string): Promise<true | CredentialRefusal> {
    const bearer = headerToken(credentials)
    if (this.auth.isAdminKey(bearer)) return true
    const principal = await this.verified(bearer, !this.auth.hasAdminKey)
    return principal?.admin === true ? true : this.failed(ip, 'not_admin')
  }

  /** What the caller may produce: the static producer or admin key, or a token with the
   * producer or admin role, all from the Authorization header only. */
  async producerGrant(credentials: Credentials, ip: string): Promise<ProducerGrant | CredentialRefusal> {
    const bearer = headerToken(credentials)
    if (this.auth.isAdminKey(bearer)) return ANY_ADMIN
    if (this.auth.isProducerKey(bearer)) return ANY_PRODUCER
    if (!this.auth.enabled && !this.auth.hasProducerKey) return ANY_PRODUCER
    const principal = await this.verified(bearer, false)
    if (principal?.admin) return ANY_ADMIN
    if (principal?.producer) return producerGrantOf(principal)
    return this.failed(ip, 'not_producer')
  }

  /** A verified token's principal; with access control off, an admin-like principal when
   * `openWhenOff` (nothing to verify against), else null. */
  private async verified(token: string, openWhenOff: boolean): Promise<Principal | null> {
    if (!this.auth.enabled) return openWhenOff ? OPEN_ADMIN : null
    try {
      return await this.auth.verify(token)
    } catch {
      return null
    }
  }

  /** Counts a failure against the address: 'throttled' once it is past its burst. */
  private failed(ip: string, reason: string): CredentialRefusal {
    this.metrics.countRefusal('http', reason)
    let bucket = this.failures.get(ip)
    if (bucket === undefined) {
      bucket = new TokenBucket(FAILURES_PER_SEC, FAILURE_BURST)
      this.failures.set(ip, bucket)
    }
    return bucket.take(Date.now()) ? 'unauthorized' : 'throttled'
  }
}

const OPEN_ADMIN: Principal = { userId: 'local', admin: true, producer: true, jobs: [], expiresAt: null }

/** Producer and admin credentials: `Authorization: Bearer <key or token>` only. */
function headerToken(credentials: Credentials): string {
  return tokenFrom(credentials.authorization, '')
}
