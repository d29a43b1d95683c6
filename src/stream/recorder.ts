// Jobs whose producers only PUBLISH (Celery-style workers, the seed's code) have no stored
// state: their snapshot is whatever the channel last carried. A gateway process that was not
// watching the job when that was published has nothing to show a late subscriber, so with
// several workers or nodes the answer depended on where a socket landed. Each process therefore
// records the latest payload of such jobs in Redis (Broker.recordSeen), coalesced per job to at
// most one write per FLUSH_MS, under a lease so that one process per job writes and a stale
// write never replaces a newer one (see src/broker/record-seen.lua).

import { randomBytes } from 'node:crypto'
import type { Broker } from '../broker/broker.js'
import type { Logger } from '../support/log.js'
import type { Metrics } from '../support/metrics.js'
import type { WatchedJob } from './watched-jobs.js'

const FLUSH_MS = 250

export class Recorder {
  /** Unique per gateway process: the lease holder's name. */
  private readonly id = `${process.pid}-${randomBytes(6).toString('hex')}`
  private dirty = new Set<WatchedJob>()
  private readonly timer: NodeJS.Timeout

  constructor(private readonly broker: Broker, private readonly metrics: Metrics, private readonly log: Logger) {
    this.timer = setInterval(() => this.flush(), FLUSH_MS)
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
    const entries = []
    for (const job of jobs) if (job.lastPayload !== null) entries.push({ jobId: job.id, json: JSON.stringify(job.lastPayload) })
    this.metrics.seenRecords += entries.length
    this.broker.recordSeen(entries, this.id).catch((err: Error) => {
      this.log.warn({ jobs: entries.length, err: err.message }, 'recording PUBLISH-only job states failed; retrying with the next update')
    })
  }
}
