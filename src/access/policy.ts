// Shut by default, whatever the address. Access control is on as soon as a verification key is
// configured. Without one the gateway is open to anyone who reaches it, and that is never
// decided by the bind address: a same-host reverse proxy makes the whole internet "loopback".
// So an open gateway is only ever an explicit choice (--open, JOBWIRE_OPEN=1; make run passes
// it), said at every start; without a key and without it, serve refuses to start. A
// non-loopback --host without a key also needs --insecure-no-auth (which implies --open).

import type { Logger } from '../support/log.js'
import { ConfigError, isOpen, LOOPBACK_ORIGINS, type Config } from '../support/config.js'
import { createAuthenticator, isLoopbackHost, type Authenticator } from './auth.js'

/** The authenticator the configuration asks for; throws ConfigError for an unsafe one. */
export function accessControl(config: Config, log: Logger): Authenticator {
  const auth = createAuthenticator(config)
  if (!auth.enabled && !isLoopbackHost(config.host) && !config.insecureNoAuth) {
    throw new ConfigError(`--host ${config.host} is reachable from other machines, and no token verification is configured: ` +
      'set --jwt-secret, --jwt-public-key or --jwks-file, or pass --insecure-no-auth to let anyone who reaches it watch any job')
  }
  if (!auth.enabled && !isOpen(config)) {
    throw new ConfigError('no token verification is configured, and the gateway does not run open by default (whatever its address: ' +
      'behind a proxy on the same host, everyone is "local"). Either configure a key (--jwt-secret, --jwt-public-key or --jwks-file, ' +
      'or JOBWIRE_JWT_SECRET), or pass --open (JOBWIRE_OPEN=1) to let anyone who reaches the gateway watch, read and publish any job')
  }
  if (!auth.enabled) {
    const open = ['GET /ws/jobs (watch any job)', 'GET /jobs/<id> and /jobs/<id>/events (read any job)']
    if (!auth.hasProducerKey) open.push('POST /jobs/<id>/progress (publish to any job)')
    if (!auth.hasAdminKey) open.push('/admin/* (list and disconnect connections)')
    const loopback = isLoopbackHost(config.host)
    const who = loopback ? `anyone who can connect to ${config.host} (this machine, and whatever it forwards)` : `anyone who reaches ${config.host}`
    const pages = config.allowedOrigins.length === 0 ? 'pages from any origin (--allowed-origins *)'
      : `pages from its own origin and ${config.allowedOrigins.map((o) => o === LOOPBACK_ORIGINS ? 'loopback origins (localhost, 127.x.x.x, [::1])' : o).join(', ')}`
    log.warn({ host: config.host, open, origins: config.allowedOrigins },
      `${loopback ? 'OPEN' : 'INSECURE'}: access control is off (${config.insecureNoAuth ? '--insecure-no-auth' : '--open'}), no token is asked for: ${who} may use ${open.join('; ')}; in browsers, ${pages}`)
    if (config.trustProxy) {
      log.warn({ trustedProxies: 'see --trusted-proxies' },
        'OPEN BEHIND A PROXY: --open with --trust-proxy: the proxy in front forwards every client on its network, so anyone who reaches the proxy ' +
        '(the internet, for a public one) may watch, read and publish any job. Configure a key (--jwt-secret, --jwt-public-key or --jwks-file) instead')
    }
  } else {
    if (config.open || config.insecureNoAuth) {
      log.info(`${config.open ? '--open' : '--insecure-no-auth'} has no effect: a token verification key is configured, so every client needs a token`)
    }
    if ((config.jwtPublicKeyFile !== '' || config.jwksFile !== '') && config.jwtAudience === '') {
      // A public key or JWKS is often shared by several services; without aud, a token minted
      // for any of them is accepted here.
      log.warn('tokens are verified with a public key or JWKS but --jwt-audience is not set: tokens issued for other services by the same issuer are accepted')
    }
  }
  return auth
}
