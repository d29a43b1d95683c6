// Jobs whose producers only PUBLISH (Celery-style workers, the seed's code) have no stored
// state: their snapshot is whatever the channel last carried. A gateway process that was not
// watching the job when that was published has nothing to show a late subscriber, so with
// several workers or nodes the answer depended on where a socket landed. Each process therefore
// records the latest payload of such jobs in Redis (Broker.recordSeen), coalesced per job to at
// most one write per FLUSH_MS, under a lease so that one process per job writes and a stale
// write never replaces a newer one (see src/broker/record-seen.lua).
//
// A process refused a job's lease stops trying for half the lease: otherwise every process
// watching the job made its own write attempt every FLUSH_MS (three nodes: three times the
// script calls for the one write that counts; make bench, nodes-publish). Should the holder
// stop watching, its lease lapses and another process takes over within one lease and a half.

import { randomBytes } from 'node:crypto'
import { RECORDER_LEASE_MS, type Broker } from '../broker/broker.js'
import type { Logger } from '../support/log.js'
import type { Metrics } from '../support/metrics.js'
import type { WatchedJob } from './watched-jobs.js'

const FLUSH_MS = 250

export interface RecorderTiming {
  readonly flushMs: number
  /** How long a process refused a job's lease leaves the job alone. */
  readonly refusedPauseMs: number
}

const TIMING: RecorderTiming = { flushMs: FLUSH_MS, refusedPauseMs: RECORDER_LEASE_MS / 2 }

export class Recorder {
  /** Unique per gateway process: the lease holder's name. */
  private readonly id = `${process.pid}-${randomBytes(6).toString('hex')}`
  private dirty = new Set<WatchedJob>()
  /** Jobs another process records, and until when this one leaves them alone. */
  private readonly refusedUntil = new WeakMap<WatchedJob, number>()
  private readonly timer: NodeJS.Timeout

  constructor(private readonly broker: Broker, private readonly metrics: Metrics, private readonly log: Logger, private readonly timing: RecorderTiming = TIMING) {
    this.timer = setInterval(() => this.flush(), timing.flushMs)
    this.timer.unref()
  }

  /** HOT PATH: the job's newest payload (job.lastPayload) has no seq: write it at the next flush. */
  note(job: WatchedJob): void {
    this.dirty.add(job)
  }

  stop(): void {
    clearInterval(this.timer)
  }

  private flush(): void {
    if (this.dirty.size === 0 || this.broker.state !== 'ready') return
    const jobs = this.dirty
    this.dirty = new Set()
    const now = Date.now()
    const sent: WatchedJob[] = []
    const entries = []
    for (const job of jobs) {
      if (job.lastPayload === null || (this.refusedUntil.get(job) ?? 0) > now) continue
      sent.push(job)
      entries.push({ jobId: job.id, json: JSON.stringify(job.lastPayload) })
    }
    if (entries.length === 0) return
    this.metrics.seenRecords += entries.length
    this.broker.recordSeen(entries, this.id).then((written) => {
      const until = Date.now() + this.timing.refusedPauseMs
      written.forEach((ok, i) => ok ? this.refusedUntil.delete(sent[i]!) : this.refusedUntil.set(sent[i]!, until))
    }, (err: Error) => {
      this.log.warn({ jobs: entries.length, err: err.message }, 'recording PUBLISH-only job states failed; retrying with the next update')
    })
  }
}
