// What an operator needs to hear when Redis cannot be reached: where (the address, never the
// password) and why, in words, with what to check. ioredis reports socket errors as
// "connect ECONNREFUSED 127.0.0.1:6379" and command failures as "Reached the max retries per
// request limit", neither of which says what to fix.

export interface RedisEndpoint {
  readonly host?: string | undefined
  readonly port?: number | undefined
  readonly path?: string | null | undefined
}

/** host:port (or the unix socket path) of a connection's options. */
export function redisAddress(endpoint: RedisEndpoint): string {
  if (endpoint.path) return endpoint.path
  const host = endpoint.host ?? '127.0.0.1'
  return `${host.includes(':') ? `[${host}]` : host}:${endpoint.port ?? 6379}`
}

/** A Redis URL as it may be printed: the password replaced by ***. */
export function redactRedisUrl(url: string): string {
  try {
    const parsed = new URL(url)
    if (parsed.password !== '') parsed.password = '***'
    return parsed.toString().replace(/\/$/, '')
  } catch {
    return url
  }
}

/** The cause of a Redis connection or command failure, in words, with what to check. */
export function redisCause(err: Error & { code?: string }): string {
  const text = err.message
  const code = err.code ?? /\b(E[A-Z]+)\b/.exec(text)?.[1]
  switch (code) {
    case 'ECONNREFUSED':
      return 'connection refused: nothing listens there (is redis-server running, and is the address right?)'
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return 'host name not found (check the host in the Redis URL)'
    case 'ETIMEDOUT':
      return 'connection timed out (a firewall, or the wrong address?)'
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return 'no route to that address'
    case 'ECONNRESET':
    case 'EPIPE':
      return 'the connection was reset (Redis restarted, or a proxy or its maxclients closed it)'
  }
  if (/NOAUTH|WRONGPASS|invalid password|AUTH failed/i.test(text)) return 'authentication failed: check the user and password in the Redis URL'
  if (/max retries per request/i.test(text)) return 'no connection after several attempts'
  if (/Connection is closed/i.test(text)) return 'the connection closed'
  return text
}

/** One log line for a failed Redis connection: `beforeFirstConnect` tells startup (the address
 * may simply be wrong) from an outage (it worked before). */
export function redisConnectionProblem(endpoint: RedisEndpoint, err: Error, beforeFirstConnect: boolean): string {
  const where = redisAddress(endpoint)
  const cause = redisCause(err)
  return beforeFirstConnect
    ? `cannot reach Redis at ${where}: ${cause}; retrying with backoff (GET /readyz answers 503 until it connects)`
    : `lost Redis at ${where}: ${cause}; reconnecting with backoff (sockets stay open and are resynchronised when it is back)`
}
