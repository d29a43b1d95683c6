// BullMQ jobs, `bullmq:<queue>:<job id>`, read from the queue's own Redis keys with no change to
// any worker. BullMQ writes every state change of a job to its hash `<prefix>:<queue>:<id>`
// and, in the same Lua script, appends an event to the queue's stream `<prefix>:<queue>:events`
// (`progress` with `data`, `completed` with `returnvalue`, `failed` with `failedReason`,
// `active`, `waiting`, `removed`, `stalled`...).
//
// The watched queues' streams are read by one connection per process (StreamReader): each
// round one `XREAD BLOCK` naming every watched queue's stream, each from the last id read, so
// an outage delays events but loses none (as long as the stream, trimmed by BullMQ to about
// 10,000 events, still holds them). A queue is read from when its first job is watched until
// its last is unwatched. A snapshot reads the job's hash together with the stream's last id
// (one MULTI, so the hash is exactly the state that id led to), then waits until the reader
// has read up to that id: whatever the node delivered is then at least as new as the hash.

import type { Redis } from 'ioredis'
import { backoff } from '../support/backoff.js'
import type { Logger } from '../support/log.js'
import { rateLimitedLog } from '../support/log.js'
import type { JobPayload } from '../wire/protocol.js'
import { closeConnection, isWrongType, ServerIdentity, sourceConnection, whenReady } from '../broker/redis-connection.js'
import { isRecord, liftDetails, ownerAt, parseQueueJson, progressOf, SourceJobs, type JobSource, type SourceHooks, type SourceRecord, type Translated } from './source.js'

export const BULLMQ_JOB_PREFIX = 'bullmq:'
/** Events per stream per XREAD. */
const READ_BATCH = 500
/** How long one XREAD waits for events before it is sent again (a new queue wakes it sooner). */
const BLOCK_MS = 5000
/** The same where nothing can wake it (CLIENT refused by an ACL): a new queue waits this long. */
const UNWAKEABLE_BLOCK_MS = 1000
/** How long a queue whose events key is not a stream is left aside before it is tried again. */
const UNREADABLE_RETRY_MS = 30_000
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
  const details = parseQueueJson(data)
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
      Object.assign(state, { status: 'completed', source_status: 'completed', progress: 100, result: parseQueueJson(hash.returnvalue) ?? null })
    } else {
      Object.assign(state, { status: 'failed', source_status: 'failed', error: hash.failedReason ?? 'job failed' })
    }
  } else if (hash.processedOn !== undefined && (hash.ats === undefined || Number(hash.ats) > Number(hash.atm ?? 0))) {
    // `ats` (attempts started) above `atm` (attempts made): an attempt is running. Without
    // `ats` (BullMQ before 5.x) processedOn is all there is.
    Object.assign(state, { status: 'processing', source_status: 'active' })
  }
  return { state, owner: ownerAt(parseQueueJson(hash.data), ownerField) }
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
    Object.assign(state, { status: 'completed', progress: 100, result: parseQueueJson(fields.returnvalue) ?? null })
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

interface ReaderOwner {
  entry(queue: string, fields: readonly string[]): void
  live(queue: QueueStream, live: boolean): void
  /** The Redis behind the reader is another server process than before. */
  serverChanged(): void
  /** The stream was trimmed past where it had been read: events of its jobs may be lost. */
  gap(queue: QueueStream): void
}

interface Waiter {
  resolve(): void
  reject(err: Error): void
}

/** One watched queue's event stream, as the reader follows it. */
class QueueStream {
  /** The watched jobs of this queue (jobwire ids). */
  readonly jobs = new Set<string>()
  /** The last stream id read: reading resumes after it. Null until the reader has placed it. */
  position: string | null = null
  live = false
  liveWaiters: Waiter[] = []
  positionWaiters: Array<Waiter & { readonly target: string }> = []

  /** Its events key held another type than a stream (anyone who may write to the queue's Redis
   * can put one there): not read until then (ms since the epoch), when it is placed again.
   * Its watchers are live meanwhile and see what snapshots read from the jobs' hashes. */
  unreadableUntil = 0

