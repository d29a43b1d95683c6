// Configuration from flags and environment, validated once at startup. Every option has one
// row in OPTIONS: the flag, the environment variable, the default, how to parse it and what it
// means. `jobwire serve --help` and the README's configuration table are both read off it.

import { readFileSync } from 'node:fs'
import type { BlockList } from 'node:net'
import { availableParallelism } from 'node:os'
import { parseCidrs } from '../access/client-address.js'
import { parseClusterSeeds } from '../broker/cluster-seeds.js'

export type SubscriptionMode = 'per-job' | 'pattern'
export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent'
export type LogFormat = 'auto' | 'json' | 'pretty'

export interface Config {
  readonly host: string
  readonly port: number
  /** Empty: the embedded in-process broker (unless redisCluster is set). */
  readonly redisUrl: string
  /** Redis Cluster nodes to start from, host:port[,host:port...]; empty: no cluster. */
  readonly redisCluster: string
  readonly subscriptionMode: SubscriptionMode
  readonly channelPrefix: string
  readonly keyPrefix: string
  // job sources (src/sources/): Celery and BullMQ jobs read from their own Redis keys
  /** Empty: the gateway's Redis (--redis). */
  readonly celeryRedisUrl: string
  readonly celeryTracebacks: boolean
  readonly celeryOwnerField: string
  /** Empty: the gateway's Redis (--redis). */
  readonly bullmqRedisUrl: string
  readonly bullmqPrefix: string
  readonly bullmqOwnerField: string
  /** Seconds a processing job may stay silent before its watchers are told it stalled; 0: off. */
  readonly stallAfterSec: number
  readonly unsubscribeDelayMs: number
  readonly maxMessageBytes: number
  readonly maxSubscriptionsPerSocket: number
  readonly maxBackpressureBytes: number
  readonly catchUpBytes: number
  readonly idleTimeoutSec: number
  readonly brokerTimeoutMs: number
  readonly outageHoldMs: number
  readonly stateTtlSec: number
  readonly terminalTtlSec: number
  readonly drainMs: number
  readonly shutdownTimeoutMs: number
  readonly idleGcMb: number
  readonly workers: number
  readonly sharePort: boolean
  readonly logLevel: LogLevel
  readonly logBufferBytes: number
  readonly logFormat: LogFormat
  // access control (see src/access/auth.ts)
  readonly jwtSecret: string
  readonly jwtPublicKeyFile: string
  readonly jwksFile: string
  readonly jwtIssuer: string
  readonly jwtAudience: string
  readonly jwtMaxAgeSec: number
  readonly producerKey: string
  readonly adminKey: string
  readonly insecureNoAuth: boolean
  /** --open: anonymous access without any verification key (src/access/policy.ts). */
  readonly open: boolean
  /** The origins that may use the gateway from a browser, as decided: empty means any (only
   * with access control on, or when the operator wrote `*`); `loopback` stands for every
   * http(s) origin on localhost, 127.0.0.0/8 or [::1]. While the gateway is open and
   * --allowed-origins is not given, it is ['loopback']. The gateway's own origin always may. */
  readonly allowedOrigins: readonly string[]
  /** Answer Access-Control-Request-Private-Network preflights (a public page reaching a
   * gateway on a private address) for an allowed origin. */
  readonly allowPrivateNetwork: boolean
  readonly trustProxy: boolean
  readonly trustedProxies: BlockList
  // limits (0 = no limit)
  readonly maxConnectionsPerUser: number
  readonly maxConnectionsPerIp: number
  /** Per process; null: derived from the open-files limit (support/file-limit.ts). */
  readonly maxConnections: number | null
  readonly connectRatePerIp: number
  readonly maxMessagesPerSec: number
  readonly maxUpdateHz: number
  readonly demo: boolean
  /** What loadConfig decided for the operator (an adjusted default), to be said at startup. */
  readonly notes: readonly string[]
  /** What looks like a mistake but does not stop the start (an environment variable nothing
   * reads), to be logged as a warning at startup. */
  readonly warnings: readonly string[]
}

export class ConfigError extends Error {
  override name = 'ConfigError'
}

interface OptionSpec<K extends keyof Config> {
  readonly key: K
  readonly flag: string
  readonly env: readonly string[]
  readonly help: string
  /** The default as text, as a user would type it. */
  readonly fallback: string
  /** A switch: `--flag` alone means true; the environment takes 1/true/yes or 0/false/no. */
  readonly boolean?: true
  /** A secret: also read from a file (--<flag>-file, <ENV>_FILE), and never passed to worker
   * processes on their command line. */
  readonly secret?: true
  readonly parse: (raw: string, where: string) => Config[K]
}

function integer(min: number, max: number) {
  return (raw: string, where: string): number => {
    const n = Number(raw)
    if (raw.trim() === '' || !Number.isInteger(n) || n < min || n > max) {
      throw new ConfigError(`${where}: '${raw}' is not a whole number from ${min} to ${max}`)
    }
    return n
  }
}

