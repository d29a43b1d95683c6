#!/usr/bin/env -S node --max-semi-space-size=4
// The `jobwire` command: `serve` runs the gateway, `publish` reports a job's progress, `token`
// mints an access token. The only module with process-level side effects besides serve.ts.

import { parseArgs } from 'node:util'
import { readFileSync } from 'node:fs'
import { Redis } from 'ioredis'
import { SignJWT } from 'jose'
import { configHelp, ConfigError, helpColumns, loadConfig, OPTIONS, SECRET_FILE_FLAGS } from './support/config.js'
import { projectPath } from './support/paths.js'
import { DeadlineError, withDeadline } from './support/deadline.js'
import { redactRedisUrl, redisCause } from './support/redis-problem.js'
import { clusterClient, nodeOptions, parseClusterSeeds, type ClusterSeeds } from './broker/cluster-seeds.js'
import { MAX_OWNER_LENGTH } from './access/auth.js'
import { ProducerError } from './producer/merge.js'
import { OwnerIndexError, Producer } from './producer/producer.js'
import { producerUrl } from './producer/producer-url.js'
import { isValidJobId, JOB_ID_RULE, MAX_JOB_ID_LENGTH, type JobPayload } from './wire/protocol.js'

/** Where `jobwire publish` goes when neither a Redis nor a gateway is named: the gateway that
 * `make run` and a default `jobwire serve` start, whatever broker it uses. */
const DEFAULT_GATEWAY = 'http://127.0.0.1:8080'
/** How long publish waits for a Redis Cluster (connect, then the update) before saying so. */
const CLUSTER_DEADLINE_MS = 10_000

const OVERVIEW = `jobwire: streams background-job progress from Redis to browsers

usage:
${helpColumns([
    ['jobwire serve [options]', 'run the gateway'],
    ['jobwire publish <job_id> [fields]', 'report a job\'s progress (stores state, bumps seq, publishes)'],
    ['jobwire token --sub <user> [options]', 'mint an HS256 access token with the gateway\'s --jwt-secret'],
    ['jobwire help [command] | --version', 'this text, or one command\'s'],
  ])}

Each command takes -h/--help.
`

const SERVE_HELP = `usage: jobwire serve [options]

Runs the gateway. Options (flags win over environment variables):
${configHelp()}
`

const PUBLISH_HELP = `usage: jobwire publish <job_id> [fields]

Reports a job's progress: stores the job's state, bumps its seq and publishes it to every
browser watching the job. It goes to the producer API of the gateway at ${DEFAULT_GATEWAY}
(the one \`make run\` starts, whatever its broker) unless a Redis or another gateway is
named, and says where it published.

${helpColumns([
    ['--status <s>', 'queued, processing, completed, failed or cancelled'],
    ['--progress <n>', '0..100'],
    ['--message <text>', 'human-readable message'],
    ['--data <json>', 'a JSON object with further fields (--status etc. override its keys)'],
    ['--owner <user>', 'record this user as the job\'s owner'],
    ['--replace', 'store this update as the whole state (by default its fields are merged into the stored ones)'],
    ['--restart', 'start a new generation of the job: a new epoch, this update as its whole state, the owner kept (a completed, failed or cancelled job only runs again this way)'],
    ['--plain', 'a plain PUBLISH (nothing stored, no seq), as pre-jobwire workers do; needs Redis'],
    ['--redis <url>', 'publish straight to this Redis\n[env REDIS_URL]'],
    ['--redis-cluster <nodes>', 'publish straight to this Redis Cluster, host:port[,host:port...] (sharded pub/sub)\n[env REDIS_CLUSTER]'],
    ['--gateway <url>', `publish through this gateway's producer API\n[env JOBWIRE_GATEWAY; default ${DEFAULT_GATEWAY}]`],
    ['--producer-key <key>', 'credentials for the gateway (--producer-key of serve)\n[env JOBWIRE_PRODUCER_KEY]'],
    ['--channel-prefix <p>, --key-prefix <p>', 'as for serve, with --redis'],
    ['-h, --help', 'this text'],
  ])}

