// BullMQ jobs, `bullmq:<queue>:<job id>`, read from the queue's own Redis keys with no change to
// any worker. BullMQ writes every state change of a job to its hash `<prefix>:<queue>:<id>`
// and, in the same Lua script, appends an event to the queue's stream `<prefix>:<queue>:events`
// (`progress` with `data`, `completed` with `returnvalue`, `failed` with `failedReason`,
// `active`, `waiting`, `removed`, `stalled`...).
//
// A watched queue is one loop per node: `XREAD BLOCK` on its event stream, on a connection of
// its own, from the last id it read, so an outage delays events but loses none (as long as
// the stream, trimmed by BullMQ to about 10,000 events, still holds them). The loop starts when
// the first job of the queue is watched and stops with the last. A snapshot reads the job's
// hash together with the stream's last id (one MULTI, so the hash is exactly the state that id
// led to), then waits until the loop has read up to that id: whatever the node delivered is
// then at least as new as the hash.

import type { Redis } from 'ioredis'
import { backoff } from '../support/backoff.js'
import type { Logger } from '../support/log.js'
import { rateLimitedLog } from '../support/log.js'
import type { JobPayload } from '../wire/protocol.js'
import { closeConnection, ServerIdentity, sourceConnection, whenReady } from '../broker/redis-connection.js'
import { isRecord, liftDetails, ownerAt, parseJson, progressOf, SourceJobs, type JobSource, type SourceHooks, type SourceRecord, type Translated } from './source.js'

export const BULLMQ_JOB_PREFIX = 'bullmq:'
/** Events per XREAD. */
const READ_BATCH = 500
/** How long one XREAD waits for events before it is sent again. */
const BLOCK_MS = 5000
const RETRY_MIN_MS = 100
const RETRY_MAX_MS = 2000

export interface BullmqOptions {
  /** BullMQ's key prefix (its `prefix` option; `bull` by default). */
  readonly prefix: string
  /** A field of the job's data naming its owner (`userId`, or a path like `user.id`). */
  readonly ownerField: string
}

/** `bullmq:<queue>:<id>`: BullMQ allows no `:` in queue names, so the first one ends it. */
export function parseBullmqJobId(jobId: string): { queue: string; id: string } | null {
  if (!jobId.startsWith(BULLMQ_JOB_PREFIX)) return null
  const rest = jobId.slice(BULLMQ_JOB_PREFIX.length)
  const colon = rest.indexOf(':')
  if (colon <= 0 || colon === rest.length - 1) return null
  return { queue: rest.slice(0, colon), id: rest.slice(colon + 1) }
}

/** The progress BullMQ stores or streams: `updateProgress(42)` or `updateProgress({...})`. */
function applyProgress(data: string | undefined, state: JobPayload): void {
  const details = parseJson(data)
  const progress = progressOf(details)
  if (progress !== undefined) state.progress = progress
  if (isRecord(details)) {
    liftDetails(details, state)
    state.meta = details
  }
}

/** A job's hash (HGETALL) as a jobwire state; null when the job does not exist. */
export function translateBullmqHash(hash: Record<string, string>, ownerField: string): Translated | null {
  if (Object.keys(hash).length === 0) return null
  const state: JobPayload = { status: 'queued', source: 'bullmq', source_status: 'waiting' }
  if (hash.name !== undefined) state.name = hash.name
  applyProgress(hash.progress, state)
  if (hash.finishedOn !== undefined) {
    if (hash.returnvalue !== undefined) {
      Object.assign(state, { status: 'completed', source_status: 'completed', progress: 100, result: parseJson(hash.returnvalue) ?? null })
    } else {
      Object.assign(state, { status: 'failed', source_status: 'failed', error: hash.failedReason ?? 'job failed' })
    }
  } else if (hash.processedOn !== undefined && (hash.ats === undefined || Number(hash.ats) > Number(hash.atm ?? 0))) {
    // `ats` (attempts started) above `atm` (attempts made): an attempt is running. Without
    // `ats` (BullMQ before 5.x) processedOn is all there is.
    Object.assign(state, { status: 'processing', source_status: 'active' })
  }
  return { state, owner: ownerAt(parseJson(hash.data), ownerField) }
}

