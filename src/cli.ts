#!/usr/bin/env node
// The `jobwire` command: `serve` runs the gateway, `publish` reports a job's progress.
// The only module with process-level side effects besides serve.ts.

import { parseArgs } from 'node:util'
import { readFileSync } from 'node:fs'
import { configHelp, ConfigError, loadConfig, OPTIONS } from './support/config.js'
import { projectPath } from './support/paths.js'
import { ProducerError } from './producer/merge.js'
import { Producer } from './producer/producer.js'
import { isValidJobId, JOB_ID_RULE, type JobPayload } from './wire/protocol.js'
import { serve } from './node/serve.js'

const USAGE = `jobwire: streams background-job progress from Redis to browsers

usage:
  jobwire serve [options]            run the gateway
  jobwire publish <job_id> [fields]  report a job's progress (stores state, bumps seq, publishes)
  jobwire help | --version

serve options (flags win over environment variables):
${configHelp()}

publish fields:
  --status <s>       queued, processing, completed, failed or cancelled
  --progress <n>     0..100
  --message <text>   human-readable message
  --data <json>      a JSON object with further fields (--status etc. override its keys)
  --owner <user>     record this user as the job's owner
  --plain            a plain PUBLISH (nothing stored, no seq), as pre-jobwire workers do
  --redis <url>      Redis to publish to [env REDIS_URL]
  --gateway <url>    or a gateway's producer API, e.g. http://127.0.0.1:8080 (works with the
                     embedded broker) [env JOBWIRE_GATEWAY]
  --producer-key <k> credentials for --gateway [env JOBWIRE_PRODUCER_KEY]
  --channel-prefix, --key-prefix   as for serve
`

const STATUSES = ['queued', 'processing', 'completed', 'failed', 'cancelled']

export async function main(argv: readonly string[]): Promise<number> {
  const [command, ...rest] = argv
  switch (command) {
    case 'serve':
      return runServe(rest)
    case 'publish':
      return runPublish(rest)
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE)
      return command === undefined ? 2 : 0
    case '--version': {
      const pkg = JSON.parse(readFileSync(projectPath('package.json'), 'utf8')) as { version: string }
      process.stdout.write(`${pkg.version}\n`)
      return 0
    }
    default:
      process.stderr.write(`jobwire: unknown command '${command}'\n\n${USAGE}`)
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
    const options: Record<string, { type: 'string' | 'boolean' }> = { help: { type: 'boolean' } }
    for (const o of OPTIONS) options[o.flag] = { type: 'boolean' in o ? 'boolean' : 'string' }
    values = parseArgs({ args: [...args], options, strict: true, allowPositionals: false }).values
  } catch (err) {
    return fail(`${(err as Error).message}\nsee jobwire serve --help`)
  }
  if (values.help) {
    process.stdout.write(USAGE)
    return 0
  }
  const { help: _help, ...given } = values
  const flags = Object.fromEntries(Object.entries(given).map(([k, v]) => [k, typeof v === 'boolean' ? String(v) : v]))
  try {
    const config = loadConfig(flags as Record<string, string>, process.env)
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
        redis: { type: 'string' },
        gateway: { type: 'string' },
        'producer-key': { type: 'string' },
        'channel-prefix': { type: 'string' },
        'key-prefix': { type: 'string' },
      },
      strict: true,
      allowPositionals: true,
    })
  } catch (err) {
    return fail(`${(err as Error).message}\nsee jobwire help`)
  }
  const { values, positionals } = parsed
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

  const gateway = values.gateway ?? process.env.JOBWIRE_GATEWAY
  if (gateway && !values.redis) {
    if (values.plain) return fail('--plain needs Redis (--redis); the producer API always stores state')
    return publishViaGateway(gateway, jobId, payload, values.owner, values['producer-key'] ?? process.env.JOBWIRE_PRODUCER_KEY)
  }
  const redisUrl = values.redis ?? process.env.REDIS_URL
  if (!redisUrl) {
    return fail('publish needs Redis (--redis redis://host:port or REDIS_URL) or a gateway (--gateway http://host:port)')
  }
  const producer = new Producer({
    redis: redisUrl,
    ...(values['channel-prefix'] ? { channelPrefix: values['channel-prefix'] } : {}),
    ...(values['key-prefix'] ? { keyPrefix: values['key-prefix'] } : {}),
  })
  try {
    if (values.plain) {
      await producer.publish(jobId, payload)
      process.stdout.write(`published ${jobId} (plain, not stored)\n`)
    } else {
      const seq = await producer.progress(jobId, payload, values.owner ? { owner: values.owner } : {})
      process.stdout.write(`published ${jobId} seq=${seq}\n`)
    }
    return 0
  } catch (err) {
    if (err instanceof ProducerError) return fail(`refused: ${err.message}`)
    return fail(`cannot publish: ${(err as Error).message}`)
  } finally {
    await producer.close().catch(() => undefined)
  }
}

async function publishViaGateway(gateway: string, jobId: string, payload: JobPayload, owner: string | undefined, key: string | undefined): Promise<number> {
  let url: URL
  try {
    url = new URL(`/jobs/${encodeURIComponent(jobId)}/progress`, gateway)
  } catch {
    return fail(`--gateway '${gateway}' is not a URL like http://127.0.0.1:8080`)
  }
  if (owner) url.searchParams.set('owner', owner)
  try {
    const res = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(key ? { authorization: `Bearer ${key}` } : {}) },
      body: JSON.stringify(payload),
      signal: AbortSignal.timeout(10_000),
    })
    const body = (await res.json().catch(() => ({}))) as { seq?: number; message?: string; error?: string }
    if (!res.ok) return fail(`refused (${res.status}): ${body.message ?? body.error ?? res.statusText}`)
    process.stdout.write(`published ${jobId} seq=${body.seq}\n`)
    return 0
  } catch (err) {
    return fail(`cannot reach ${url.origin}: ${(err as Error).message}`)
  }
}

const code = await main(process.argv.slice(2))
if (code >= 0) process.exit(code)