Where it goes: --redis or --redis-cluster, else --gateway, else JOBWIRE_GATEWAY, else REDIS_URL or
REDIS_CLUSTER, else ${DEFAULT_GATEWAY}.
`

const TOKEN_HELP = `usage: jobwire token --sub <user> [--jobs <ids>] [--owners <ids>] [--ttl <duration>]
                     [--role producer|admin]

Mints an HS256 token signed with the secret the gateway verifies with, and prints only the
token: give it to a browser (?token= or getToken) or to a worker (Authorization: Bearer).

${helpColumns([
    ['--sub <user>', 'the user id (required); the user may watch the jobs it owns'],
    ['--jobs <ids>', 'job ids or prefix* patterns the token may watch besides the user\'s own (comma-separated; repeatable)'],
    ['--owners <ids>', 'user ids or prefix* patterns a producer token may record as a job\'s owner (comma-separated; repeatable; * alone: anyone)'],
    ['--ttl <duration>', 'lifetime: 90s, 15m, 1h, 7d or plain seconds [default 1h]'],
    ['--role <role>', 'producer (may use the producer API) or admin (every job and the /admin endpoints)'],
    ['--jwt-secret <secret>', 'the gateway\'s HS256 secret, at least 32 bytes\n[env JOBWIRE_JWT_SECRET; prefer the environment]'],
    ['--jwt-issuer <iss>', 'iss claim, when the gateway requires one\n[env JOBWIRE_JWT_ISSUER]'],
    ['--jwt-audience <aud>', 'aud claim, when the gateway requires one\n[env JOBWIRE_JWT_AUDIENCE]'],
    ['-h, --help', 'this text'],
  ])}
