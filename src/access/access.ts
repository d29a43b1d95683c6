// One way in for every transport: who is asking (authenticate) and whether they hold a role
// (producer, admin). WebSocket upgrades, SSE, GET /jobs, the producer API, the admin API and
// the demo all come through here, so every refusal is counted the same way.

import type { HttpRequest } from 'uWebSockets.js'
import type { Metrics } from '../support/metrics.js'
import { AuthError, principalFor, tokenFrom, type Authenticator, type Principal } from './auth.js'
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
 * job's recorded owner. */
export interface ProducerGrant {
  readonly admin: boolean
  readonly jobs: readonly string[] | null
}

/** Failed producer/admin credentials per address: a burst of this many, then one a second. */
const FAILURE_BURST = 10
const FAILURES_PER_SEC = 1

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

  /** The caller's principal (null with access control off), or the AuthError that refuses it. */
  async authenticate(credentials: Credentials, transport: Transport): Promise<Principal | null | AuthError> {
    try {
      return await principalFor(this.auth, tokenFrom(credentials.authorization, credentials.queryToken))
    } catch (err) {
      const refusal = err instanceof AuthError ? err : new AuthError(`invalid token: ${(err as Error).message}`, 'invalid')
      this.metrics.countRefusal(transport, `token_${refusal.code}`)
      return refusal
    }
  }

  /** An address that keeps presenting bad producer/admin credentials is refused for a while
   * before anything is checked, so keys cannot be guessed at speed. */
  throttled(ip: string): boolean {
    const bucket = this.failures.get(ip)
    return bucket !== undefined && bucket.waitMs(Date.now()) > 0
  }

  /** The static admin key (Authorization header only: keys must not sit in URLs and logs), or
   * a token with the admin role. With access control off and no admin key set, anyone who
   * reaches the gateway (loopback only) is admin. */
  async isAdmin(credentials: Credentials, ip: string): Promise<boolean> {
    const key = headerToken(credentials)
    if (this.auth.isAdminKey(key)) return true
    const principal = await this.verified(credentials, !this.auth.hasAdminKey)
    return principal?.admin === true || this.failed(ip, 'not_admin')
  }

  /** What the caller may produce: the static producer or admin key (header only), or a token
   * with the producer or admin role, whose `jobs` claim, when present, scopes what it may write. */
  async producerGrant(credentials: Credentials, ip: string): Promise<ProducerGrant | null> {
    const key = headerToken(credentials)
    if (this.auth.isAdminKey(key)) return { admin: true, jobs: null }
    if (this.auth.isProducerKey(key)) return { admin: false, jobs: null }
    if (!this.auth.enabled && !this.auth.hasProducerKey) return { admin: false, jobs: null }
    const principal = await this.verified(credentials, false)
    if (principal?.admin) return { admin: true, jobs: null }
    if (principal?.producer) return { admin: false, jobs: principal.jobs.length > 0 ? principal.jobs : null }
    this.failed(ip, 'not_producer')
    return null
  }

  /** A verified token's principal; with access control off, an admin-like principal when
   * `openWhenOff` (nothing to verify against), else null. */
  private async verified(credentials: Credentials, openWhenOff: boolean): Promise<Principal | null> {
    if (!this.auth.enabled) return openWhenOff ? OPEN_ADMIN : null
    try {
      return await this.auth.verify(tokenFrom(credentials.authorization, credentials.queryToken))
    } catch {
      return null
    }
  }

  private failed(ip: string, reason: string): false {
    this.metrics.countRefusal('http', reason)
    let bucket = this.failures.get(ip)
    if (bucket === undefined) {
      bucket = new TokenBucket(FAILURES_PER_SEC, FAILURE_BURST, Date.now())
      this.failures.set(ip, bucket)
    }
    bucket.take(Date.now())
    return false
  }
}

const OPEN_ADMIN: Principal = { userId: 'local', admin: true, producer: true, jobs: [], expiresAt: null }

/** A static key is read from the Authorization header only. */
function headerToken(credentials: Credentials): string {
  return tokenFrom(credentials.authorization, '')
}