const QUEUED_EVENTS = new Set(['added', 'waiting', 'delayed', 'prioritized', 'waiting-children'])
/** What a job keeps from its previous state when an event tells only part of it. */
const CARRIED = ['name', 'progress', 'meta', 'message', 'stall_after'] as const

/** One event of the queue's stream (its fields as an object), merged onto the job's last
 * state; null for events that change nothing a watcher sees. */
export function translateBullmqEvent(fields: Record<string, string>, last: JobPayload | null): JobPayload | null {
  const event = fields.event
  if (event === undefined) return null
  const state: JobPayload = { source: 'bullmq' }
  if (last !== null) for (const key of CARRIED) if (last[key] !== undefined) (state as Record<string, unknown>)[key] = last[key]
  if (QUEUED_EVENTS.has(event)) {
    state.status = 'queued'
    if (event === 'added' && fields.name !== undefined) state.name = fields.name
  } else if (event === 'active') {
    state.status = 'processing'
  } else if (event === 'progress') {
    state.status = 'processing'
    applyProgress(fields.data, state)
  } else if (event === 'completed') {
    Object.assign(state, { status: 'completed', progress: 100, result: parseJson(fields.returnvalue) ?? null })
  } else if (event === 'failed') {
    Object.assign(state, { status: 'failed', error: fields.failedReason ?? 'job failed' })
  } else if (event === 'removed') {
    // Removing a finished job does not undo how it finished.
    if (last?.status === 'completed' || last?.status === 'failed') return null
    state.status = 'cancelled'
  } else if (event === 'stalled') {
    // BullMQ found the job's lock expired (its worker died or blocked) and queued it again.
    Object.assign(state, { status: 'queued', stalled: true })
  } else {
    return null // retries-exhausted, duplicated, deduplicated, drained, paused...: nothing new
  }
  state.source_status = event
  return state
}

function fieldsOf(list: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {}
  for (let i = 0; i + 1 < list.length; i += 2) out[list[i]!] = list[i + 1]!
  return out
}

/** Stream ids `<ms>-<n>` in order. */
export function compareStreamIds(a: string, b: string): number {
  const [aMs = 0, aN = 0] = a.split('-').map(Number)
  const [bMs = 0, bN = 0] = b.split('-').map(Number)
  return aMs !== bMs ? aMs - bMs : aN - bN
}

type StreamReply = Array<[key: string, entries: Array<[id: string, fields: string[]]>]> | null

interface LoopOwner {
  entry(queue: string, fields: readonly string[]): void
  live(loop: QueueLoop, live: boolean): void
  /** The Redis behind the loop is another server process than before. */
  serverChanged(): void
  /** The stream was trimmed past where the loop had read: events of its jobs may be lost. */
  gap(loop: QueueLoop): void
}

/** The XREAD loop of one queue's event stream. */
class QueueLoop {
  /** The watched jobs of this queue (jobwire ids). */
  readonly jobs = new Set<string>()
  private readonly conn: Redis
  /** The last stream id read: the loop resumes after it. Null until the loop has started. */
  private position: string | null = null
  private isLive = false
  private stopped = false
  private session = 0
  private checkedSession = -1
  private liveWaiters: Array<{ resolve: () => void; reject: (err: Error) => void }> = []
  private positionWaiters: Array<{ target: string; resolve: () => void; reject: (err: Error) => void }> = []

  constructor(
    readonly queue: string,
    private readonly streamKey: string,
    url: string,
    private readonly owner: LoopOwner,
    private readonly identity: ServerIdentity,
    private readonly log: Logger,
  ) {
    this.conn = sourceConnection(url, `bullmq-${queue}`, 'stream', log)
    this.conn.on('close', () => {
      this.session++
      this.setLive(false)
    })
    void this.run()
  }

  get live(): boolean {
    return this.isLive
  }

  whenLive(): Promise<void> {
    if (this.isLive) return Promise.resolve()
    if (this.stopped) return Promise.reject(new Error('queue no longer watched'))
    return new Promise((resolve, reject) => this.liveWaiters.push({ resolve, reject }))
  }

  /** Resolves once the loop has read the stream up to `target`. */
  reached(target: string): Promise<void> {
    if (this.position !== null && compareStreamIds(this.position, target) >= 0) return Promise.resolve()
    if (this.stopped) return Promise.reject(new Error('queue no longer watched'))
    return new Promise((resolve, reject) => this.positionWaiters.push({ target, resolve, reject }))
  }