  constructor(readonly queue: string, readonly key: string) {}

  reached(target: string): boolean {
    return this.position !== null && compareStreamIds(this.position, target) >= 0
  }
}

/**
 * Every watched queue's event stream read by one connection: each round is one `XREAD BLOCK`
 * naming all of them, so the connections this costs are two per Redis (this one and the
 * commands connection) whatever the number of queues or users. A queue added while the read
 * is blocked wakes it with `CLIENT UNBLOCK` (sent on the commands connection), and the next
 * round includes it.
 */
class StreamReader {
  private readonly queues = new Map<string, QueueStream>()
  private readonly byKey = new Map<string, QueueStream>()
  private readonly conn: Redis
  /** Bumped whenever the connection closes; the server is checked once per session. */
  private session = 0
  private checkedSession = -1
  /** The connection's CLIENT ID, for CLIENT UNBLOCK; null until known for this session. */
  private clientId: number | null = null
  /** CLIENT UNBLOCK was refused: reads block for a short time instead. */
  private unwakeable = false
  /** Rounds of XREAD sent; `blockedRound` is the one Redis may be blocking on now, and
   * `wokenRound` the last one a CLIENT UNBLOCK was sent for. */
  private round = 0
  private blockedRound = -1
  private wokenRound = -1
  /** Resolved when a queue is added while there is nothing to read. */
  private wake: (() => void) | null = null
  private stopped = false
  private readonly identity = new ServerIdentity()
  private readonly warn: ReturnType<typeof rateLimitedLog>

  constructor(
    url: string,
    private readonly owner: ReaderOwner,
    private readonly unblock: (clientId: number) => Promise<number>,
    log: Logger,
  ) {
    this.warn = rateLimitedLog(log, 5, 30_000)
    this.conn = sourceConnection(url, 'bullmq-stream', 'stream', log)
    this.conn.on('close', () => {
      this.session++
      this.clientId = null
      for (const queue of this.queues.values()) this.setLive(queue, false)
    })
    void this.run()
  }

  get size(): number {
    return this.queues.size
  }

  get(queue: string): QueueStream | undefined {
    return this.queues.get(queue)
  }

  /** The queue's stream, followed from now on; `whenLive` says when its events flow. */
  add(queue: string, key: string): QueueStream {
    let stream = this.queues.get(queue)
    if (stream !== undefined) return stream
    stream = new QueueStream(queue, key)
    this.queues.set(queue, stream)
    this.byKey.set(key, stream)
    this.wakeUp()
    return stream
  }

  /** Stops following the queue (its round may still be blocked on it: its events are ignored). */
  remove(stream: QueueStream): void {
    if (this.queues.get(stream.queue) !== stream) return
    this.queues.delete(stream.queue)
    this.byKey.delete(stream.key)
    const err = new Error('queue no longer watched')
    for (const w of [...stream.liveWaiters, ...stream.positionWaiters]) w.reject(err)
    stream.liveWaiters = []
    stream.positionWaiters = []
  }

  whenLive(stream: QueueStream): Promise<void> {
    if (stream.live) return Promise.resolve()
    if (this.stopped || this.queues.get(stream.queue) !== stream) return Promise.reject(new Error('queue no longer watched'))
    return new Promise((resolve, reject) => stream.liveWaiters.push({ resolve, reject }))
  }

  /** Resolves once the stream has been read up to `target`. */
  reached(stream: QueueStream, target: string): Promise<void> {
    if (stream.reached(target)) return Promise.resolve()
    if (this.stopped || this.queues.get(stream.queue) !== stream) return Promise.reject(new Error('queue no longer watched'))
    return new Promise((resolve, reject) => stream.positionWaiters.push({ target, resolve, reject }))
  }

  async stop(): Promise<void> {
    this.stopped = true
    for (const stream of [...this.queues.values()]) this.remove(stream)
    this.wake?.()
    // Ends the blocked XREAD too.
    this.conn.disconnect()
  }

