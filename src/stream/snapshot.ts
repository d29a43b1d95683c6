// A job's snapshot: what job_status, GET /jobs/<id> and SSE report as its current state.
// The stored state (written by the producer script) is read only after the job's channel is
// live, so nothing published later can be missing from snapshot + stream. Whatever the
// channel delivered since then is compared by (epoch, seq), so a stored state read a moment
// before a newer message arrived does not win over it, and a new generation of the job (the
// key expired, or Redis lost it and the producer began again) wins over an old one. Jobs whose producers only PUBLISH have no stored
// state: their snapshot is the last payload this node saw while watching them, or null.
//
// Reads are coalesced: every read asked for in one event-loop turn goes to the broker as one
// round trip (one command for a single Redis: src/broker/read-jobs.lua), and a watcher's read
// asked for while one of the same job is on its way joins it. So a reconnect storm of
// thousands of subscribes to a job costs a few reads, not one per socket, when the broker is
// slow to answer. Only a watcher joins, and only a read that left during the same watch of the
// job (not one before it was released and watched again) while its channel was live, with no
// outage since; the snapshot is chosen when that read lands, against everything the channel
// delivered to that watch until then (chooseSnapshot), and the watcher joins the stream in the
// same step (watch.ts), so it misses nothing published after the read left.

import type { Broker, JobRecord } from '../broker/broker.js'
import { UnsupportedJob, type SourceRoutes } from '../sources/router.js'
import type { JobSource } from '../sources/source.js'
import { backoff } from '../support/backoff.js'
import { withDeadline } from '../support/deadline.js'
import type { Logger } from '../support/log.js'
import type { Metrics } from '../support/metrics.js'
import { decodePayload, MalformedPayload, type DecodedPayload } from '../wire/payload.js'
import type { JobPayload } from '../wire/protocol.js'
import { stalledIn } from './stalls.js'
import type { WatchedJob, WatchedJobs } from './watched-jobs.js'

/** Where a snapshot's state came from: the stored state (the producer script's), what this
 * process saw on the channel, what another gateway recorded of a PUBLISH-only job (`seen`),
 * or nothing. */
export type SnapshotOrigin = 'stored' | 'live' | 'recorded' | 'none'

export interface Snapshot {
  readonly data: JobPayload | null
  readonly owner: string | null
  /** The job is flagged as stalled in this very state (stalls.ts): sent beside `data`. */
  readonly stalled?: boolean
  readonly from?: SnapshotOrigin
}

/** Told when a stored state contradicts what the channel delivered before the read left: Redis
 * lost writes, and the stored record at (epoch, seq) should begin a new epoch (losses.ts). */
export type LossListener = (jobId: string, epoch: number, seq: number) => void

export async function readSnapshots(
  broker: Broker,
  watched: WatchedJobs,
  jobIds: readonly string[],
  log: Logger,
  sources?: SourceRoutes,
  onLoss?: LossListener,
): Promise<Snapshot[]> {
  const fromSource: boolean[] = []
  // What each job's channel had delivered when the read left: anything after it may be newer.
  const seenBefore = jobIds.map((id) => watched.get(id)?.seenCount)
  const records = await readRecords(broker, jobIds, sources, fromSource)
  return records.map((record, i) => {
    const snapshot = chooseSnapshot(record, jobIds[i]!, fromSource[i] === true, watched, log, seenBefore[i], onLoss)
    const job = watched.get(jobIds[i]!)
    // Remembered: a frame that contradicts it later tells of lost writes (watched-jobs.ts).
    if (job !== undefined && snapshot.from === 'stored' && fromSource[i] !== true) job.noteStored(snapshot.data!)
    // A job flagged as stalled is still stalled in the state it was flagged in (stalls.ts).
    if (job !== undefined && snapshot.data !== null && stalledIn(job, snapshot.data)) return { ...snapshot, stalled: true }
    return snapshot
  })
}

/** The broker's records, and those of source jobs from their sources (in parallel), in the
 * order asked for; `fromSource[i]` says which is which. */
