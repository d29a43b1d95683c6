// The secure-default rule: without a verification key access control is off, which is allowed
// on loopback only, unless --insecure-no-auth says otherwise (and then every start says so).

import type { Logger } from '../support/log.js'
import { ConfigError, type Config } from '../support/config.js'
import { createAuthenticator, isLoopbackHost, type Authenticator } from './auth.js'

/** The authenticator the configuration asks for; throws ConfigError for an unsafe one. */
export function accessControl(config: Config, log: Logger): Authenticator {
  const auth = createAuthenticator(config)
  if (!auth.enabled && !isLoopbackHost(config.host) && !config.insecureNoAuth) {
    throw new ConfigError(`--host ${config.host} is reachable from other machines, and no token verification is configured: ` +
      'set --jwt-secret, --jwt-public-key or --jwks-file, or pass --insecure-no-auth to let anyone who reaches it watch any job')
  }
  if (!auth.enabled) {
    const open = ['GET /ws/jobs (watch any job)', 'GET /jobs/<id> and /jobs/<id>/events (read any job)']
    if (!auth.hasProducerKey) open.push('POST /jobs/<id>/progress (publish to any job)')
    if (!auth.hasAdminKey) open.push('/admin/* (list and disconnect connections)')
    const loopback = isLoopbackHost(config.host)
    const who = loopback ? `anyone on this machine (${config.host})` : `anyone who reaches ${config.host} (--insecure-no-auth)`
    log.warn({ host: config.host, open }, `${loopback ? '' : 'INSECURE: '}access control is off: ${who} may use ${open.join('; ')}`)
  } else if ((config.jwtPublicKeyFile !== '' || config.jwksFile !== '') && config.jwtAudience === '') {
    // A public key or JWKS is often shared by several services; without aud, a token minted
    // for any of them is accepted here.
    log.warn('tokens are verified with a public key or JWKS but --jwt-audience is not set: tokens issued for other services by the same issuer are accepted')
  }
  return auth
}
