// Jobs this process watches, and the broker subscriptions that follow them. A job is watched
// while anything holds a reference: a socket subscribed to one of its uWS topics (counted
// from uWS's subscription handler), a watch being opened (while its snapshot is read), or an
// SSE stream. In per-job mode the first reference SUBSCRIBEs its channel and the last one
// UNSUBSCRIBEs it after a delay, re-checked so a quick re-subscribe does not flap. Requests
// arriving in one event-loop turn share one SUBSCRIBE command.
//
// Jobs of a source (`celery:...`, `bullmq:...`, src/sources/) follow the same rule, with the
// source in the broker's place: the first reference asks the source to watch the job, the last
// one to unwatch it after the delay, and the job is live once the source says its messages
// flow. Broker outages and the pattern subscription concern the broker's jobs only.

import type { Broker } from '../broker/broker.js'
import { UnsupportedJob, type SourceRoutes } from '../sources/router.js'
import type { JobSource } from '../sources/source.js'
import type { SubscriptionMode } from '../support/config.js'
import type { Logger } from '../support/log.js'
import { updateHeads, type UpdateHeads } from '../wire/frames.js'
import { isTerminalStatus, type JobPayload } from '../wire/protocol.js'
import { channelFor, topicFor } from '../wire/topics.js'
import type { StallClock, Stalls } from './stalls.js'

/** Something besides WebSockets that receives a job's frames (an SSE stream). Events arrive
 * as finished text, built once per broker message for every sink of the job. */
export interface JobSink {
  /** HOT PATH: a job_update event. */
  send(event: string): void
  /** The job's state after the broker came back: a job_status event. */
  resync(event: string): void
}

/** One rate class of a job: its topics, when it last sent, and the newest update it holds
 * back until its next slot. */
export interface RateState {
  readonly jsonTopic: string
  readonly msgpackTopic: string
  /** Sockets in either topic. */
  members: number
  lastSentAt: number
  pending: JobPayload | null
  pendingSeq: number | undefined
  timer: NodeJS.Timeout | null
  /** The seq of the update (or status) the class last delivered; undefined: none known. */
  sentSeq: number | undefined
  /** The seq and epoch of the last update that reached the class, sent or held back. */
  seenSeq: number | undefined
  seenEpoch: number | undefined
  /** The epoch of the last sequenced update seen (a plain PUBLISH has none). */
  lastEpoch: number | undefined
  /** Every update since the last delivery followed the one before it (seq + 1, same epoch):
   * what the next frame skips was conflated here, and the frame may say so (prev_seq). */
  unbroken: boolean
}

/** One watched job as the stream sees it: names and frame prefixes fixed at creation, the
 * newest payload seen on its channel, and its SSE sinks. How many hold it and whether its
 * channel is live belong to WatchedJobs alone. */
export class WatchedJob {
  readonly channel: string
  readonly jsonTopic: string
  readonly msgpackTopic: string
  readonly heads: UpdateHeads
  readonly sinks = new Set<JobSink>()
  /** The job's epoch as this node last knew it (from a snapshot or a message): a message of
   * another epoch is a new generation, whose watchers are checked again (generations.ts). */
  generation: number | undefined = undefined
  /** While a new generation's watchers are checked, its frames are held back; a job_status
   * follows. */
  reauthorizing = false
  /** While reauthorizing: a copy of the newest payload held back (the bridge's bytes are only
   * valid during its call), sent after the job_status when newer than it (generations.ts).
   * Null otherwise, so the hot path copies nothing. */
  held: Buffer | null = null
  /** Rate classes (max_hz) that sockets on this node watch the job at; fanout.ts owns them. */
  rates: Map<number, RateState> | null = null
  /** Stall detection's clock for the job (stalls.ts owns it); null while it has none. */
  stall: StallClock | null = null
  /** Payloads seen on the channel while watched: a snapshot read notes it when it leaves, so
   * it can tell what the channel delivered after it from what came before (snapshot.ts). */
  seenCount = 0
  private seenPayload: JobPayload | null = null
  /** The newest stored state read for the job (by epoch and seq; kept through forget()). A read
   * and the channel's frames come by different connections, so a frame published before a
   * read may arrive after it: only what no such reordering explains is judged (againstRead). */
  private readEpoch: number | undefined = undefined
  private readSeq: number | undefined = undefined
  private readFinal = false
  /** The newest stored state read, to tell a frame at its very seq that is another state (a
   * seq re-used after Redis lost writes) from the same one arriving after the read. */
  private readPayload: JobPayload | undefined = undefined
  /** The last sequenced payload seen before forget(), until a sequenced one is seen again. */
  private before: { readonly payload: JobPayload; readonly seq: number; readonly epoch: number } | null = null
  private seenSeq: number | undefined = undefined
  private seenEpoch: number | undefined = undefined

