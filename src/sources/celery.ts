// Celery jobs, `celery:<task_id>`, read from Celery's Redis result backend with no change to any
// worker. Every state Celery stores is a SET of `celery-task-meta-<task_id>` and a PUBLISH of
// the same JSON on the channel of that name, in one MULTI (celery/backends/redis.py `_set`):
// a watched task is one SUBSCRIBE on that channel, its snapshot one GET of that key.
//
// The subscriber connection is replayed by us (as the broker's is) so that we know when a
// task's channel is live again after an outage: messages published meanwhile are lost, so the
// gateway then resynchronises the tasks' watchers from the stored results.

import type { Redis } from 'ioredis'
import type { Logger } from '../support/log.js'
import { rateLimitedLog } from '../support/log.js'
import type { JobPayload } from '../wire/protocol.js'
import { closeConnection, ServerIdentity, sourceConnection } from './connections.js'
import { carryProgress, isRecord, liftDetails, ownerAt, progressOf, SourceJobs, type JobSource, type SourceHooks, type SourceRecord, type Translated } from './source.js'

export const CELERY_JOB_PREFIX = 'celery:'
/** Celery's key and channel prefix for task results (the Redis backend's default). */
export const CELERY_KEY_PREFIX = 'celery-task-meta-'
/** Channels per SUBSCRIBE when replaying after a reconnect. */
const SUBSCRIBE_BATCH = 1000

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

/** `ValueError: bad input` from Celery's serialised exception
 * ({"exc_type": ..., "exc_message": [...args], "exc_module": ...}). */
function exceptionText(result: unknown): string {
  if (typeof result === 'string') return result
  if (!isRecord(result) || typeof result.exc_type !== 'string') return 'task failed'
  const message = result.exc_message
  const text = Array.isArray(message) ? message.map((part) => (typeof part === 'string' ? part : JSON.stringify(part))).join(', ')
    : typeof message === 'string' ? message : ''
  return text === '' ? result.exc_type : `${result.exc_type}: ${text}`
}

/** One stored or published Celery result (`{"status", "result", "traceback", "children",
 * "date_done", "task_id"}`, plus `name`, `args`, `kwargs`... with result_extended) as a jobwire
 * state; null when it is not one. Only what the vocabulary names is passed on: never the
 * worker's host name or the task's arguments. */
export function translateCelery(meta: unknown, options: CeleryOptions): Translated | null {
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
  const owner = options.ownerField !== '' && isRecord(meta.kwargs) ? ownerAt(meta.kwargs, options.ownerField) : null
  return { state, owner }
}

function parseResult(bytes: Buffer): unknown {
  try {
    return JSON.parse(bytes.toString('utf8')) as unknown
  } catch {
    return undefined
  }
}

interface ReplayWaiter {
  readonly since: number
  resolve(): void
  reject(err: Error): void
}