  private wakeUp(): void {
    if (this.wake !== null) {
      const wake = this.wake
      this.wake = null
      wake()
      return
    }
    const clientId = this.clientId
    // One wake per blocked round, however many queues arrive meanwhile: the next round reads
    // them all.
    if (clientId === null || this.blockedRound !== this.round || this.wokenRound === this.round) return
    const round = this.round
    this.wokenRound = round
    // The UNBLOCK can reach Redis before the XREAD it is meant for: then it unblocks nothing,
    // and is sent again while that round is still the one blocked.
    const attempt = (left: number): void => {
      this.unblock(clientId).then((unblocked) => {
        if (unblocked === 0 && left > 0 && this.blockedRound === round && this.round === round && !this.stopped) {
          setTimeout(() => attempt(left - 1), 5)
        }
      }, (err: Error) => {
        this.unwakeable = true
        this.warn({ err: err.message }, 'bullmq CLIENT UNBLOCK failed (a Redis ACL?); a new queue is read once the current block ends (1 s at most)')
      })
    }
    attempt(20)
  }

  private setLive(stream: QueueStream, live: boolean): void {
    if (live === stream.live) return
    stream.live = live
    if (live) {
      const waiters = stream.liveWaiters
      stream.liveWaiters = []
      for (const w of waiters) w.resolve()
    }
    this.owner.live(stream, live)
  }

  private async run(): Promise<void> {
    for (let attempt = 0; !this.stopped;) {
      try {
        await whenReady(this.conn, () => this.stopped)
        if (this.checkedSession !== this.session) await this.checkSession()
        await this.place()
        const streams = [...this.queues.values()].filter((q) => q.position !== null)
        if (streams.length === 0) {
          // Nothing to read: until a queue is added, or an unreadable one may be placed again.
          await this.idle(this.queues.size === 0 ? null : UNREADABLE_RETRY_MS)
          continue
        }
        for (const stream of streams) this.setLive(stream, true)
        const round = ++this.round
        this.blockedRound = round
        const block = this.clientId === null || this.unwakeable ? UNWAKEABLE_BLOCK_MS : BLOCK_MS
        const reply = (await this.conn.xread('COUNT', READ_BATCH, 'BLOCK', block, 'STREAMS',
          ...streams.map((q) => q.key), ...streams.map((q) => q.position!))) as StreamReply
        this.blockedRound = -1
        attempt = 0
        for (const [key, entries] of reply ?? []) {
          const stream = this.byKey.get(key)
          if (stream === undefined) continue
          for (const [id, fields] of entries) {
            stream.position = id
            this.owner.entry(stream.queue, fields)
          }
        }
        for (const stream of streams) settlePositionWaiters(stream)
      } catch (err) {
        this.blockedRound = -1
        if (this.stopped) return
        // One queue's key changed type under the read: that queue is set aside, the rest go on.
        if (isWrongType(err) && this.conn.status === 'ready' && await this.setAsideUnreadable().catch(() => false)) continue
        // A dropped connection reconnects by itself; anything else (a refusal) is retried with
        // backoff, so a misconfigured Redis costs a log line a while, not a busy loop.
        if (this.conn.status === 'ready') this.warn({ queues: this.queues.size, err: (err as Error).message }, 'bullmq event stream read failed; retrying')
        await new Promise((resolve) => setTimeout(resolve, RETRY_MIN_MS + backoff(attempt++, RETRY_MIN_MS, RETRY_MAX_MS)))
      }
    }
  }