async function readRecords(broker: Broker, jobIds: readonly string[], sources: SourceRoutes | undefined, fromSource: boolean[]): Promise<JobRecord[]> {
  const routes = sources === undefined ? [] : jobIds.map((id) => sources.route(id))
  if (!routes.some((route) => route !== null)) return broker.readJobs(jobIds)
  const out: JobRecord[] = new Array(jobIds.length)
  const groups = new Map<JobSource | null, number[]>()
  routes.forEach((route, i) => {
    if (route instanceof UnsupportedJob) {
      out[i] = { state: route.state, owner: null, seen: null }
      return
    }
    fromSource[i] = route !== null
    const group = groups.get(route)
    if (group === undefined) groups.set(route, [i])
    else group.push(i)
  })
  await Promise.all([...groups].map(async ([source, indices]) => {
    const ids = indices.map((i) => jobIds[i]!)
    if (source === null) {
      const records = await broker.readJobs(ids)
      indices.forEach((i, k) => (out[i] = records[k]!))
    } else {
      const records = await source.read(ids)
      indices.forEach((i, k) => (out[i] = { state: records[k]!.state, owner: records[k]!.owner, seen: null }))
    }
  }))
  return out
}

function chooseSnapshot(record: JobRecord, jobId: string, fromSource: boolean, watched: WatchedJobs, log: Logger, seenBefore: number | undefined, onLoss: LossListener | undefined): Snapshot {
  let stored: DecodedPayload | null = null
  if (record.state !== null) {
    const decoded = decodePayload(record.state)
    if (decoded instanceof MalformedPayload) {
      log.warn({ job: jobId, reason: decoded.reason }, 'stored job state is malformed; ignoring it')
    } else {
      stored = decoded
    }
  }
  const job = watched.get(jobId)
  const seen = job?.lastPayload ?? null
  const owner = record.owner
  // A PUBLISH-only job: what this process saw, or else what another one recorded.
  if (stored === null) {
    if (seen !== null) return { data: seen, owner, from: 'live' }
    const data = recorded(record.seen, jobId, log)
    return { data, owner, from: data === null ? 'none' : 'recorded' }
  }
  if (seen === null || job!.lastSeq === undefined) {
    // The broker came back without what the channel had delivered of this epoch (a failover
    // to a replica that lacked the last writes): show what was delivered, begin a new epoch.
    const before = job?.forgotten ?? null
    if (!fromSource && before !== null && stored.seq !== undefined && job!.contradicts(stored.epoch, stored.seq, stored.obj.status, false)) {
      onLoss?.(jobId, stored.epoch!, stored.seq)
      return { data: before, owner, from: 'live' }
    }
    return { data: stored.obj, owner, from: 'stored' }
  }
  // Epochs are compared for equality only. Another epoch is another history, and the current
  // one is where it came from: the stored record, unless the channel delivered the other one
  // after the read left (then it is the latest frame, and sending it loses nothing: any later
  // history arrives as frames after it).
  const arrivedSince = seenBefore === undefined || job!.seenCount !== seenBefore
  if (job!.lastEpoch !== stored.epoch) return arrivedSince ? { data: seen, owner, from: 'live' } : { data: stored.obj, owner, from: 'stored' }
  // A source's stored state is numbered as the last payload delivered and is never newer than
  // it once delivered (src/sources/): on a tie, what was seen wins.
  const order = job!.lastSeq - (stored.seq ?? 0)
  if (fromSource ? order >= 0 : order > 0) {
    // The record went back behind what its channel had delivered before the read left.
    if (!fromSource && !arrivedSince && stored.epoch !== undefined && stored.seq !== undefined) onLoss?.(jobId, stored.epoch, stored.seq)
    return { data: seen, owner, from: 'live' }
  }
  // A non-terminal state after a terminal one of the same epoch is no newer evidence: the
  // producer script refuses it, so the record was restored from a copy that lacked the end.
  if (!fromSource && order < 0 && job!.contradicts(stored.epoch, stored.seq!, stored.obj.status, false)) {
    if (!arrivedSince) onLoss?.(jobId, stored.epoch!, stored.seq!)
    return { data: seen, owner, from: 'live' }
  }
  return { data: stored.obj, owner, from: 'stored' }
}

function recorded(seen: Buffer | null, jobId: string, log: Logger): JobPayload | null {
  if (seen === null) return null
  const decoded = decodePayload(seen)
  if (!(decoded instanceof MalformedPayload)) return decoded.obj
  log.warn({ job: jobId, reason: decoded.reason }, 'recorded job state is malformed; ignoring it')
  return null
}

/** Jobs per broker round trip. */
const BATCH = 500
const RETRY_MIN_MS = 100
const RETRY_MAX_MS = 2000

interface Waiter {
  resolve(s: Snapshot): void
  reject(e: Error): void
}