  constructor(readonly id: string, channelPrefix: string, private readonly stalls: Stalls | null = null) {
    this.channel = channelFor(channelPrefix, id)
    this.jsonTopic = topicFor('json', id)
    this.msgpackTopic = topicFor('msgpack', id)
    this.heads = updateHeads(id)
  }

  /** HOT PATH: the newest payload seen on the channel while watched: the snapshot of jobs
   * whose producers only PUBLISH, and the tie-breaker against a stored state read mid-stream. */
  see(payload: JobPayload, seq: number | undefined, epoch: number | undefined): void {
    this.seenCount++
    if (this.before !== null && seq !== undefined) this.before = null
    this.seenPayload = payload
    this.seenSeq = seq
    this.seenEpoch = epoch
    if (this.stalls !== null) this.stalls.seen(this, payload)
  }

  /** The broker lost its data (it restarted empty, or failed over): what was seen before
   * says nothing about the job now. */
  forget(): void {
    // Kept as evidence of the history the job had: a stored state read after the broker came
    // back that is behind it in the same epoch is a loss, not the truth (snapshot.ts).
    if (this.seenSeq !== undefined && this.seenEpoch !== undefined) this.before = { payload: this.seenPayload!, seq: this.seenSeq, epoch: this.seenEpoch }
    this.seenPayload = null
    this.seenSeq = undefined
    this.seenEpoch = undefined
    this.stalls?.forget(this)
  }

  get lastPayload(): JobPayload | null {
    return this.seenPayload
  }

  get lastSeq(): number | undefined {
    return this.seenSeq
  }

  get lastEpoch(): number | undefined {
    return this.seenEpoch
  }

  /** HOT PATH: whether a sequenced state of the job contradicts what its channel delivered
   * before (frames arrive in publish order, each once): the same epoch with a seq not above
   * the last one (`orEqual`; a stored state read may equal it), or a non-terminal state after a
   * terminal one. Neither happens unless Redis lost writes (a replica or a restored copy that
   * lacked the last ones), since the producer script counts seq up and refuses to reopen a
   * final state. States without an epoch (older producers) are not judged. */
  contradicts(epoch: number | undefined, seq: number, status: unknown, orEqual = true): boolean {
    const before = this.before
    const known = this.seenSeq ?? before?.seq
    if (known === undefined || epoch === undefined || epoch !== (this.seenSeq !== undefined ? this.seenEpoch : before!.epoch)) return false
    const last = this.seenSeq !== undefined ? this.seenPayload! : before!.payload
    return seq < known || (orEqual && seq === known) || (seq > known && isTerminalStatus(last.status) && !isTerminalStatus(status))
  }

  /** A stored state was read for the job (a snapshot taken from the record). */
  noteStored(data: JobPayload): void {
    const { epoch, seq } = data
    if (typeof epoch !== 'number' || typeof seq !== 'number') return
    if (epoch === this.readEpoch && this.readSeq !== undefined && seq <= this.readSeq) return
    this.readEpoch = epoch
    this.readSeq = seq
    this.readFinal = isTerminalStatus(data.status)
    this.readPayload = data
  }