`

const HELP: Readonly<Record<string, string>> = { serve: SERVE_HELP, publish: PUBLISH_HELP, token: TOKEN_HELP }

const STATUSES = ['queued', 'processing', 'completed', 'failed', 'cancelled']

export async function main(argv: readonly string[]): Promise<number> {
  const [command, ...rest] = argv
  switch (command) {
    case 'serve':
      return runServe(rest)
    case 'publish':
      return runPublish(rest)
    case 'token':
      return runToken(rest)
    case 'help': {
      const topic = rest[0]
      if (topic === undefined) {
        process.stdout.write(`${OVERVIEW}\n${SERVE_HELP}\n${PUBLISH_HELP}\n${TOKEN_HELP}`)
        return 0
      }
      const text = HELP[topic]
      if (text === undefined) return fail(`no command '${topic}': see jobwire help`)
      process.stdout.write(text)
      return 0
    }
    case undefined:
    case '--help':
    case '-h':
      process.stdout.write(OVERVIEW)
      return command === undefined ? 2 : 0
    case '--version': {
      const pkg = JSON.parse(readFileSync(projectPath('package.json'), 'utf8')) as { version: string }
      process.stdout.write(`${pkg.version}\n`)
      return 0
    }
    default:
      process.stderr.write(`jobwire: unknown command '${command}'\n\n${OVERVIEW}`)
      return 2
  }
}

function fail(message: string): number {
  process.stderr.write(`jobwire: ${message}\n`)
  return 2
}

async function runServe(args: readonly string[]): Promise<number> {
  let values: Record<string, string | boolean | undefined>
  try {
    const options: Record<string, { type: 'string' | 'boolean'; short?: string }> = { help: { type: 'boolean', short: 'h' } }
    for (const o of OPTIONS) options[o.flag] = { type: 'boolean' in o ? 'boolean' : 'string' }
    for (const flag of SECRET_FILE_FLAGS) options[flag] = { type: 'string' }
    values = parseArgs({ args: [...args], options, strict: true, allowPositionals: false }).values
  } catch (err) {
    return fail(`${(err as Error).message}\nsee jobwire serve --help`)
  }
  if (values.help) {
    process.stdout.write(SERVE_HELP)
    return 0
  }
  const { help: _help, ...given } = values
  const flags = Object.fromEntries(Object.entries(given).map(([k, v]) => [k, typeof v === 'boolean' ? String(v) : v]))
  try {
    const config = loadConfig(flags as Record<string, string>, process.env)
    // Loaded here so that help, publish and token start without uWS and the gateway.
    const { serve } = await import('./node/serve.js')
    await serve(config, ['serve', ...args])
    return -1 // serve keeps running; it exits the process itself
  } catch (err) {
    if (err instanceof ConfigError) return fail(`bad configuration: ${err.message}`)
    throw err
  }
}

async function runPublish(args: readonly string[]): Promise<number> {
  let parsed
  try {
    parsed = parseArgs({
      args: [...args],
      options: {
        status: { type: 'string' },
        progress: { type: 'string' },
        message: { type: 'string' },
        data: { type: 'string' },
        owner: { type: 'string' },
        plain: { type: 'boolean' },
        replace: { type: 'boolean' },
        restart: { type: 'boolean' },
        redis: { type: 'string' },
        'redis-cluster': { type: 'string' },
        gateway: { type: 'string' },
        'producer-key': { type: 'string' },
        'channel-prefix': { type: 'string' },
        'key-prefix': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: true,
    })
  } catch (err) {
    return fail(`${(err as Error).message}\nsee jobwire publish --help`)
  }
  const { values, positionals } = parsed
  if (values.help) {
    process.stdout.write(PUBLISH_HELP)
    return 0
  }
  if (positionals.length !== 1) return fail('publish takes exactly one job id: jobwire publish <job_id> [--progress N] ...')
  const jobId = positionals[0]!
  if (!isValidJobId(jobId)) return fail(`'${jobId}' is not a job id (${JOB_ID_RULE})`)

  let payload: JobPayload = {}
  if (values.data !== undefined) {
    try {
      payload = JSON.parse(values.data) as JobPayload
    } catch {
      return fail('--data is not valid JSON')
    }
    if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) return fail('--data must be a JSON object')
  }
  if (values.status !== undefined) {
    if (!STATUSES.includes(values.status)) return fail(`--status must be one of ${STATUSES.join(', ')}`)
    payload.status = values.status
  }
  if (values.progress !== undefined) {
    const progress = Number(values.progress)
    if (values.progress.trim() === '' || !Number.isFinite(progress) || progress < 0 || progress > 100) {
      return fail(`--progress must be a number from 0 to 100, not '${values.progress}'`)
    }
    payload.progress = progress
  }
  if (values.message !== undefined) payload.message = values.message

  if (values.redis && values['redis-cluster']) return fail('give --redis (a single Redis) or --redis-cluster (a Redis Cluster), not both')
  const target = publishTarget(values.redis, values['redis-cluster'], values.gateway, process.env)
  if (target.kind === 'cluster') {
    let seeds: ClusterSeeds
    try {
      seeds = parseClusterSeeds(target.url)
    } catch (err) {
      return fail(`--redis-cluster: ${(err as Error).message}`)
    }
    const prefixes = {
      ...(values['channel-prefix'] ? { channelPrefix: values['channel-prefix'] } : {}),
      ...(values['key-prefix'] ? { keyPrefix: values['key-prefix'] } : {}),
    }
    return publishViaCluster(seeds, jobId, payload, { plain: values.plain === true, replace: values.replace === true, restart: values.restart === true, owner: values.owner, ...prefixes })
  }
  if (target.kind === 'gateway') {
    if (values.plain) return fail(`--plain needs Redis (--redis redis://host:port): the producer API of ${target.url} always stores state`)
    return publishViaGateway(target.url, jobId, payload, values.owner, values['producer-key'] ?? process.env.JOBWIRE_PRODUCER_KEY, values.replace === true, values.restart === true)
  }
  if (!/^rediss?:\/\/./.test(target.url)) return fail(`'${target.url}' is not a Redis URL like redis://127.0.0.1:6379`)
  const where = `Redis at ${redactRedisUrl(target.url)}`
  // Our own connection, tried once: an unreachable Redis is reported with its cause at once,
  // rather than as ioredis's "max retries per request" after several attempts.
  const redis = new Redis(target.url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 5000 })
  // connect() rejects with "Connection is closed"; the socket's own error says why.
  let socketError: Error | null = null
  redis.on('error', (err: Error) => {
    socketError ??= err
  })
  try {
    await redis.connect()
  } catch (err) {
    return fail(`cannot reach ${where}: ${redisCause(socketError ?? (err as Error))}`)
  }
  const producer = new Producer({
    redis,
    ...(values['channel-prefix'] ? { channelPrefix: values['channel-prefix'] } : {}),
    ...(values['key-prefix'] ? { keyPrefix: values['key-prefix'] } : {}),
  })
  try {
    if (values.plain) {
      await producer.publish(jobId, payload)
      process.stdout.write(`published ${jobId} (plain PUBLISH, not stored) to ${where}\n`)
    } else {
      const seq = await producer.progress(jobId, payload, { ...(values.owner ? { owner: values.owner } : {}), ...(values.replace ? { replace: true } : {}), ...(values.restart ? { restart: true } : {}) })
      process.stdout.write(`published ${jobId} seq=${seq} to ${where}\n`)
    }
    return 0
  } catch (err) {
    if (err instanceof ProducerError) return fail(`refused: ${err.message}`)
    return fail(`cannot publish to ${where}: ${redisCause(err as Error)}`)
  } finally {
    await redis.quit().catch(() => redis.disconnect())
  }
}