function oneOf<T extends string>(values: readonly T[]) {
  return (raw: string, where: string): T => {
    if (!(values as readonly string[]).includes(raw)) {
      throw new ConfigError(`${where}: '${raw}' must be one of ${values.join(', ')}`)
    }
    return raw as T
  }
}

function prefix(raw: string, where: string): string {
  if (!/^[A-Za-z0-9_.:-]{1,64}$/.test(raw)) {
    throw new ConfigError(`${where}: '${raw}' must be 1..64 characters of A-Z a-z 0-9 _ . : -`)
  }
  return raw
}

/** BullMQ's key prefix: Redis Cluster users wrap it in braces (`{bull}`), a hash tag. */
function bullmqPrefix(raw: string, where: string): string {
  if (!/^[A-Za-z0-9_.:{}-]{1,64}$/.test(raw)) {
    throw new ConfigError(`${where}: '${raw}' must be 1..64 characters of A-Z a-z 0-9 _ . : - { }`)
  }
  return raw
}

/** A field name, or a dotted path into nested objects (`user.id`); empty: none. */
function fieldPath(raw: string, where: string): string {
  if (!/^([A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,7})?$/.test(raw)) {
    throw new ConfigError(`${where}: '${raw}' must be a field name like userId, or a path like user.id`)
  }
  return raw
}

function host(raw: string, where: string): string {
  if (!/^[A-Za-z0-9.:[\]-]{1,253}$/.test(raw)) {
    throw new ConfigError(`${where}: '${raw}' is not a host name or IP address`)
  }
  return raw.replace(/^\[(.*)\]$/, '$1')
}

function redisUrl(raw: string, where: string): string {
  if (raw === '') return ''
  let url: URL
  try {
    url = new URL(raw)
  } catch {
    throw new ConfigError(`${where}: '${raw}' is not a URL; use redis://host:port[/db]`)
  }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') {
    throw new ConfigError(`${where}: '${raw}' must start with redis:// or rediss://`)
  }
  return raw
}

function clusterNodes(raw: string, where: string): string {
  if (raw.trim() === '') return ''
  try {
    parseClusterSeeds(raw)
  } catch (err) {
    throw new ConfigError(`${where}: ${(err as Error).message}`)
  }
  return raw.split(',').map((entry) => entry.trim()).filter((entry) => entry !== '').join(',')
}

/** `auto` parses to 0 and is resolved once the broker choice is known. */
const AUTO_WORKERS = 0
function workers(raw: string, where: string): number {
  return raw === 'auto' ? AUTO_WORKERS : integer(1, 256)(raw, where)
}

/** 'auto' (null: derived from RLIMIT_NOFILE at startup) or a number of connections. */
function maxConnections(raw: string, where: string): number | null {
  return raw === 'auto' ? null : integer(1, 10_000_000)(raw, where)
}

function text(raw: string): string {
  return raw
}

function secretKey(min: number) {
  return (raw: string, where: string): string => {
    if (raw !== '' && Buffer.byteLength(raw) < min) throw new ConfigError(`${where}: use at least ${min} characters`)
    return raw
  }
}

function catchUpBytes(raw: string, where: string): number {
  const value = integer(0, 1_073_741_824)(raw, where)
  if (value > 0 && value < 1024) throw new ConfigError(`${where}: use 0 (off) or at least 1024 bytes`)
  return value
}

function switchValue(raw: string, where: string): boolean {
  if (/^(1|true|yes|on)$/i.test(raw)) return true
  if (/^(|0|false|no|off)$/i.test(raw)) return false
  throw new ConfigError(`${where}: '${raw}' is not a yes/no value (use 1 or 0)`)
}

/** `loopback` in an origin list: http(s) origins on localhost, 127.0.0.0/8 and [::1], any port. */
export const LOOPBACK_ORIGINS = 'loopback'
/** `*` in an origin list: any origin (without credentials). */
export const ANY_ORIGIN = '*'

function origins(raw: string, where: string): readonly string[] {
  const list = raw.split(',').map((o) => o.trim()).filter((o) => o !== '')
  for (const o of list) {
    if (o === LOOPBACK_ORIGINS || o === ANY_ORIGIN) continue
    if (!/^https?:\/\/(\*\.)?[A-Za-z0-9.-]+(:\d+)?$/.test(o)) {
      throw new ConfigError(`${where}: '${o}' is not an origin like https://app.example.com or https://*.example.com (or loopback, or *)`)
    }
  }
  return Object.freeze(list)
}

/** Whether a key verifying client tokens is configured (access control is then on). */
export function verificationConfigured(config: Pick<Config, 'jwtSecret' | 'jwtPublicKeyFile' | 'jwksFile'>): boolean {
  return config.jwtSecret !== '' || config.jwtPublicKeyFile !== '' || config.jwksFile !== ''
}