  /** Once per connection: its id (for CLIENT UNBLOCK, where allowed), whether the server is the one it was,
   * and, if so, whether a long outage let BullMQ trim a stream past where it was read. */
  private async checkSession(): Promise<void> {
    const session = this.session
    // Without CLIENT (a Redis ACL may forbid it) nothing can wake a blocked read: new queues
    // then join when the current block ends.
    const clientId = await this.conn.client('ID').then(Number, (err: Error) => {
      this.warn({ err: err.message }, 'bullmq CLIENT ID refused (a Redis ACL?); a new queue is read once the current block ends (1 s at most)')
      return null
    })
    if (await this.identity.changed(this.conn)) {
      this.owner.serverChanged()
    } else {
      const placed = [...this.queues.values()].filter((q) => q.position !== null)
      if (placed.length > 0) {
        const pipeline = this.conn.pipeline()
        for (const stream of placed) pipeline.xrange(stream.key, '-', '+', 'COUNT', 1)
        const replies = (await pipeline.exec()) ?? []
        placed.forEach((stream, i) => {
          const oldest = (replies[i]?.[1] as Array<[string, string[]]> | undefined)?.[0]?.[0]
          if (oldest !== undefined && stream.position !== null && compareStreamIds(oldest, stream.position) > 0) this.owner.gap(stream)
        })
      }
    }
    if (session !== this.session) return
    this.clientId = clientId
    this.checkedSession = session
  }

  /** New queues are read from their stream's last id on: everything after it reaches the
   * reader, however late. */
  private async place(): Promise<void> {
    const now = Date.now()
    const unplaced = [...this.queues.values()].filter((q) => q.position === null && q.unreadableUntil <= now)
    if (unplaced.length === 0) return
    const pipeline = this.conn.pipeline()
    for (const stream of unplaced) pipeline.xrevrange(stream.key, '+', '-', 'COUNT', 1)
    const replies = (await pipeline.exec()) ?? []
    unplaced.forEach((stream, i) => {
      const [err, reply] = replies[i] ?? [new Error('no reply'), null]
      if (isWrongType(err)) return this.unreadable(stream)
      if (err) throw err
      if (stream.position === null) stream.position = (reply as Array<[string, string[]]>)[0]?.[0] ?? '0-0'
    })
  }

  /** After an XREAD refused for a key's type: finds the queues whose key is no longer a stream
   * and sets them aside. False when none is (the refusal was something else). */
  private async setAsideUnreadable(): Promise<boolean> {
    const placed = [...this.queues.values()].filter((q) => q.position !== null)
    const pipeline = this.conn.pipeline()
    for (const stream of placed) pipeline.type(stream.key)
    const types = (await pipeline.exec()) ?? []
    const found = placed.filter((_, i) => types[i]?.[1] !== 'stream' && types[i]?.[1] !== 'none')
    for (const stream of found) {
      stream.position = null
      this.unreadable(stream)
    }
    return found.length > 0
  }

  private unreadable(stream: QueueStream): void {
    stream.unreadableUntil = Date.now() + UNREADABLE_RETRY_MS
    this.warn({ queue: stream.queue, key: stream.key }, 'a bullmq queue\'s events key is not a stream; its events are not read (its jobs are shown from their hashes)')
    // Its watchers need not wait for events that cannot come: they go on with snapshots.
    this.setLive(stream, true)
  }

  /** Waits for a queue to be added, or `ms` (null: no limit). */
  private idle(ms: number | null): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = ms === null ? null : setTimeout(() => {
        this.wake = null
        resolve()
      }, ms)
      this.wake = () => {
        if (timer !== null) clearTimeout(timer)
        resolve()
      }
    })
  }
}

function settlePositionWaiters(stream: QueueStream): void {
  if (stream.positionWaiters.length === 0 || stream.position === null) return
  const waiting = stream.positionWaiters
  stream.positionWaiters = []
  for (const w of waiting) {
    if (stream.reached(w.target)) w.resolve()
    else stream.positionWaiters.push(w)
  }
}

export class BullmqSource implements JobSource, ReaderOwner {
  readonly name = 'bullmq' as const
  private readonly jobs = new SourceJobs()
  private reader: StreamReader | null = null
  private cmd: Redis | null = null
  private hooks: SourceHooks | null = null
  private closed = false

  constructor(
    private readonly url: string,
    private readonly channelPrefix: string,
    private readonly options: BullmqOptions,
    private readonly log: Logger,
  ) {}

  start(hooks: SourceHooks): void {
    this.hooks = hooks
  }