/** Flags win over the environment; a named Redis or gateway wins over the default gateway. */
function publishTarget(redisFlag: string | undefined, clusterFlag: string | undefined, gatewayFlag: string | undefined, env: Readonly<Record<string, string | undefined>>): { kind: 'redis' | 'cluster' | 'gateway'; url: string } {
  if (redisFlag) return { kind: 'redis', url: redisFlag }
  if (clusterFlag) return { kind: 'cluster', url: clusterFlag }
  if (gatewayFlag) return { kind: 'gateway', url: gatewayFlag }
  if (env.JOBWIRE_GATEWAY) return { kind: 'gateway', url: env.JOBWIRE_GATEWAY }
  if (env.REDIS_URL) return { kind: 'redis', url: env.REDIS_URL }
  if (env.REDIS_CLUSTER) return { kind: 'cluster', url: env.REDIS_CLUSTER }
  return { kind: 'gateway', url: DEFAULT_GATEWAY }
}

/** Why the first node cannot be reached, from a plain connection to it: ioredis' cluster
 * client reports every unreachable node as "Connection is closed." */
async function seedProblem(seeds: ClusterSeeds): Promise<Error | null> {
  const node = seeds.nodes[0]!
  const probe = new Redis({ host: node.host, port: node.port, ...nodeOptions(seeds), lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 5000 })
  let socketError: Error | null = null
  probe.on('error', (err: Error) => {
    socketError ??= err
  })
  try {
    await probe.connect()
    await probe.ping()
    return null
  } catch (err) {
    return socketError ?? (err as Error)
  } finally {
    probe.disconnect()
  }
}

/** Straight to a Redis Cluster: the producer script in the cluster layout, on sharded pub/sub. */
async function publishViaCluster(
  seeds: ClusterSeeds,
  jobId: string,
  payload: JobPayload,
  options: { plain: boolean; replace: boolean; restart: boolean; owner: string | undefined; channelPrefix?: string; keyPrefix?: string },
): Promise<number> {
  const where = `Redis Cluster at ${seeds.nodes.map((n) => `${n.host}:${n.port}`).join(',')}`
  // Tried once, as a single Redis is: an unreachable cluster is reported with its cause at once.
  const cluster = clusterClient(seeds, { lazyConnect: true, clusterRetryStrategy: () => null, redisOptions: { maxRetriesPerRequest: 0, connectTimeout: 5000 } })
  let socketError: Error | null = null
  const remember = (err: Error & { lastNodeError?: Error }) => {
    socketError ??= err.lastNodeError ?? err
  }
  cluster.on('error', remember)
  cluster.on('node error', remember)
  try {
    await withDeadline(cluster.connect(), CLUSTER_DEADLINE_MS, `${where} to be ready`)
  } catch (err) {
    cluster.disconnect()
    return fail(`cannot reach ${where}: ${err instanceof DeadlineError ? clusterStalled() : redisCause((await seedProblem(seeds)) ?? socketError ?? (err as Error))}`)
  }
  const { plain, replace, restart, owner, ...names } = options
  const producer = new Producer({ cluster, ...names })
  try {
    // ioredis waits, without a timer of its own, for a slot that has no master: the deadline
    // both bounds that and keeps the process alive to say so (a bare pending await would end
    // it with exit code 13 and no word).
    if (plain) {
      await withDeadline(producer.publish(jobId, payload), CLUSTER_DEADLINE_MS, `${where} to take the PUBLISH`)
      process.stdout.write(`published ${jobId} (plain PUBLISH, not stored) to ${where}\n`)
    } else {
      const seq = await withDeadline(producer.progress(jobId, payload, { ...(owner ? { owner } : {}), ...(replace ? { replace } : {}), ...(restart ? { restart } : {}) }),
        CLUSTER_DEADLINE_MS, `${where} to run the producer script`)
      process.stdout.write(`published ${jobId} seq=${seq} to ${where} (sharded pub/sub)\n`)
    }
    return 0
  } catch (err) {
    if (err instanceof DeadlineError) return fail(`cannot publish to ${where}: ${clusterStalled()}`)
    if (err instanceof ProducerError) return fail(`refused: ${err.message}`)
    // The second step (the owner's job list, in the owner's slot) failed after the first.
    if (err instanceof OwnerIndexError) return fail(`published ${jobId} seq=${err.seq} to ${where}, but not listed under its owner ${err.owner} (the job's next update lists it): ${redisCause(err.cause as Error)}`)
    return fail(`cannot publish to ${where}: ${redisCause(err as Error)}`)
  } finally {
    await cluster.quit().catch(() => cluster.disconnect())
  }
}