/** Whether anonymous access was asked for and applies: no verification key, and --open (or
 * --insecure-no-auth, which implies it). With a key, tokens are required whatever these say. */
export function isOpen(config: Pick<Config, 'jwtSecret' | 'jwtPublicKeyFile' | 'jwksFile' | 'open' | 'insecureNoAuth'>): boolean {
  return !verificationConfigured(config) && (config.open || config.insecureNoAuth)
}

/** The origin list in force: `*` anywhere means any origin (empty); while open, an empty list
 * means the loopback origins, not any origin. */
function effectiveOrigins(given: readonly string[], open: boolean): readonly string[] {
  if (given.includes(ANY_ORIGIN)) return Object.freeze([])
  if (given.length === 0 && open) return Object.freeze([LOOPBACK_ORIGINS])
  return given
}

function cidrs(raw: string, where: string): BlockList {
  try {
    return parseCidrs(raw.split(',').map((c) => c.trim()).filter((c) => c !== ''))
  } catch (err) {
    throw new ConfigError(`${where}: ${(err as Error).message}`)
  }
}

const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']

export const OPTIONS = [
  { key: 'host', flag: 'host', env: ['HOST', 'JOBWIRE_HOST'], fallback: '127.0.0.1', parse: host,
    help: 'address to listen on' },
  { key: 'port', flag: 'port', env: ['PORT', 'JOBWIRE_PORT'], fallback: '8080', parse: integer(0, 65535),
    help: 'port to listen on (0 picks a free one)' },
  { key: 'redisUrl', flag: 'redis', env: ['REDIS_URL', 'JOBWIRE_REDIS_URL'], fallback: '', parse: redisUrl, secret: true,
    help: 'Redis URL; empty runs the embedded in-process broker' },
  { key: 'redisCluster', flag: 'redis-cluster', env: ['REDIS_CLUSTER', 'JOBWIRE_REDIS_CLUSTER'], fallback: '', parse: clusterNodes, secret: true,
    help: 'Redis Cluster nodes to start from, host:port[,host:port...] (or redis://[user:password@]host:port entries); sharded pub/sub, per-job mode only' },
  { key: 'subscriptionMode', flag: 'subscription-mode', env: ['JOBWIRE_SUBSCRIPTION_MODE'], fallback: 'per-job',
    parse: oneOf<SubscriptionMode>(['per-job', 'pattern']),
    help: 'per-job: SUBSCRIBE each watched job; pattern: one PSUBSCRIBE <prefix>* per node' },
  { key: 'channelPrefix', flag: 'channel-prefix', env: ['JOBWIRE_CHANNEL_PREFIX'], fallback: 'progress:', parse: prefix,
    help: 'Redis channel prefix producers publish to' },
  { key: 'keyPrefix', flag: 'key-prefix', env: ['JOBWIRE_KEY_PREFIX'], fallback: 'jobwire:', parse: prefix,
    help: 'prefix of the job state keys (<prefix>job:<id>)' },
  { key: 'celeryRedisUrl', flag: 'celery-redis', env: ['JOBWIRE_CELERY_REDIS'], fallback: '', parse: redisUrl, secret: true,
    help: 'Redis of Celery\'s result backend, with its db number (redis://host:6379/1), for celery:<task_id> jobs; empty: the gateway\'s Redis' },
  { key: 'celeryTracebacks', flag: 'celery-tracebacks', env: ['JOBWIRE_CELERY_TRACEBACKS'], fallback: 'false', parse: switchValue,
    boolean: true, help: 'pass the Python traceback of a failed Celery task to browsers (off: only the exception message)' },
  { key: 'celeryOwnerField', flag: 'celery-owner-field', env: ['JOBWIRE_CELERY_OWNER_FIELD'], fallback: '', parse: fieldPath,
    help: 'task kwarg naming a Celery job\'s owner (Celery stores kwargs with result_extended=True); empty: none' },
  { key: 'bullmqRedisUrl', flag: 'bullmq-redis', env: ['JOBWIRE_BULLMQ_REDIS'], fallback: '', parse: redisUrl, secret: true,
    help: 'Redis of the BullMQ queues, for bullmq:<queue>:<job_id> jobs; empty: the gateway\'s Redis' },
  { key: 'bullmqPrefix', flag: 'bullmq-prefix', env: ['JOBWIRE_BULLMQ_PREFIX'], fallback: 'bull', parse: bullmqPrefix,
    help: 'BullMQ\'s key prefix (its prefix option)' },
  { key: 'bullmqOwnerField', flag: 'bullmq-owner-field', env: ['JOBWIRE_BULLMQ_OWNER_FIELD'], fallback: '', parse: fieldPath,
    help: 'field of a BullMQ job\'s data naming its owner (userId reads data.userId); empty: none' },
  { key: 'stallAfterSec', flag: 'stall-after', env: ['JOBWIRE_STALL_AFTER'], fallback: '0', parse: integer(0, 86_400),
    help: 'seconds a watched processing job may stay silent before its watchers get stalled: true (a payload\'s stall_after overrides it); 0: off' },
  { key: 'unsubscribeDelayMs', flag: 'unsubscribe-delay-ms', env: ['JOBWIRE_UNSUBSCRIBE_DELAY_MS'], fallback: '2000',
    parse: integer(0, 600_000), help: 'how long a job stays subscribed after its last watcher leaves' },
  { key: 'maxMessageBytes', flag: 'max-message-bytes', env: ['JOBWIRE_MAX_MESSAGE_BYTES'], fallback: '4096',
    parse: integer(64, 1_048_576), help: 'largest client message; larger ones close the socket with 1009' },
  { key: 'maxSubscriptionsPerSocket', flag: 'max-subscriptions', env: ['JOBWIRE_MAX_SUBSCRIPTIONS'], fallback: '100',
    parse: integer(1, 100_000), help: 'jobs one socket may watch at once' },
  { key: 'catchUpBytes', flag: 'catch-up-bytes', env: ['JOBWIRE_CATCH_UP_BYTES'],
    fallback: '262144', parse: catchUpBytes,
    help: 'unsent bytes past which a socket stops getting updates until it drains, then gets each job\'s latest state; below --max-backpressure-bytes (0: never, a slow socket is cut at the hard cap instead)' },
  { key: 'maxBackpressureBytes', flag: 'max-backpressure-bytes', env: ['JOBWIRE_MAX_BACKPRESSURE_BYTES'],
    fallback: '4194304', parse: integer(4096, 1_073_741_824),
    help: 'hard cap on a socket\'s unsent bytes; past it the socket is closed' },
  { key: 'idleTimeoutSec', flag: 'idle-timeout', env: ['JOBWIRE_IDLE_TIMEOUT'], fallback: '60', parse: integer(8, 960),
    help: 'seconds without traffic before a socket is closed (the server pings before that)' },
  { key: 'brokerTimeoutMs', flag: 'broker-timeout-ms', env: ['JOBWIRE_BROKER_TIMEOUT_MS'], fallback: '5000',
    parse: integer(100, 600_000), help: 'how long one snapshot read waits for the broker before failing' },
  { key: 'outageHoldMs', flag: 'outage-hold-ms', env: ['JOBWIRE_OUTAGE_HOLD_MS'], fallback: '30000',
    parse: integer(100, 3_600_000), help: 'how long a subscribe made during a broker outage is held, waiting for the broker, before it is answered unavailable' },
  { key: 'stateTtlSec', flag: 'state-ttl', env: ['JOBWIRE_STATE_TTL'], fallback: '86400', parse: integer(1, 31_536_000),
    help: 'seconds a job state is kept after its last update (producer default)' },
  { key: 'terminalTtlSec', flag: 'terminal-ttl', env: ['JOBWIRE_TERMINAL_TTL'], fallback: '3600',
    parse: integer(1, 31_536_000), help: 'the same, once the job is completed, failed or cancelled' },
  { key: 'drainMs', flag: 'drain-ms', env: ['JOBWIRE_DRAIN_MS'], fallback: '5000', parse: integer(0, 600_000),
    help: 'on SIGTERM, how long connected clients keep streaming while /readyz answers 503 and new clients are refused, so a load balancer takes the node out first (size it to its health check: fall x interval + interval); ends sooner when no client is left; SIGINT skips it' },
  { key: 'shutdownTimeoutMs', flag: 'shutdown-timeout-ms', env: ['JOBWIRE_SHUTDOWN_TIMEOUT_MS'], fallback: '5000',
    parse: integer(100, 600_000), help: 'upper bound on a graceful shutdown, after the drain' },
  { key: 'idleGcMb', flag: 'idle-gc-mb', env: ['JOBWIRE_IDLE_GC_MB'], fallback: '4', parse: integer(0, 1_000_000),
    help: 'once a process is quiet for 6 s and its V8 heap grew by this many MB since it last collected, collect, then compact in a second collection, and give the memory back (0: off)' },
  { key: 'sharePort', flag: 'share-port', env: ['JOBWIRE_SHARE_PORT'], fallback: 'false', parse: switchValue, boolean: true,
    help: 'start even if another process serves the port, and share it (SO_REUSEPORT), e.g. a rolling restart on one machine' },
  { key: 'workers', flag: 'workers', env: ['JOBWIRE_WORKERS'], fallback: 'auto', parse: workers,
    help: 'gateway processes sharing the port (auto: one per core with Redis, 1 embedded)' },
  { key: 'logLevel', flag: 'log-level', env: ['LOG_LEVEL', 'JOBWIRE_LOG_LEVEL'], fallback: 'info',
    parse: oneOf(LOG_LEVELS), help: 'fatal, error, warn, info, debug, trace or silent' },
  { key: 'logBufferBytes', flag: 'log-buffer-bytes', env: ['JOBWIRE_LOG_BUFFER_BYTES'], fallback: '1048576',
    parse: integer(4096, 1_073_741_824), help: 'log bytes held while stdout does not take them; more are dropped and counted' },
  { key: 'logFormat', flag: 'log-format', env: ['JOBWIRE_LOG_FORMAT'], fallback: 'auto', parse: oneOf<LogFormat>(['auto', 'json', 'pretty']),
    help: 'json: one JSON object a line (pino); pretty: one readable line (local time, level, component, message); auto: pretty on a terminal, else json' },
  { key: 'jwtSecret', flag: 'jwt-secret', env: ['JOBWIRE_JWT_SECRET'], fallback: '', parse: text, secret: true,
    help: 'HS256 secret verifying client tokens (prefer the environment variable, or --jwt-secret-file, to the flag)' },
  { key: 'jwtPublicKeyFile', flag: 'jwt-public-key', env: ['JOBWIRE_JWT_PUBLIC_KEY'], fallback: '', parse: text,
    help: 'PEM file with an RSA (RS256) or P-256 (ES256) public key verifying client tokens' },
  { key: 'jwksFile', flag: 'jwks-file', env: ['JOBWIRE_JWKS_FILE'], fallback: '', parse: text,
    help: 'JWKS file ({"keys":[...]}) verifying client tokens (RS256/ES256)' },
  { key: 'jwtIssuer', flag: 'jwt-issuer', env: ['JOBWIRE_JWT_ISSUER'], fallback: '', parse: text,
    help: 'required iss claim, when set' },
  { key: 'jwtAudience', flag: 'jwt-audience', env: ['JOBWIRE_JWT_AUDIENCE'], fallback: '', parse: text,
    help: 'required aud claim, when set' },
  { key: 'jwtMaxAgeSec', flag: 'jwt-max-age', env: ['JOBWIRE_JWT_MAX_AGE'], fallback: '0', parse: integer(0, 31_536_000),
    help: 'refuse tokens issued (iat) longer ago than this many seconds; 0: exp alone bounds them' },
  { key: 'producerKey', flag: 'producer-key', env: ['JOBWIRE_PRODUCER_KEY'], fallback: '', parse: secretKey(16), secret: true,
    help: 'static key for POST /jobs/<id>/progress (Authorization: Bearer <key>); a token with the producer role (signed with the JWT key) is accepted there too' },
  { key: 'adminKey', flag: 'admin-key', env: ['JOBWIRE_ADMIN_KEY'], fallback: '', parse: secretKey(16), secret: true,
    help: 'static key for the /admin endpoints (Authorization: Bearer <key>)' },
  { key: 'open', flag: 'open', env: ['JOBWIRE_OPEN'], fallback: 'false', parse: switchValue, boolean: true,
    help: 'allow anonymous access without a token verification key: anyone who reaches the gateway may watch, read and publish any job and use /admin (unless --producer-key/--admin-key); browsers only from its own and loopback origins unless --allowed-origins. Without a key, serve refuses to start unless given. Ignored when a key is configured (make run passes it)' },
  { key: 'insecureNoAuth', flag: 'insecure-no-auth', env: ['JOBWIRE_INSECURE_NO_AUTH'], fallback: 'false', parse: switchValue,
    boolean: true, help: 'allow a non-loopback --host without any token verification (implies --open: anyone who reaches it may watch any job)' },
  { key: 'allowedOrigins', flag: 'allowed-origins', env: ['JOBWIRE_ALLOWED_ORIGINS'], fallback: '', parse: origins,
    help: 'comma-separated browser origins allowed to open sockets and read job routes (https://*.example.com works; loopback: http(s) on localhost, 127.x, [::1], any port; *: any; the gateway\'s own origin always is); empty: any with a key configured, loopback while --open' },
  { key: 'allowPrivateNetwork', flag: 'allow-private-network', env: ['JOBWIRE_ALLOW_PRIVATE_NETWORK'], fallback: 'false', parse: switchValue,
    boolean: true, help: 'answer Private Network Access preflights (Access-Control-Allow-Private-Network: true) for allowed origins, so public pages may reach a gateway on a private address; off: never' },
  { key: 'trustProxy', flag: 'trust-proxy', env: ['JOBWIRE_TRUST_PROXY'], fallback: 'false', parse: switchValue,
    boolean: true, help: 'take the client address from X-Forwarded-For: the right-most entry that is not a trusted proxy' },
  { key: 'trustedProxies', flag: 'trusted-proxies', env: ['JOBWIRE_TRUSTED_PROXIES'], fallback: '127.0.0.0/8,::1/128', parse: cidrs,
    help: 'CIDRs of the proxies/load balancers in front; never limited per address as if they were one client' },
  { key: 'maxConnections', flag: 'max-connections', env: ['JOBWIRE_MAX_CONNECTIONS'], fallback: 'auto', parse: maxConnections,
    help: 'open sockets and SSE streams per gateway process; past it new ones get 503 at_capacity (auto: the open-files limit, ulimit -n, less a margin for Redis and HTTP, so the process never runs out of descriptors and stops answering)' },
  { key: 'maxConnectionsPerUser', flag: 'max-connections-per-user', env: ['JOBWIRE_MAX_CONNECTIONS_PER_USER'],
    fallback: '20', parse: integer(0, 1_000_000), help: 'open sockets per user id, node-wide (0: no limit)' },
  { key: 'maxConnectionsPerIp', flag: 'max-connections-per-ip', env: ['JOBWIRE_MAX_CONNECTIONS_PER_IP'],
    fallback: '1000', parse: integer(0, 10_000_000), help: 'open sockets per client address, node-wide (0: no limit)' },
  { key: 'connectRatePerIp', flag: 'connect-rate-per-ip', env: ['JOBWIRE_CONNECT_RATE_PER_IP'], fallback: '50',
    parse: integer(0, 1_000_000), help: 'new sockets per second per client address, bursts of twice that (0: no limit)' },
  { key: 'maxUpdateHz', flag: 'max-update-hz', env: ['JOBWIRE_MAX_UPDATE_HZ'], fallback: '0', parse: integer(0, 1000),
    help: 'at most this many updates a second per subscription, newest on the trailing edge, terminal at once (0: no cap; clients may ask for less with max_hz)' },
  { key: 'maxMessagesPerSec', flag: 'max-messages-per-sec', env: ['JOBWIRE_MAX_MESSAGES_PER_SEC'], fallback: '20',
    parse: integer(0, 1_000_000), help: 'client messages per second per socket, bursts of 2x that + --max-subscriptions (0: no limit)' },
  { key: 'demo', flag: 'demo', env: ['JOBWIRE_DEMO'], fallback: 'false', parse: switchValue, boolean: true,
    help: 'serve POST /demo/jobs, which starts simulated video-download jobs (on in make run)' },
] as const satisfies readonly OptionSpec<keyof Config>[]

