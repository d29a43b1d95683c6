// Celery jobs, `celery:<task_id>`, read from Celery's Redis result backend with no change to any
// worker. Every state Celery stores is a SET of `celery-task-meta-<task_id>` and a PUBLISH of
// the same JSON on the channel of that name, in one MULTI (celery/backends/redis.py `_set`):
// a watched task is one SUBSCRIBE on that channel, its snapshot one GET of that key.
//
// The subscriber connection is a SubscriberSession (as the broker's is), so that we know when a
// task's channel is live again after an outage: messages published meanwhile are lost, so the
// gateway then resynchronises the tasks' watchers from the stored results. Two connections per
// process whatever the number of tasks: one for commands, one subscriber.

import type { Redis } from 'ioredis'
import type { Logger } from '../support/log.js'
import { rateLimitedLog } from '../support/log.js'
import { jsonValueProblem } from '../wire/payload.js'
import type { JobPayload } from '../wire/protocol.js'
import { closeConnection, sourceConnection } from '../broker/redis-connection.js'
import { SubscriberSession } from '../broker/subscriber-session.js'
import { carryProgress, isRecord, liftDetails, MAX_SOURCE_VALUE_BYTES, ownerAt, parseQueueJson, progressOf, SourceJobs, unshowable, type JobSource, type SourceHooks, type SourceRecord, type Translated } from './source.js'

export const CELERY_JOB_PREFIX = 'celery:'
/** Celery's key and channel prefix for task results (the Redis backend's default). */
export const CELERY_KEY_PREFIX = 'celery-task-meta-'

export interface CeleryOptions {
  /** Pass Python tracebacks to browsers (off: they may show code paths and values). */
  readonly tracebacks: boolean
  /** A task kwarg naming the job's owner; Celery stores kwargs with `result_extended = True`. */
  readonly ownerField: string
}

/** Celery's states in jobwire's vocabulary; any custom state (PROGRESS...) is processing. */
function statusOf(celeryState: string): string {
  switch (celeryState) {
    case 'PENDING':
    case 'RECEIVED':
      return 'queued'
    case 'SUCCESS':
      return 'completed'
    case 'FAILURE':
    case 'REJECTED':
      return 'failed'
    case 'REVOKED':
    case 'IGNORED':
      return 'cancelled'
    default:
      return 'processing' // STARTED, RETRY, PROGRESS and every other custom state
  }
}

/** One argument of an exception as text; one that cannot be written as JSON (nested past the
 * payload limit, or with NaN) is named, not written. */
function argumentText(part: unknown): string {
  if (typeof part === 'string') return part
  const problem = jsonValueProblem(part)
  return problem === null ? JSON.stringify(part) : `(an argument not shown: ${problem})`
}

/** `ValueError: bad input` from Celery's serialised exception
 * ({"exc_type": ..., "exc_message": [...args], "exc_module": ...}). */
function exceptionText(result: unknown): string {
  if (typeof result === 'string') return result
  if (!isRecord(result) || typeof result.exc_type !== 'string') return 'task failed'
  const message = result.exc_message
  const text = Array.isArray(message) ? message.map(argumentText).join(', ')
    : typeof message === 'string' ? message : ''
  return text === '' ? result.exc_type : `${result.exc_type}: ${text}`
}

/** One stored or published Celery result (`{"status", "result", "traceback", "children",
 * "date_done", "task_id"}`, plus `name`, `args`, `kwargs`... with result_extended) as a jobwire
 * state; null when it is not one. Only what the vocabulary names is passed on: never the
 * worker's host name or the task's arguments. */
export function translateCelery(meta: unknown, options: CeleryOptions): (Translated & { readonly ownerKnown: boolean }) | null {
  if (!isRecord(meta) || typeof meta.status !== 'string') return null
  const celeryState = meta.status
  const status = statusOf(celeryState)
  const state: JobPayload = { status, source: 'celery', source_status: celeryState }
  if (typeof meta.name === 'string') state.task = meta.name
  const result = meta.result
  if (status === 'completed') {
    state.progress = 100
    state.result = result ?? null
  } else if (status === 'failed' || status === 'cancelled') {
    state.error = exceptionText(result)
  } else if (celeryState === 'RETRY') {
    state.message = `retrying after ${exceptionText(result)}`
  } else if (status === 'processing' && celeryState !== 'STARTED' && result !== null && result !== undefined) {
    // A custom state's meta: update_state(state='PROGRESS', meta={...}).
    const progress = progressOf(result)
    if (progress !== undefined) state.progress = progress
    liftDetails(result, state)
    state.meta = result
  }
  if (options.tracebacks && typeof meta.traceback === 'string' && meta.traceback !== '') state.traceback = meta.traceback
  const ownerKnown = options.ownerField !== '' && isRecord(meta.kwargs)
  return { state, owner: ownerKnown ? ownerAt(meta.kwargs, options.ownerField) : null, ownerKnown }
}

type CeleryRecord = Translated & { readonly ownerKnown: boolean }

/** A stored or published result as a jobwire state, read defensively: a result too large to
 * parse keeps its status and says in `error` why it is not shown, instead of being dropped (the
 * job would look stuck); so does one with NaN or Infinity (Python's json writes them), once
 * encoded (sources/source.ts). Null when it is not a Celery result at all. */