/** The wait that timed out, and what usually causes it on a cluster. */
function clusterStalled(): string {
  return `no answer within ${CLUSTER_DEADLINE_MS / 1000} s: the cluster does not serve this job's slot (is every slot served by a master? redis-cli --cluster check <node>)`
}

async function publishViaGateway(gateway: string, jobId: string, payload: JobPayload, owner: string | undefined, key: string | undefined, replace: boolean, restart: boolean): Promise<number> {
  let url: URL
  try {
    url = producerUrl(gateway, jobId)
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error('not http')
  } catch {
    return fail(`--gateway '${gateway}' is not a URL like http://127.0.0.1:8080`)
  }
  if (owner) url.searchParams.set('owner', owner)
  if (replace) url.searchParams.set('replace', '1')
  if (restart) url.searchParams.set('restart', '1')
  try {
    const res = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(key ? { authorization: `Bearer ${key}` } : {}) },
      body: JSON.stringify(payload),
      signal: AbortSignal.timeout(10_000),
    })
    const body = (await res.json().catch(() => ({}))) as { seq?: number; message?: string; error?: string }
    if (!res.ok) return fail(`refused by the gateway at ${url.origin} (${res.status}): ${body.message ?? body.error ?? res.statusText}`)
    process.stdout.write(`published ${jobId} seq=${body.seq} to the gateway at ${url.origin}\n`)
    return 0
  } catch (err) {
    const cause = (err as Error & { cause?: Error & { code?: string } }).cause
    const why = cause?.code === 'ECONNREFUSED' ? 'connection refused: is the gateway running there (make run, or jobwire serve)?'
      : (err as Error).name === 'TimeoutError' ? 'no answer within 10 s'
        : cause ? redisCause(cause) : (err as Error).message
    return fail(`cannot reach the gateway at ${url.origin}: ${why}\n` +
      '(a gateway elsewhere: --gateway http://host:port or JOBWIRE_GATEWAY; or publish straight to Redis with --redis redis://host:port or REDIS_URL)')
  }
}