  stop(): void {
    this.stopped = true
    const err = new Error('queue no longer watched')
    for (const w of [...this.liveWaiters, ...this.positionWaiters]) w.reject(err)
    this.liveWaiters = []
    this.positionWaiters = []
    // Ends the blocked XREAD too.
    this.conn.disconnect()
  }

  private setLive(live: boolean): void {
    if (live === this.isLive || (live && this.stopped)) return
    this.isLive = live
    if (live) {
      const waiters = this.liveWaiters
      this.liveWaiters = []
      for (const w of waiters) w.resolve()
    }
    this.owner.live(this, live)
  }

  private async run(): Promise<void> {
    for (let attempt = 0; !this.stopped;) {
      try {
        await whenReady(this.conn, () => this.stopped)
        let gap = false
        if (this.checkedSession !== this.session) {
          const session = this.session
          if (await this.identity.changed(this.conn)) this.owner.serverChanged()
          else if (this.position !== null) {
            // Back on the same server: BullMQ trims the stream (about 10,000 events), so after a
            // long outage its oldest event may be past where this loop stopped reading.
            const oldest = (await this.conn.xrange(this.streamKey, '-', '+', 'COUNT', 1))[0]?.[0]
            gap = oldest !== undefined && compareStreamIds(oldest, this.position) > 0
          }
          this.checkedSession = session
        }
        // From the stream's last id on: everything after it reaches this loop, however late.
        if (this.position === null) this.position = (await this.conn.xrevrange(this.streamKey, '+', '-', 'COUNT', 1))[0]?.[0] ?? '0-0'
        this.setLive(true)
        if (gap) this.owner.gap(this)
        const reply = (await this.conn.xread('COUNT', READ_BATCH, 'BLOCK', BLOCK_MS, 'STREAMS', this.streamKey, this.position)) as StreamReply
        attempt = 0
        for (const [, entries] of reply ?? []) {
          for (const [id, fields] of entries) {
            this.position = id
            this.owner.entry(this.queue, fields)
          }
        }
        this.settlePositionWaiters()
      } catch (err) {
        if (this.stopped) return
        // A dropped connection reconnects by itself; anything else (a refusal) is retried with
        // backoff, so a misconfigured Redis costs a log line a while, not a busy loop.
        if (this.conn.status === 'ready') this.log.warn({ queue: this.queue, err: (err as Error).message }, 'bullmq event stream read failed; retrying')
        await new Promise((resolve) => setTimeout(resolve, RETRY_MIN_MS + backoff(attempt++, RETRY_MIN_MS, RETRY_MAX_MS)))
      }
    }
  }

  private settlePositionWaiters(): void {
    if (this.positionWaiters.length === 0 || this.position === null) return
    const position = this.position
    const waiting = this.positionWaiters
    this.positionWaiters = []
    for (const w of waiting) {
      if (compareStreamIds(position, w.target) >= 0) w.resolve()
      else this.positionWaiters.push(w)
    }
  }
}

export class BullmqSource implements JobSource, LoopOwner {
  readonly name = 'bullmq' as const
  private readonly jobs = new SourceJobs()
  private readonly loops = new Map<string, QueueLoop>()
  private readonly identity = new ServerIdentity()
  private cmd: Redis | null = null
  private hooks: SourceHooks | null = null
  private closed = false
  private readonly warn: ReturnType<typeof rateLimitedLog>

  constructor(
    private readonly url: string,
    private readonly channelPrefix: string,
    private readonly options: BullmqOptions,
    private readonly log: Logger,
  ) {
    this.warn = rateLimitedLog(log, 5, 30_000)
  }

  start(hooks: SourceHooks): void {
    this.hooks = hooks
  }

  async watch(jobIds: readonly string[]): Promise<void> {
    if (this.closed) throw new Error('bullmq source closed')
    const loops = new Set<QueueLoop>()
    for (const jobId of jobIds) {
      const parsed = parseBullmqJobId(jobId)
      if (parsed === null) continue
      this.jobs.add(jobId)
      let loop = this.loops.get(parsed.queue)
      if (loop === undefined) {
        loop = new QueueLoop(parsed.queue, this.streamKey(parsed.queue), this.url, this, this.identity, this.log)
        this.loops.set(parsed.queue, loop)
      }
      loop.jobs.add(jobId)
      loops.add(loop)
    }
    await Promise.all([...loops].map((loop) => loop.whenLive()))
  }

