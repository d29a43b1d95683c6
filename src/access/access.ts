// One way in for every transport: who is asking (authenticate) and whether they hold a role
// (producer, admin). WebSocket upgrades, SSE, GET /jobs, the producer API, the admin API and
// the demo all come through here, so every refusal is counted the same way.

import type { HttpRequest } from 'uWebSockets.js'
import type { Metrics } from '../support/metrics.js'
import { AuthError, principalFor, tokenFrom, type Authenticator, type Principal } from './auth.js'

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

export class Access {
  constructor(readonly auth: Authenticator, private readonly metrics: Metrics) {}

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

  /** The static key of the role, or a token carrying it (admin implies producer). With access
   * control off and no static key set, anyone who reaches the gateway (loopback only) has it. */
  async hasRole(credentials: Credentials, role: 'producer' | 'admin'): Promise<boolean> {
    const token = tokenFrom(credentials.authorization, credentials.queryToken)
    const isKey = role === 'admin' ? this.auth.isAdminKey(token) : this.auth.isProducerKey(token)
    if (isKey) return true
    const granted = await this.grants(token, role)
    if (!granted) this.metrics.countRefusal('http', `not_${role}`)
    return granted
  }

  private async grants(token: string, role: 'producer' | 'admin'): Promise<boolean> {
    if (!this.auth.enabled) return !(role === 'admin' ? this.auth.hasAdminKey : this.auth.hasProducerKey)
    try {
      const principal = await this.auth.verify(token)
      return principal.admin || (role === 'producer' && principal.producer)
    } catch {
      return false
    }
  }
}