  async watch(jobIds: readonly string[]): Promise<void> {
    if (this.closed) throw new Error('bullmq source closed')
    const reader = this.streams()
    const streams = new Set<QueueStream>()
    for (const jobId of jobIds) {
      const parsed = parseBullmqJobId(jobId)
      if (parsed === null) continue
      this.jobs.add(jobId)
      const stream = reader.add(parsed.queue, this.streamKey(parsed.queue))
      stream.jobs.add(jobId)
      streams.add(stream)
    }
    await Promise.all([...streams].map((stream) => reader.whenLive(stream)))
  }

  unwatch(jobIds: readonly string[]): void {
    for (const jobId of jobIds) {
      this.jobs.delete(jobId)
      const parsed = parseBullmqJobId(jobId)
      const stream = parsed === null ? undefined : this.reader?.get(parsed.queue)
      if (stream === undefined) continue
      stream.jobs.delete(jobId)
      if (stream.jobs.size === 0) this.reader!.remove(stream)
    }
  }

  async read(jobIds: readonly string[]): Promise<SourceRecord[]> {
    if (this.closed) throw new Error('bullmq source closed')
    const parsed = jobIds.map(parseBullmqJobId)
    // Only queues this node reads need the stream's position, to wait for the reader.
    const queues = [...new Set(parsed.flatMap((p) => (p !== null && this.reader?.get(p.queue) !== undefined ? [p.queue] : [])))]
    const multi = this.commands().multi()
    for (const p of parsed) multi.hgetall(p === null ? '' : `${this.options.prefix}:${p.queue}:${p.id}`)
    for (const queue of queues) multi.xrevrange(this.streamKey(queue), '+', '-', 'COUNT', 1)
    const replies = (await multi.exec()) ?? []
    // A key of another type where a job's hash or a queue's stream should be (anyone who may
    // write to the queue's Redis can put one there) is no job and no stream: it reads as
    // absent, and never fails the other ids read with it.
    const value = (i: number, absent: unknown): unknown => {
      const [err, reply] = replies[i] ?? [new Error('no reply'), null]
      if (isWrongType(err)) return absent
      if (err) throw err
      return reply
    }
    await Promise.all(queues.map((queue, k) => {
      const last = (value(jobIds.length + k, []) as Array<[string, string[]]>)[0]?.[0]
      const stream = this.reader?.get(queue)
      return last === undefined || stream === undefined ? undefined : this.reader!.reached(stream, last)
    }))
    return jobIds.map((jobId, i) => {
      const translated = translateBullmqHash(value(i, {}) as Record<string, string>, this.options.ownerField)
      if (translated === null) return { state: null, owner: null }
      return { state: this.jobs.stored(this.jobs.get(jobId), translated.state, translated.owner), owner: translated.owner }
    })
  }

  async close(): Promise<void> {
    this.closed = true
    await this.reader?.stop()
    if (this.cmd !== null) await closeConnection(this.cmd)
  }

  /** The reader read an event of a watched queue. */
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
      const fields = fieldsOf(list)
      // A job added under an id already known is another job (the old one was removed): a new
      // generation, so the gateway checks its watchers against the new job's owner before they
      // see any of it.
      if (fields.event === 'added' && (job.seq > 0 || job.last !== null)) this.jobs.newGeneration(job)
      const state = translateBullmqEvent(fields, job.last)
      if (state !== null) hooks.message(Buffer.from(this.channelPrefix + jobId, 'latin1'), this.jobs.deliver(job, state))
    } catch (err) {
      hooks.malformed(jobId, `bullmq event could not be translated: ${(err as Error).message}`)
    }
  }

  live(stream: QueueStream, live: boolean): void {
    this.hooks?.live([...stream.jobs], live)
  }

  gap(stream: QueueStream): void {
    this.log.warn({ queue: stream.queue }, 'the bullmq event stream was trimmed past where it was read; resynchronising its watchers')
    this.hooks?.restored([...stream.jobs], false)
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

  /** The stream reader, started on first use. */
  private streams(): StreamReader {
    if (this.reader === null) {
      const cmd = this.commands()
      this.reader = new StreamReader(this.url, this, async (clientId) => Number(await cmd.client('UNBLOCK', clientId)), this.log)
    }
    return this.reader
  }
}
