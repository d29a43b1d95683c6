// Jobs this process watches, and the broker subscriptions that follow them. A job is watched
// while anything holds a reference: a socket subscribed to one of its uWS topics (counted
// from uWS's subscription handler), a subscribe request still fetching its snapshot, or an
// SSE stream. In per-job mode the first reference SUBSCRIBEs its channel and the last one
// UNSUBSCRIBEs it after a delay, re-checked so a quick re-subscribe does not flap. Requests
// arriving in one event-loop turn share one SUBSCRIBE command.

import type { Broker } from '../broker/broker.js'
import type { SubscriptionMode } from '../support/config.js'
import { updateHeads, type Frame, type UpdateHeads } from '../wire/frames.js'
import type { Logger } from '../support/log.js'
import type { JobPayload } from '../wire/protocol.js'
import { channelFor, topicFor } from '../wire/topics.js'

/** Something besides WebSockets that receives a job's frames (an SSE stream). */
export interface JobSink {
  /** HOT PATH: the job_update frame in JSON, built once for all sinks and JSON sockets. */
  update(jsonFrame: Frame, seq: number | undefined): void
  /** The gateway resynchronised (broker came back): the job's snapshot. */
  resync(data: JobPayload | null): void
}

export class WatchedJob {
  readonly channel: string
  readonly jsonTopic: string
  readonly msgpackTopic: string
  readonly heads: UpdateHeads
  readonly sinks = new Set<JobSink>()
  refs = 0
  /** The newest payload seen on the channel while watched: the snapshot of jobs whose
   * producers only PUBLISH, and the tie-breaker against a stored state read mid-stream. */
  lastPayload: JobPayload | null = null
  lastSeq: number | undefined = undefined
  live = false
  waiters: Array<{ resolve: () => void; reject: (err: Error) => void }> = []
  releaseTimer: NodeJS.Timeout | null = null

  constructor(readonly id: string, channelPrefix: string) {
    this.channel = channelFor(channelPrefix, id)
    this.jsonTopic = topicFor('json', id)
    this.msgpackTopic = topicFor('msgpack', id)
    this.heads = updateHeads(id)
  }
}

export interface WatchedJobsOptions {
  readonly mode: SubscriptionMode
  readonly channelPrefix: string
  readonly unsubscribeDelayMs: number
}

export class WatchedJobs {
  private readonly jobs = new Map<string, WatchedJob>()
  private toSubscribe = new Set<WatchedJob>()
  private toUnsubscribe = new Set<string>()
  private flushScheduled = false
  private patternLive = false
  private disposed = false

  constructor(
    private readonly broker: Broker,
    private readonly options: WatchedJobsOptions,
    private readonly log: Logger,
  ) {}

  get size(): number {
    return this.jobs.size
  }

  get(jobId: string): WatchedJob | undefined {
    return this.jobs.get(jobId)
  }

  values(): IterableIterator<WatchedJob> {
    return this.jobs.values()
  }

  acquire(jobId: string): WatchedJob {
    let job = this.jobs.get(jobId)
    if (job === undefined) {
      job = new WatchedJob(jobId, this.options.channelPrefix)
      this.jobs.set(jobId, job)
      if (this.options.mode === 'pattern') {
        job.live = this.patternLive
      } else {
        this.toUnsubscribe.delete(job.channel)
        this.toSubscribe.add(job)
        this.scheduleFlush()
      }
    }
    if (job.releaseTimer !== null) {
      clearTimeout(job.releaseTimer)
      job.releaseTimer = null
    }
    job.refs++
    return job
  }

  release(job: WatchedJob): void {
    if (job.refs <= 0) {
      this.log.error({ job: job.id }, 'watched job released more often than acquired')
      return
    }
    if (--job.refs > 0 || this.disposed) return
    job.releaseTimer = setTimeout(() => {
      job.releaseTimer = null
      if (job.refs > 0 || this.jobs.get(job.id) !== job) return
      this.jobs.delete(job.id)
      this.fail(job, new Error('job no longer watched'))
      if (this.options.mode === 'per-job') {
        this.toSubscribe.delete(job)
        this.toUnsubscribe.add(job.channel)
        this.scheduleFlush()
      }
    }, this.options.unsubscribeDelayMs)
    job.releaseTimer.unref()
  }

  /** Resolves once messages for the job are flowing from the broker. */
  whenLive(job: WatchedJob): Promise<void> {
    if (job.live) return Promise.resolve()
    return new Promise((resolve, reject) => job.waiters.push({ resolve, reject }))
  }

  /** Pattern mode: the node-wide PSUBSCRIBE is live (or not). */
  setPatternLive(live: boolean): void {
    this.patternLive = live
    for (const job of this.jobs.values()) live ? this.markLive(job) : (job.live = false)
  }

  /** The broker connection is down: no job receives messages until it is restored. */
  markAllDown(): void {
    for (const job of this.jobs.values()) job.live = false
  }

  /** The broker restored every subscription after an outage. */
  markAllLive(): void {
    // A job whose SUBSCRIBE has not been sent yet was not part of the replay.
    for (const job of this.jobs.values()) if (!this.toSubscribe.has(job)) this.markLive(job)
  }

  dispose(): void {
    this.disposed = true
    for (const job of this.jobs.values()) {
      if (job.releaseTimer !== null) clearTimeout(job.releaseTimer)
      this.fail(job, new Error('gateway stopping'))
    }
    this.jobs.clear()
  }

  private markLive(job: WatchedJob): void {
    job.live = true
    const waiters = job.waiters
    job.waiters = []
    for (const w of waiters) w.resolve()
  }

  private fail(job: WatchedJob, err: Error): void {
    const waiters = job.waiters
    job.waiters = []
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
      this.broker.subscribe(subscribe.map((job) => job.channel)).then(
        () => {
          for (const job of subscribe) if (this.jobs.get(job.id) === job) this.markLive(job)
        },
        (err: Error) => {
          // The broker replays its channel set when it reconnects, which marks these live.
          this.log.warn({ channels: subscribe.length, err: err.message }, 'broker subscribe failed')
          for (const job of subscribe) this.fail(job, err)
        },
      )
    }
  }
}