export class CelerySource implements JobSource {
  readonly name = 'celery' as const
  private readonly jobs = new SourceJobs()
  private readonly channels = new Set<string>()
  private cmd: Redis | null = null
  private sub: Redis | null = null
  private hooks: SourceHooks | null = null
  /** Bumped whenever the subscriber connection opens or closes. */
  private session = 0
  /** The session whose replay Redis acknowledged: while current, every channel is live. */
  private replayed = -1
  private awaitingReplay: ReplayWaiter[] = []
  /** The subscriber was lost after having been live: the next replay ends an outage. */
  private outage = false
  private closed = false
  private readonly identity = new ServerIdentity()
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
    const sub = this.connect().sub
    const channels = jobIds.map((id) => CELERY_KEY_PREFIX + id.slice(CELERY_JOB_PREFIX.length))
    for (const id of jobIds) this.jobs.add(id)
    for (const channel of channels) this.channels.add(channel)
    if (sub.status === 'ready') {
      try {
        await sub.subscribe(...channels)
        return
      } catch (err) {
        // Still up: Redis itself refused. Otherwise the connection went, and the replay follows.
        if (sub.status === 'ready' || this.closed) throw err
      }
    }
    const since = this.session
    await new Promise<void>((resolve, reject) => this.awaitingReplay.push({ since, resolve, reject }))
  }

  unwatch(jobIds: readonly string[]): void {
    const channels = jobIds.map((id) => CELERY_KEY_PREFIX + id.slice(CELERY_JOB_PREFIX.length))
    for (const id of jobIds) this.jobs.delete(id)
    for (const channel of channels) this.channels.delete(channel)
    // A connection that is away holds none of them once it is back.
    if (this.sub?.status !== 'ready') return
    this.sub.unsubscribe(...channels).catch((err: Error) => this.warn({ err: err.message }, 'celery unsubscribe failed'))
  }

  async read(jobIds: readonly string[]): Promise<SourceRecord[]> {
    if (this.closed) throw new Error('celery source closed')
    const { cmd } = this.connect()
    const values = await cmd.mgetBuffer(...jobIds.map((id) => CELERY_KEY_PREFIX + id.slice(CELERY_JOB_PREFIX.length)))
    return jobIds.map((jobId, i) => {
      const value = values[i]
      if (value === null || value === undefined) return { state: null, owner: null }
      const translated = translateCelery(parseResult(value), this.options)
      if (translated === null) {
        this.warn({ job: jobId }, 'celery result is not JSON with a status (is result_serializer json?); ignoring it')
        return { state: null, owner: null }
      }
      return { state: this.jobs.stored(this.jobs.get(jobId), translated.state), owner: translated.owner }
    })
  }

  async close(): Promise<void> {
    this.closed = true
    const waiting = this.awaitingReplay
    this.awaitingReplay = []
    for (const waiter of waiting) waiter.reject(new Error('celery source closed'))
    await Promise.all([this.cmd, this.sub].filter((c): c is Redis => c !== null).map(closeConnection))
  }

  /** The connections, opened on first use. */
  private connect(): { cmd: Redis; sub: Redis } {
    if (this.cmd === null || this.sub === null) {
      this.cmd = sourceConnection(this.url, 'celery', 'commands', this.log)
      const sub = (this.sub = sourceConnection(this.url, 'celery-sub', 'subscriber', this.log))
      sub.on('messageBuffer', (channel: Buffer, payload: Buffer) => this.onMessage(channel, payload))
      sub.on('ready', () => void this.onSubscriberReady(sub))
      sub.on('close', () => this.onSubscriberClose())
    }
    return { cmd: this.cmd, sub: this.sub }
  }

  private onMessage(channel: Buffer, payload: Buffer): void {
    const jobId = CELERY_JOB_PREFIX + channel.toString('latin1', CELERY_KEY_PREFIX.length)
    const job = this.jobs.get(jobId)
    if (job === undefined || this.hooks === null) return
    const translated = translateCelery(parseResult(payload), this.options)
    if (translated === null) {
      this.warn({ job: jobId }, 'celery published a result that is not JSON with a status (is result_serializer json?); dropped')
      return
    }
    const state = carryProgress(translated.state, job.last)
    this.hooks.message(Buffer.from(this.channelPrefix + jobId, 'latin1'), this.jobs.deliver(job, state))
  }

  private async onSubscriberReady(sub: Redis): Promise<void> {
    // The event trails the status by a tick: the connection may already be gone again.
    if (sub.status !== 'ready' || this.closed) return
    const session = ++this.session
    let dataLost = false
    let failure: Error | null = null
    try {
      // Before SUBSCRIBE: a connection in subscriber mode takes no other command.
      dataLost = await this.identity.changed(sub)
      // Read after the await: a watch or unwatch meanwhile went straight to this connection,
      // and the replay must not undo an UNSUBSCRIBE sent before it.
      const channels = [...this.channels]
      const pending: Promise<unknown>[] = []
      for (let i = 0; i < channels.length; i += SUBSCRIBE_BATCH) pending.push(sub.subscribe(...channels.slice(i, i + SUBSCRIBE_BATCH)))
      await Promise.all(pending)
    } catch (err) {
      failure = err as Error
    }
    if (session !== this.session || sub.status !== 'ready' || this.closed) return
    if (failure !== null) {
      // Refused on a live connection: starting over lets the retry strategy pace the retries.
      this.log.error({ err: failure.message }, 'celery result backend refused the subscriptions; reconnecting')
      sub.disconnect(true)
      return
    }
    this.replayed = session
    if (dataLost) {
      this.log.warn('the celery result backend is another redis server process (restart or failover); task states may be lost')
      this.jobs.renew()
    }
    const waiting = this.awaitingReplay
    this.awaitingReplay = waiting.filter((waiter) => waiter.since >= session)
    for (const waiter of waiting) if (waiter.since < session) waiter.resolve()
    this.hooks?.live(this.jobs.ids(), true)
    if (this.outage) {
      this.outage = false
      this.log.info({ tasks: this.jobs.size }, 'celery subscriptions restored')
      this.hooks?.restored(this.jobs.ids(), dataLost)
    }
  }

  private onSubscriberClose(): void {
    const wasLive = this.replayed === this.session
    this.session++
    if (!wasLive || this.closed) return
    this.outage = true
    this.hooks?.live(this.jobs.ids(), false)
  }
}