  /** HOT PATH: a sequenced frame against the newest stored state read. LOSS: it cannot be
   * explained by a frame overtaken by a read (a non-terminal state at a seq above a terminal
   * one read, or the read's seq with the other side of final). VERIFY: its seq is below the
   * read's, which a frame published before the read explains, or a record that went back:
   * the record is read again to tell (losses.ts); STALE: the same, and the frame is not final
   * while the read was, so it is not sent either way (superseded, or a reopened final state).
   * FINE: anything else. */
  againstRead(epoch: number | undefined, seq: number, status: unknown, payload?: JobPayload): ReadCheck {
    const known = this.readSeq
    if (known === undefined || epoch !== this.readEpoch) return 'fine'
    const terminal = isTerminalStatus(status)
    if (seq < known) return this.readFinal && !terminal ? 'stale' : 'verify'
    if (seq > known) return this.readFinal && !terminal ? 'loss' : 'fine'
    if (this.readFinal !== terminal) return 'loss'
    // The read's very seq: the same state arriving after the read, or another one under a
    // re-used seq (rare: compared only here, off the common path).
    return payload !== undefined && this.readPayload !== undefined && JSON.stringify(payload) !== JSON.stringify(this.readPayload) ? 'loss' : 'fine'
  }

  /** The newest stored seq read for the job. */
  get storedSeq(): number | undefined {
    return this.readSeq
  }

  /** The last sequenced state seen before the broker lost its data, while nothing sequenced
   * was seen since: what a stored state read now may contradict. */
  get forgotten(): JobPayload | null {
    return this.seenSeq === undefined ? this.before?.payload ?? null : null
  }
}

/** What a frame says against the newest stored state read (WatchedJob.againstRead). */
export type ReadCheck = 'fine' | 'verify' | 'stale' | 'loss'

interface Hold {
  readonly job: WatchedJob
  /** Where its messages come from: null for the broker, else the job's source. */
  readonly source: JobSource | null
  /** The job cannot be watched here (a source without a Redis): nothing will ever arrive for
   * it, so it is live from the start and its snapshot says why (router.ts). */
  readonly refused: UnsupportedJob | null
  refs: number
  live: boolean
  waiters: Array<{ resolve: () => void; reject: (err: Error) => void }>
  releaseTimer: NodeJS.Timeout | null
}

export interface WatchedJobsOptions {
  readonly mode: SubscriptionMode
  readonly channelPrefix: string
  readonly unsubscribeDelayMs: number
  /** Routes source job ids (`celery:`, `bullmq:`) to their source; without it every job is the
   * broker's. */
  readonly sources?: SourceRoutes
  /** Stall detection for every watched job; without it, none. */
  readonly stalls?: Stalls
}

export class WatchedJobs {
  private readonly holds = new Map<string, Hold>()
  private toSubscribe = new Set<Hold>()
  private toUnsubscribe = new Set<string>()
  private toWatch = new Map<JobSource, Set<Hold>>()
  private toUnwatch = new Map<JobSource, Set<string>>()
  private flushScheduled = false
  private patternIsLive = false
  private disposed = false
  /** Bumped whenever jobs stop receiving messages, or what they saw is forgotten: a snapshot
   * read that left before is no longer one a new watcher may share (snapshot.ts). */
  liveBreaks = 0

  constructor(
    private readonly broker: Broker,
    private readonly options: WatchedJobsOptions,
    private readonly log: Logger,
  ) {}

  get size(): number {
    return this.holds.size
  }

  /** Pattern mode: whether the node-wide PSUBSCRIBE is live. */
  get patternLive(): boolean {
    return this.patternIsLive
  }

  get(jobId: string): WatchedJob | undefined {
    return this.holds.get(jobId)?.job
  }

  *values(): IterableIterator<WatchedJob> {
    for (const hold of this.holds.values()) yield hold.job
  }