export function readCeleryResult(bytes: Buffer, options: CeleryOptions): CeleryRecord | null {
  if (bytes.length > MAX_SOURCE_VALUE_BYTES) {
    // Celery writes "status" first: the head says how the task ended without parsing the rest.
    const celeryState = /^\s*\{\s*"status"\s*:\s*"(\w{1,64})"/.exec(bytes.toString('utf8', 0, 256))?.[1]
    if (celeryState === undefined) return null
    const state: JobPayload = { status: statusOf(celeryState), source: 'celery', source_status: celeryState }
    return { state: unshowable(state, `the result is ${bytes.length} bytes, more than the ${MAX_SOURCE_VALUE_BYTES} bytes jobwire reads`), owner: null, ownerKnown: false }
  }
  return translateCelery(parseQueueJson(bytes.toString('utf8')), options)
}

export class CelerySource implements JobSource {
  readonly name = 'celery' as const
  private readonly jobs = new SourceJobs()
  private cmd: Redis | null = null
  private sub: SubscriberSession | null = null
  private hooks: SourceHooks | null = null
  private closed = false
  private readonly warn: ReturnType<typeof rateLimitedLog>

  constructor(
    private readonly url: string,
    private readonly channelPrefix: string,
    private readonly options: CeleryOptions,
    private readonly log: Logger,
  ) {
    this.warn = rateLimitedLog(log, 5, 30_000)
  }

  start(hooks: SourceHooks): void {
    this.hooks = hooks
  }

  async watch(jobIds: readonly string[]): Promise<void> {
    if (this.closed) throw new Error('celery source closed')
    for (const id of jobIds) this.jobs.add(id)
    await this.subscriber().subscribe(jobIds.map(channelOf))
  }

  unwatch(jobIds: readonly string[]): void {
    for (const id of jobIds) this.jobs.delete(id)
    this.sub?.unsubscribe(jobIds.map(channelOf)).catch((err: Error) => this.warn({ err: err.message }, 'celery unsubscribe failed'))
  }

  async read(jobIds: readonly string[]): Promise<SourceRecord[]> {
    if (this.closed) throw new Error('celery source closed')
    const cmd = this.commands()
    const values = await cmd.mgetBuffer(...jobIds.map(channelOf))
    return jobIds.map((jobId, i) => {
      const value = values[i]
      if (value === null || value === undefined) return { state: null, owner: null }
      // One task's result never fails the others read with it.
      try {
        const translated = readCeleryResult(value, this.options)
        if (translated !== null) return { state: this.jobs.stored(this.jobs.get(jobId), translated.state, translated.owner), owner: translated.owner }
        this.warn({ job: jobId }, 'celery result is not JSON with a status (is result_serializer json?); ignoring it')
      } catch (err) {
        this.hooks?.malformed(jobId, `celery result could not be translated: ${(err as Error).message}`)
      }
      return { state: null, owner: null }
    })
  }

  async close(): Promise<void> {
    this.closed = true
    this.sub?.close('celery source closed')
    await Promise.all([this.cmd, this.sub?.conn ?? null].filter((c): c is Redis => c !== null).map(closeConnection))
  }

  /** Each connection is opened on first use: a gateway that only reads tasks (or refuses to
   * watch them) holds no subscriber. */
  private commands(): Redis {
    if (this.cmd === null) this.cmd = sourceConnection(this.url, 'celery', 'commands', this.log)
    return this.cmd
  }

  private subscriber(): SubscriberSession {
    if (this.sub === null) {
      const conn = sourceConnection(this.url, 'celery-sub', 'subscriber', this.log)
      conn.on('messageBuffer', (channel: Buffer, payload: Buffer) => this.onMessage(channel, payload))
      this.sub = new SubscriberSession(conn, 'celery subscriber', {
        live: (dataLost, outage) => this.onLive(dataLost, outage),
        down: () => this.hooks?.live(this.jobs.ids(), false),
      }, this.log, true)
    }
    return this.sub
  }

  /** Runs inside ioredis' event: whatever a result holds, nothing may escape from here. */
  private onMessage(channel: Buffer, payload: Buffer): void {
    const jobId = CELERY_JOB_PREFIX + channel.toString('latin1', CELERY_KEY_PREFIX.length)
    try {
      this.deliver(jobId, payload)
    } catch (err) {
      this.hooks?.malformed(jobId, `celery result could not be translated: ${(err as Error).message}`)
    }
  }

  private deliver(jobId: string, payload: Buffer): void {
    const job = this.jobs.get(jobId)
    if (job === undefined || this.hooks === null) return
    const translated = readCeleryResult(payload, this.options)
    if (translated === null) {
      this.hooks.malformed(jobId, 'celery published a result that is not JSON with a status (is result_serializer json?)')
      return
    }
    // Only a result that carries the task's kwargs (result_extended) can say its owner changed,
    // i.e. that the task id was re-used for someone else's task.
    const owner = translated.ownerKnown ? translated.owner : undefined
    const state = carryProgress(translated.state, owner === undefined || owner === job.owner ? job.last : null)
    this.hooks.message(Buffer.from(this.channelPrefix + jobId, 'latin1'), this.jobs.deliver(job, state, owner))
  }

  private onLive(dataLost: boolean, outage: boolean): void {
    if (dataLost) {
      this.log.warn('the celery result backend is another redis server process (restart or failover); task states may be lost')
      this.jobs.renew()
    }
    this.hooks?.live(this.jobs.ids(), true)
    if (outage) {
      this.log.info({ tasks: this.jobs.size }, 'celery subscriptions restored')
      this.hooks?.restored(this.jobs.ids(), dataLost)
    }
  }
}

/** `celery:<task id>` -> Celery's key and channel of the task's result. */
function channelOf(jobId: string): string {
  return CELERY_KEY_PREFIX + jobId.slice(CELERY_JOB_PREFIX.length)
}
