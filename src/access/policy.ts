// The secure-default rule: without a verification key access control is off, which is allowed
// on loopback only, unless --insecure-no-auth says otherwise (and then every start says so).

import type { Logger } from '../support/log.js'
import { ConfigError, type Config } from '../support/config.js'
import { createAuthenticator, isLoopbackHost, type Authenticator } from './auth.js'

/** The authenticator the configuration asks for; throws ConfigError for an unsafe one. */
export function accessControl(config: Config, log: Logger): Authenticator {
  const auth = createAuthenticator(config)
  if (!auth.enabled && !isLoopbackHost(config.host)) {
    if (!config.insecureNoAuth) {
      throw new ConfigError(`--host ${config.host} is reachable from other machines, and no token verification is configured: ` +
        'set --jwt-secret, --jwt-public-key or --jwks-file, or pass --insecure-no-auth to let anyone who reaches it watch any job')
    }
    log.warn({ host: config.host }, 'INSECURE: access control is off on a non-loopback address (--insecure-no-auth); anyone who reaches it may watch any job')
  }
  return auth
}