  acquire(jobId: string): WatchedJob {
    let hold = this.holds.get(jobId)
    if (hold === undefined) {
      const route = this.options.sources?.route(jobId) ?? null
      const refused = route instanceof UnsupportedJob ? route : null
      const source = route instanceof UnsupportedJob ? null : route
      hold = { job: new WatchedJob(jobId, this.options.channelPrefix, this.options.stalls ?? null), source, refused, refs: 0, live: refused !== null, waiters: [], releaseTimer: null }
      this.holds.set(jobId, hold)
      if (refused !== null) {
        // Nothing to subscribe to.
      } else if (source !== null) {
        this.toUnwatch.get(source)?.delete(jobId)
        setOf(this.toWatch, source).add(hold)
        this.scheduleFlush()
      } else if (this.options.mode === 'pattern') {
        hold.live = this.patternIsLive
      } else {
        this.toUnsubscribe.delete(hold.job.channel)
        this.toSubscribe.add(hold)
        this.scheduleFlush()
      }
    }
    if (hold.releaseTimer !== null) {
      clearTimeout(hold.releaseTimer)
      hold.releaseTimer = null
    }
    hold.refs++
    return hold.job
  }

  release(job: WatchedJob): void {
    const hold = this.holds.get(job.id)
    if (hold === undefined || hold.job !== job || hold.refs <= 0) {
      this.log.error({ job: job.id }, 'watched job released more often than acquired')
      return
    }
    if (--hold.refs > 0 || this.disposed) return
    hold.releaseTimer = setTimeout(() => {
      hold.releaseTimer = null
      if (hold.refs > 0 || this.holds.get(job.id) !== hold) return
      this.holds.delete(job.id)
      this.fail(hold, new Error('job no longer watched'))
      this.options.stalls?.forget(job)
      if (hold.source !== null) {
        this.toWatch.get(hold.source)?.delete(hold)
        setOf(this.toUnwatch, hold.source).add(job.id)
        this.scheduleFlush()
      } else if (hold.refused === null && this.options.mode === 'per-job') {
        this.toSubscribe.delete(hold)
        this.toUnsubscribe.add(job.channel)
        this.scheduleFlush()
      }
    }, this.options.unsubscribeDelayMs)
    hold.releaseTimer.unref()
  }

  /** Whether messages for the job are flowing from the broker. */
  isLive(job: WatchedJob): boolean {
    return this.holds.get(job.id)?.live ?? false
  }

  /** How many hold the job: subscribed sockets, SSE streams and watches being opened. */
  holders(job: WatchedJob): number {
    return this.holds.get(job.id)?.refs ?? 0
  }

  /** The `top` jobs with the most holders (for the admin page). */
  mostWatched(top: number): Array<{ job_id: string; watchers: number }> {
    const jobs: Array<{ job_id: string; watchers: number }> = []
    for (const hold of this.holds.values()) jobs.push({ job_id: hold.job.id, watchers: hold.refs })
    return jobs.sort((a, b) => b.watchers - a.watchers).slice(0, top)
  }

  /** Resolves once messages for the job are flowing from the broker. */
  whenLive(job: WatchedJob): Promise<void> {
    const hold = this.holds.get(job.id)
    if (hold === undefined || hold.job !== job) return Promise.reject(new Error('job no longer watched'))
    if (hold.live) return Promise.resolve()
    return new Promise((resolve, reject) => hold.waiters.push({ resolve, reject }))
  }

  /** Pattern mode: one PSUBSCRIBE for every job channel; every job is live once it is. */
  async subscribePattern(): Promise<void> {
    await this.broker.psubscribe(`${this.options.channelPrefix}*`)
    this.setPatternLive(true)
  }

  /** Pattern mode: the node-wide PSUBSCRIBE is live (or not). */
  setPatternLive(live: boolean): void {
    this.patternIsLive = live
    if (!live) this.liveBreaks++
    for (const hold of this.holds.values()) {
      if (hold.source !== null || hold.refused !== null) continue
      live ? this.markLive(hold) : (hold.live = false)
    }
  }

  /** The broker lost its data: forget every payload seen before. */
  forgetSeen(): void {
    this.liveBreaks++
    for (const hold of this.holds.values()) hold.job.forget()
  }

  /** The broker connection is down: no job receives messages until it is restored. */
  markAllDown(): void {
    this.patternIsLive = false
    this.liveBreaks++
    for (const hold of this.holds.values()) if (hold.source === null && hold.refused === null) hold.live = false
  }