export class SnapshotReader {
  /** Reads asked for in this turn, not yet sent. */
  private queued = new Map<string, Waiter[]>()
  /** Reads on their way to the broker that a watcher may join until they land: each left
   * while its job was live, for this very watch of it (`job`), with WatchedJobs' liveBreaks
   * then at `breaks`. */
  private readonly inFlight = new Map<string, { readonly job: WatchedJob; readonly breaks: number; readonly waiters: Waiter[] }>()
  private scheduled = false

  constructor(
    private readonly broker: Broker,
    private readonly watched: WatchedJobs,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    private readonly timeoutMs: number,
    /** How long a new watcher waits out a broker outage before giving up. */
    private readonly holdMs: number,
    /** Where source jobs (`celery:`, `bullmq:`) are read from. */
    private readonly sources?: SourceRoutes,
    private readonly onLoss?: LossListener,
  ) {}

  /** One job's snapshot, read with whatever else is asked for in this event-loop turn. */
  read(jobId: string): Promise<Snapshot> {
    return this.request(jobId, null)
  }

  /** `watch`: the job a watcher reads for, so a read of it already on its way will do, if
   * that read left during this watch of the job and it has been live since. A one-off read
   * (GET /jobs/<id>) must see what was stored before it was asked for: it never joins. */
  private request(jobId: string, watch: WatchedJob | null): Promise<Snapshot> {
    return new Promise((resolve, reject) => {
      const flying = watch === null ? undefined : this.inFlight.get(jobId)
      const joinable = flying !== undefined && flying.job === watch && flying.breaks === this.watched.liveBreaks && this.watched.isLive(watch)
      const waiters = (joinable ? flying.waiters : undefined) ?? this.queued.get(jobId)
      if (waiters) return void waiters.push({ resolve, reject })
      this.queued.set(jobId, [{ resolve, reject }])
      if (!this.scheduled) {
        this.scheduled = true
        setImmediate(() => this.flush())
      }
    })
  }

  /** The snapshot a new watcher starts from: read only once the job's channel is live, so
   * nothing published later can be missing from snapshot + stream. A watcher that arrives
   * during a broker outage is held (up to holdMs) and completes when the broker returns: the
   * channel goes live when the subscriptions are replayed, and a failed read is retried. */
  async readLive(job: WatchedJob): Promise<Snapshot> {
    const deadline = Date.now() + this.holdMs
    for (let attempt = 0; ; attempt++) {
      await withDeadline(this.watched.whenLive(job), Math.max(1, deadline - Date.now()), 'broker subscription')
      try {
        return await this.request(job.id, job)
      } catch (err) {
        const wait = RETRY_MIN_MS + backoff(attempt, RETRY_MIN_MS, RETRY_MAX_MS)
        if (Date.now() + wait >= deadline) throw err
        await new Promise((resolve) => setTimeout(resolve, wait))
      }
    }
  }

  /** Snapshots of several jobs in one round trip (the resync after an outage, in batches). */
  readBatch(jobIds: readonly string[]): Promise<Snapshot[]> {
    return this.fetch(jobIds)
  }

  private flush(): void {
    this.scheduled = false
    const queued = this.queued
    this.queued = new Map()
    // Joinable only where the read leaves after the job's channel went live: a read issued
    // before would miss what was published in between.
    for (const [id, waiters] of queued) {
      const job = this.watched.get(id)
      if (job !== undefined && this.watched.isLive(job)) this.inFlight.set(id, { job, breaks: this.watched.liveBreaks, waiters })
    }
    const ids = [...queued.keys()]
    for (let i = 0; i < ids.length; i += BATCH) {
      const batch = ids.slice(i, i + BATCH)
      this.fetch(batch).then(
        (snapshots) => batch.forEach((id, k) => { for (const w of this.landed(id, queued)) w.resolve(snapshots[k]!) }),
        (err: Error) => { for (const id of batch) for (const w of this.landed(id, queued)) w.reject(err) },
      )
    }
  }

  /** A job's waiters once its read has landed; later reads of it start a new one. */
  private landed(jobId: string, sent: Map<string, Waiter[]>): Waiter[] {
    const waiters = sent.get(jobId)!
    if (this.inFlight.get(jobId)?.waiters === waiters) this.inFlight.delete(jobId)
    return waiters
  }

  private async fetch(jobIds: readonly string[]): Promise<Snapshot[]> {
    this.metrics.snapshotReads += jobIds.length
    try {
      return await withDeadline(readSnapshots(this.broker, this.watched, jobIds, this.log, this.sources, this.onLoss), this.timeoutMs, 'snapshot read')
    } catch (err) {
      this.metrics.snapshotFailures += jobIds.length
      throw err
    }
  }
}