  unwatch(jobIds: readonly string[]): void {
    for (const jobId of jobIds) {
      this.jobs.delete(jobId)
      const parsed = parseBullmqJobId(jobId)
      const loop = parsed === null ? undefined : this.loops.get(parsed.queue)
      if (loop === undefined) continue
      loop.jobs.delete(jobId)
      if (loop.jobs.size === 0) {
        loop.stop()
        this.loops.delete(loop.queue)
      }
    }
  }

  async read(jobIds: readonly string[]): Promise<SourceRecord[]> {
    if (this.closed) throw new Error('bullmq source closed')
    const parsed = jobIds.map(parseBullmqJobId)
    // Only queues this node reads need the stream's position, to wait for their loop.
    const queues = [...new Set(parsed.flatMap((p) => (p !== null && this.loops.has(p.queue) ? [p.queue] : [])))]
    const multi = this.commands().multi()
    for (const p of parsed) multi.hgetall(p === null ? '' : `${this.options.prefix}:${p.queue}:${p.id}`)
    for (const queue of queues) multi.xrevrange(this.streamKey(queue), '+', '-', 'COUNT', 1)
    const replies = (await multi.exec()) ?? []
    const value = (i: number): unknown => {
      const [err, reply] = replies[i] ?? [new Error('no reply'), null]
      if (err) throw err
      return reply
    }
    await Promise.all(queues.map((queue, k) => {
      const last = (value(jobIds.length + k) as Array<[string, string[]]>)[0]?.[0]
      return last === undefined ? undefined : this.loops.get(queue)?.reached(last)
    }))
    return jobIds.map((jobId, i) => {
      const translated = translateBullmqHash(value(i) as Record<string, string>, this.options.ownerField)
      if (translated === null) return { state: null, owner: null }
      return { state: this.jobs.stored(this.jobs.get(jobId), translated.state), owner: translated.owner }
    })
  }

  async close(): Promise<void> {
    this.closed = true
    for (const loop of this.loops.values()) loop.stop()
    this.loops.clear()
    if (this.cmd !== null) await closeConnection(this.cmd)
  }

  /** A loop read an event of its queue. */
  entry(queue: string, list: readonly string[]): void {
    const hooks = this.hooks
    if (hooks === null) return
    // The job id first, without building the event: most events are of jobs nobody here watches.
    let id: string | undefined
    for (let i = 0; i + 1 < list.length; i += 2) {
      if (list[i] === 'jobId') {
        id = list[i + 1]
        break
      }
    }
    if (id === undefined) return
    const jobId = `${BULLMQ_JOB_PREFIX}${queue}:${id}`
    const job = this.jobs.get(jobId)
    if (job === undefined) return
    try {
      const state = translateBullmqEvent(fieldsOf(list), job.last)
      if (state !== null) hooks.message(Buffer.from(this.channelPrefix + jobId, 'latin1'), this.jobs.deliver(job, state))
    } catch (err) {
      this.warn({ job: jobId, err: (err as Error).message }, 'bullmq event could not be translated; dropped')
    }
  }

  live(loop: QueueLoop, live: boolean): void {
    this.hooks?.live([...loop.jobs], live)
  }

  gap(loop: QueueLoop): void {
    this.log.warn({ queue: loop.queue }, 'the bullmq event stream was trimmed past where it was read; resynchronising its watchers')
    this.hooks?.restored([...loop.jobs], false)
  }

  serverChanged(): void {
    this.log.warn('the bullmq redis is another server process (restart or failover); job states may be lost and job ids reused')
    this.jobs.renew()
    this.hooks?.restored(this.jobs.ids(), true)
  }

  private streamKey(queue: string): string {
    return `${this.options.prefix}:${queue}:events`
  }

  private commands(): Redis {
    if (this.cmd === null) this.cmd = sourceConnection(this.url, 'bullmq', 'commands', this.log)
    return this.cmd
  }
}