  /** The broker restored every subscription after an outage. */
  markAllLive(): void {
    if (this.options.mode === 'pattern') return this.setPatternLive(true)
    // A job whose SUBSCRIBE has not been sent yet was not part of the replay.
    for (const hold of this.holds.values()) {
      if (!this.toSubscribe.has(hold) && hold.source === null && hold.refused === null) this.markLive(hold)
    }
  }

  /** A snapshot was read for a new watcher: stall detection starts the clock of a job that is
   * already processing. */
  observeSnapshot(job: WatchedJob, data: JobPayload | null): void {
    this.options.stalls?.snapshot(job, data)
  }

  /** A source's jobs are receiving messages again (or no longer). Jobs it has not been asked
   * to watch yet are not among them. */
  sourceLive(jobIds: readonly string[], live: boolean): void {
    if (!live) this.liveBreaks++
    for (const jobId of jobIds) {
      const hold = this.holds.get(jobId)
      if (hold === undefined || hold.source === null) continue
      if (live) this.markLive(hold)
      else hold.live = false
    }
  }

  dispose(): void {
    this.disposed = true
    for (const hold of this.holds.values()) {
      if (hold.releaseTimer !== null) clearTimeout(hold.releaseTimer)
      this.options.stalls?.forget(hold.job)
      this.fail(hold, new Error('gateway stopping'))
    }
    this.holds.clear()
  }

  private markLive(hold: Hold): void {
    hold.live = true
    const waiters = hold.waiters
    hold.waiters = []
    for (const w of waiters) w.resolve()
  }

  /** The sources' share of a flush: unwatches first, as UNSUBSCRIBEs go before SUBSCRIBEs. */
  private flushSources(): void {
    const unwatch = this.toUnwatch
    const watch = this.toWatch
    this.toUnwatch = new Map()
    this.toWatch = new Map()
    for (const [source, jobIds] of unwatch) if (jobIds.size > 0) source.unwatch([...jobIds])
    for (const [source, set] of watch) {
      if (set.size === 0) continue
      const holds = [...set]
      source.watch(holds.map((hold) => hold.job.id)).then(
        () => {
          for (const hold of holds) if (this.holds.get(hold.job.id) === hold) this.markLive(hold)
        },
        (err: Error) => {
          // A source that comes back marks its jobs live itself (sourceLive).
          this.log.warn({ source: source.name, jobs: holds.length, err: err.message }, 'source watch failed')
          for (const hold of holds) this.fail(hold, err)
        },
      )
    }
  }

  private fail(hold: Hold, err: Error): void {
    const waiters = hold.waiters
    hold.waiters = []
    for (const w of waiters) w.reject(err)
  }

  private scheduleFlush(): void {
    if (this.flushScheduled || this.disposed) return
    this.flushScheduled = true
    setImmediate(() => this.flush())
  }

  private flush(): void {
    this.flushScheduled = false
    if (this.disposed) return
    this.flushSources()
    const unsubscribe = [...this.toUnsubscribe]
    const subscribe = [...this.toSubscribe]
    this.toUnsubscribe = new Set()
    this.toSubscribe = new Set()
    // Same connection, sent in this order: an UNSUBSCRIBE never undoes a later SUBSCRIBE.
    if (unsubscribe.length > 0) {
      this.broker.unsubscribe(unsubscribe).catch((err: Error) => {
        this.log.warn({ channels: unsubscribe.length, err: err.message }, 'broker unsubscribe failed')
      })
    }
    if (subscribe.length > 0) {
      this.broker.subscribe(subscribe.map((hold) => hold.job.channel)).then(
        () => {
          for (const hold of subscribe) if (this.holds.get(hold.job.id) === hold) this.markLive(hold)
        },
        (err: Error) => {
          // The broker replays its channel set when it reconnects, which marks these live.
          this.log.warn({ channels: subscribe.length, err: err.message }, 'broker subscribe failed')
          for (const hold of subscribe) this.fail(hold, err)
        },
      )
    }
  }
}

function setOf<K, V>(map: Map<K, Set<V>>, key: K): Set<V> {
  let set = map.get(key)
  if (set === undefined) {
    set = new Set()
    map.set(key, set)
  }
  return set
}