async function runToken(args: readonly string[]): Promise<number> {
  let parsed
  try {
    parsed = parseArgs({
      args: [...args],
      options: {
        sub: { type: 'string' },
        jobs: { type: 'string', multiple: true },
        owners: { type: 'string', multiple: true },
        ttl: { type: 'string' },
        role: { type: 'string' },
        'jwt-secret': { type: 'string' },
        'jwt-issuer': { type: 'string' },
        'jwt-audience': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    })
  } catch (err) {
    return fail(`${(err as Error).message}\nsee jobwire token --help`)
  }
  const { values } = parsed
  if (values.help) {
    process.stdout.write(TOKEN_HELP)
    return 0
  }
  const sub = values.sub ?? ''
  if (sub === '' || sub.length > 256) return fail('token needs --sub <user id> (1..256 characters): the user the token speaks for')
  const secret = values['jwt-secret'] ?? process.env.JOBWIRE_JWT_SECRET ?? ''
  if (secret === '') return fail('token needs the secret the gateway verifies with: set JOBWIRE_JWT_SECRET (or --jwt-secret)')
  if (Buffer.byteLength(secret) < 32) return fail('the secret must be at least 32 bytes, as the gateway requires of --jwt-secret')
  const ttlSec = parseDuration(values.ttl ?? '1h')
  if (ttlSec === null) return fail(`--ttl '${values.ttl}' is not a duration like 90s, 15m, 1h, 7d or a number of seconds`)
  const jobs = (values.jobs ?? []).flatMap((j) => j.split(',')).map((j) => j.trim()).filter((j) => j !== '')
  const badJob = jobs.find((j) => !isValidJobId(j.endsWith('*') ? j.slice(0, -1) || 'x' : j) || j.length > MAX_JOB_ID_LENGTH + 1)
  if (badJob !== undefined) return fail(`--jobs: '${badJob}' is not a job id or a prefix ending in * (${JOB_ID_RULE})`)
  // The gateway takes an owner of 1..256 characters without whitespace (the producer API's
  // ?owner=), and an owners claim of at most 1,000 entries (access/auth.ts).
  const owners = values.owners === undefined ? undefined
    : values.owners.flatMap((o) => o.split(',')).map((o) => o.trim()).filter((o) => o !== '')
  if (owners !== undefined) {
    if (owners.length === 0) return fail('--owners needs user ids or prefix* patterns (comma-separated), e.g. --owners alice,team-*')
    const badOwner = owners.find((o) => !OWNER_ENTRY.test(o))
    if (badOwner !== undefined) {
      return fail(`--owners: '${badOwner}' is not a user id (1..${MAX_OWNER_LENGTH} characters without whitespace) or a prefix ending in *`)
    }
    if (owners.length > MAX_OWNERS) return fail(`--owners: ${owners.length} entries; the gateway accepts at most ${MAX_OWNERS}`)
  }
  if (values.role !== undefined && values.role !== 'producer' && values.role !== 'admin') {
    return fail(`--role must be producer or admin, not '${values.role}'`)
  }
  const issuer = values['jwt-issuer'] ?? process.env.JOBWIRE_JWT_ISSUER ?? ''
  const audience = values['jwt-audience'] ?? process.env.JOBWIRE_JWT_AUDIENCE ?? ''
  const now = Math.floor(Date.now() / 1000)
  let jwt = new SignJWT({ ...(jobs.length > 0 ? { jobs } : {}), ...(owners !== undefined ? { owners } : {}), ...(values.role ? { role: values.role } : {}) })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setSubject(sub)
    .setIssuedAt(now)
    .setExpirationTime(now + ttlSec)
  if (issuer !== '') jwt = jwt.setIssuer(issuer)
  if (audience !== '') jwt = jwt.setAudience(audience)
  process.stdout.write(`${await jwt.sign(new TextEncoder().encode(secret))}\n`)
  return 0
}

/** One `--owners` entry: a user id, or a prefix (possibly empty: anyone) ending in `*`. */
const OWNER_ENTRY = new RegExp(`^(?:\\S{1,${MAX_OWNER_LENGTH}}|\\S{0,${MAX_OWNER_LENGTH}}\\*)$`)
/** Entries an owners claim may list (access/auth.ts refuses a token with more). */
const MAX_OWNERS = 1000

/** 90s, 15m, 1h, 7d or plain seconds; null for anything else (or zero). */
function parseDuration(text: string): number | null {
  const match = /^(\d{1,9})\s*(s|m|h|d)?$/.exec(text.trim())
  if (match === null) return null
  const seconds = Number(match[1]) * { s: 1, m: 60, h: 3600, d: 86_400 }[(match[2] ?? 's') as 's' | 'm' | 'h' | 'd']
  return seconds > 0 ? seconds : null
}

// A command whose last await never settles would otherwise end with exit code 13 and no word.
process.on('exit', (exitCode) => {
  if (exitCode === 13) process.stderr.write('jobwire: stopped waiting for an operation that never completed; nothing more is known (please report it)\n')
})
const code = await main(process.argv.slice(2))
if (code >= 0) process.exit(code)