export type FlagValues = Readonly<Record<string, string | undefined>>
export type Environment = Readonly<Record<string, string | undefined>>

/** Builds the config from parsed flags (by flag name) and the environment; flags win. */
export function loadConfig(flags: FlagValues, env: Environment): Config {
  const out: Record<string, unknown> = {}
  const notes: string[] = []
  const known = new Set<string>([...OPTIONS.map((o) => o.flag), ...SECRET_FILE_FLAGS])
  for (const name of Object.keys(flags)) {
    if (!known.has(name)) throw new ConfigError(`unknown option --${name}; see jobwire serve --help`)
  }
  for (const option of OPTIONS) {
    let flag = flags[option.flag]
    let envName = option.env.find((name) => env[name] !== undefined && env[name] !== '')
    if (option.key === 'port' && envName === 'JOBWIRE_PORT' && /^tcp:\/\//i.test(env.JOBWIRE_PORT!)) {
      // Kubernetes gives every pod <SERVICE>_PORT=tcp://<ip>:<port> for each Service; one named
      // jobwire would otherwise stop the gateway from starting.
      notes.push(`ignored JOBWIRE_PORT=${env.JOBWIRE_PORT}: that is the address Kubernetes gives for a Service named jobwire, not a port; set PORT or --port`)
      envName = option.env.find((name) => name !== 'JOBWIRE_PORT' && env[name] !== undefined && env[name] !== '')
    }
    if ('secret' in option) {
      const fromFile = secretFromFile(option, flags, env)
      if (fromFile !== undefined) {
        if (flag !== undefined || envName !== undefined) {
          throw new ConfigError(`${fromFile.where} and ${flag !== undefined ? `--${option.flag}` : envName} both give ${option.flag}: give one`)
        }
        flag = fromFile.value
      }
    }
    if (flag !== undefined) {
      out[option.key] = (option.parse as (raw: string, where: string) => unknown)(flag, `--${option.flag}`)
    } else if (envName !== undefined) {
      out[option.key] = (option.parse as (raw: string, where: string) => unknown)(env[envName] as string, `environment ${envName}`)
    } else {
      out[option.key] = (option.parse as (raw: string, where: string) => unknown)(option.fallback, `default of --${option.flag}`)
    }
  }
  // Every option was parsed above, so every field is set.
  const config = out as { -readonly [K in keyof Config]: Config[K] }
  if (config.redisUrl !== '' && config.redisCluster !== '') {
    throw new ConfigError('give --redis (a single Redis) or --redis-cluster (a Redis Cluster), not both')
  }
  if (config.redisCluster !== '' && config.subscriptionMode === 'pattern') {
    throw new ConfigError(
      '--subscription-mode pattern cannot be used with --redis-cluster: Redis Cluster has no pattern form of sharded ' +
        'pub/sub, so one PSUBSCRIBE would hear plain PUBLISHes only, never the producer script (which SPUBLISHes). ' +
        'Use --subscription-mode per-job (the default).',
    )
  }
  const embedded = config.redisUrl === '' && config.redisCluster === ''
  if (config.workers === AUTO_WORKERS) {
    config.workers = embedded ? 1 : cpusAvailable()
    // Workers share one port; with port 0 each would get its own.
    if (config.port === 0 && config.workers > 1) {
      notes.push(`--workers auto would start ${config.workers} workers, but with --port 0 they cannot share one port: running 1 worker (give a fixed --port for one per core)`)
      config.workers = 1
    }
  } else if (config.workers > 1 && embedded) {
    throw new ConfigError(
      `--workers ${config.workers} needs Redis: the embedded broker lives inside one process. ` +
        'Set --redis (or REDIS_URL) or --redis-cluster (or REDIS_CLUSTER), or use --workers 1.',
    )
  } else if (config.workers > 1 && config.port === 0) {
    throw new ConfigError(
      `--workers ${config.workers} needs a fixed --port: the workers share one port, and with --port 0 each would get its own. ` +
        'Give a --port, or use --workers 1.',
    )
  }
  if (config.terminalTtlSec > config.stateTtlSec) {
    throw new ConfigError(
      `--terminal-ttl (${config.terminalTtlSec}) must not exceed --state-ttl (${config.stateTtlSec}): ` +
        'a finished job is kept for less time than a running one, not more',
    )
  }
  if (config.catchUpBytes !== 0 && config.catchUpBytes >= config.maxBackpressureBytes) {
    throw new ConfigError(
      `--catch-up-bytes (${config.catchUpBytes}) must be below --max-backpressure-bytes (${config.maxBackpressureBytes}): ` +
        'a slow socket is parked at the first and cut at the second, so with the first at or above the second it is cut before it is ever caught up (0 turns parking off, if that is what you meant)',
    )
  }
  config.allowedOrigins = effectiveOrigins(config.allowedOrigins, isOpen(config))
  config.notes = Object.freeze(notes)
  config.warnings = Object.freeze(unreadEnvironment(env, embedded))
  return Object.freeze(config as Config)
}

/** The CPUs this process may use: the cores it sees, capped by a cgroup v2 CPU quota
 * (`cpu.max`, e.g. a container's --cpus 2), which Node 20's availableParallelism() ignores.
 * `cpuMax` is the file's text, for tests. */
export function cpusAvailable(cpuMax?: string | null): number {
  const cores = Math.max(1, availableParallelism())
  let text = cpuMax
  if (text === undefined) {
    try {
      text = readFileSync('/sys/fs/cgroup/cpu.max', 'utf8')
    } catch {
      text = null
    }
  }
  const [quota, period] = (text ?? '').trim().split(/\s+/)
  if (quota === undefined || quota === 'max' || period === undefined) return cores
  const share = Number(quota) / Number(period)
  if (!Number.isFinite(share) || share <= 0) return cores
  return Math.max(1, Math.min(cores, Math.ceil(share)))
}

/** --jwt-secret-file and the like: each secret option read from a file. */
export const SECRET_FILE_FLAGS: readonly string[] = OPTIONS.filter((o) => 'secret' in o).map((o) => `${o.flag}-file`)

/** A secret read from the file --<flag>-file or <ENV>_FILE names (one trailing newline
 * dropped, as editors and `echo` add one); undefined when neither is given. */
function secretFromFile(option: OptionSpec<keyof Config>, flags: FlagValues, env: Environment): { value: string; where: string } | undefined {
  const given: Array<{ path: string; where: string }> = []
  const flagPath = flags[`${option.flag}-file`]
  if (flagPath !== undefined) given.push({ path: flagPath, where: `--${option.flag}-file` })
  for (const name of option.env) {
    const path = env[`${name}_FILE`]
    if (path !== undefined && path !== '') given.push({ path, where: `${name}_FILE` })
  }
  if (given.length === 0) return undefined
  if (given.length > 1) throw new ConfigError(`${given.map((g) => g.where).join(' and ')} both give ${option.flag}: give one`)
  const { path, where } = given[0]!
  let value: string
  try {
    value = readFileSync(path, 'utf8')
  } catch (err) {
    throw new ConfigError(`${where}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
  }
  value = value.replace(/\r?\n$/, '')
  if (value === '') throw new ConfigError(`${where}: ${path} is empty`)
  return { value, where: `${where} (${path})` }
}

/** Environment variables jobwire's own tools read besides the options. */
const OTHER_JOBWIRE_VARIABLES = new Set(['JOBWIRE_WORKER_INDEX', 'JOBWIRE_GATEWAY', 'JOBWIRE_URL', 'JOBWIRE_SCREENSHOTS', 'JOBWIRE_BENCH_COMMON_H', 'JOBWIRE_PROP_SEED'])
/** What Kubernetes sets in every pod for a Service named jobwire. */
const KUBERNETES_SERVICE = /^JOBWIRE_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)?)$/

/** Warnings for variables that look meant for jobwire but that nothing reads: a JOBWIRE_*
 * name that is no option (with the nearest one), and a REDIS-like name beside REDIS_URL
 * (REDIS_ULR, REDIS_HOST): a typo there would otherwise start an isolated node on the
 * embedded broker without a word. */
function unreadEnvironment(env: Environment, embedded: boolean): string[] {
  const read = new Set<string>(OTHER_JOBWIRE_VARIABLES)
  for (const option of OPTIONS) {
    for (const name of option.env) {
      read.add(name)
      if ('secret' in option) read.add(`${name}_FILE`)
    }
  }
  const warnings: string[] = []
  for (const name of Object.keys(env).sort()) {
    if (read.has(name) || env[name] === undefined) continue
    const squashed = name.replace(/[^A-Z0-9]/gi, '').toUpperCase()
    if (name.startsWith('JOBWIRE_')) {
      if (KUBERNETES_SERVICE.test(name)) continue
      const near = nearest(name, read)
      warnings.push(`environment variable ${name} is not read by jobwire${near === null ? '' : `; did you mean ${near}?`}`)
    } else if (/REDIS/.test(squashed) || editDistance(squashed, 'REDISURL') <= 2 || editDistance(squashed, 'REDISCLUSTER') <= 2) {
      // Only names close to ours: REDIS_HOST and friends belong to other software as often.
      const near = nearest(name, new Set(['REDIS_URL', 'REDIS_CLUSTER']))
      if (near === null && !embedded) continue
      warnings.push(`environment variable ${name} is not read by jobwire (it reads REDIS_URL or REDIS_CLUSTER, or --redis / --redis-cluster)` +
        `${near === null ? '' : `; did you mean ${near}?`}${embedded ? ' The gateway is running on its embedded in-process broker, on its own, not on a shared Redis.' : ''}`)
    }
  }
  return warnings
}

/** The known name within edit distance 3 of `name`, or null. */
function nearest(name: string, known: ReadonlySet<string>): string | null {
  let best: string | null = null
  let bestDistance = 4
  for (const candidate of known) {
    const d = editDistance(name, candidate)
    if (d < bestDistance) {
      best = candidate
      bestDistance = d
    }
  }
  return best
}

/** Levenshtein distance. */
function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, i) => i)
  for (let i = 1; i <= a.length; i++) {
    const current = [i]
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
    previous = current
  }
  return previous[b.length]!
}

/** The command line and environment for a worker process: the primary's arguments without
 * any secret (a command line is visible to every user of the machine in `ps`); the secrets
 * go in the worker's environment instead, which only its owner can read. */
export function workerLaunch(argv: readonly string[], config: Config, env: Environment): { argv: string[]; env: Record<string, string | undefined> } {
  const secretFlags = new Set<string>()
  for (const option of OPTIONS) if ('secret' in option) secretFlags.add(`--${option.flag}`).add(`--${option.flag}-file`)
  const args: string[] = []
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    const name = arg.includes('=') ? arg.slice(0, arg.indexOf('=')) : arg
    if (!secretFlags.has(name)) {
      args.push(arg)
      continue
    }
    if (!arg.includes('=')) i++ // its value is the next argument
  }
  const out: Record<string, string | undefined> = { ...env }
  for (const option of OPTIONS) {
    if (!('secret' in option)) continue
    for (const name of option.env) {
      delete out[name]
      delete out[`${name}_FILE`]
    }
    const value = config[option.key]
    if (value !== '') out[option.env[0]!] = value
  }
  return { argv: args, env: out }
}

export function configHelp(width = 100): string {
  return helpColumns(OPTIONS.map((o) => [
    'boolean' in o ? `--${o.flag}` : `--${o.flag} <value>`,
    `${o.help}\n[env ${o.env.join(', ')}; default ${o.fallback || '(empty)'}${'secret' in o ? `; or from a file: --${o.flag}-file <path>, ${o.env.map((e) => `${e}_FILE`).join(', ')}` : ''}]`,
  ]), width)
}

/** Two columns, the second starting where the longest first one ends (plus two spaces) and
 * wrapped at `width`, its continuation lines indented to the same column; a newline in the
 * second column starts a new line there. */
export function helpColumns(rows: ReadonlyArray<readonly [string, string]>, width = 100): string {
  const column = Math.max(...rows.map(([left]) => left.length)) + 4
  const room = Math.max(30, width - column)
  return rows.map(([left, text]) => {
    const lines: string[] = []
    for (const paragraph of text.split('\n')) {
      let line = ''
      for (const word of paragraph.split(/\s+/)) {
        if (line !== '' && line.length + 1 + word.length > room) {
          lines.push(line)
          line = word
        } else {
          line = line === '' ? word : `${line} ${word}`
        }
      }
      lines.push(line)
    }
    return lines.map((l, i) => `${i === 0 ? `  ${left}`.padEnd(column) : ' '.repeat(column)}${l}`).join('\n')
  }).join('\n')
}
