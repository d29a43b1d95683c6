// After a broker outage messages may have been missed: every watched job's watchers get a
// fresh job_status, through the same fan-out as updates. Snapshots are read in batches, each
// retried with backoff until it succeeds, the gateway stops, or a newer outage starts its own
// run.

import { backoff } from '../support/backoff.js'
import type { Logger } from '../support/log.js'
import type { Metrics } from '../support/metrics.js'
import type { Fanout } from './fanout.js'
import type { SnapshotReader } from './snapshot.js'
import type { WatchedJob, WatchedJobs } from './watched-jobs.js'

/** Snapshots read per broker round trip. */
const BATCH = 500
const RETRY_MIN_MS = 250
const RETRY_MAX_MS = 2000

export class Resync {
  private run = 0
  private stopped = false

  constructor(
    private readonly watched: WatchedJobs,
    private readonly snapshots: SnapshotReader,
    private readonly fanout: Fanout,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    /** With access control on: checks a job's watchers again when its generation changes. */
    private readonly onNewGeneration: ((job: WatchedJob) => void) | null,
  ) {}

  /** Starts a run; an earlier one still retrying gives way. */
  async start(): Promise<void> {
    const run = ++this.run
    const jobIds = [...this.watched.values()].map((job) => job.id)
    this.metrics.resyncs++
    for (let i = 0; i < jobIds.length; i += BATCH) {
      const batch = jobIds.slice(i, i + BATCH)
      for (let attempt = 0; ; attempt++) {
        if (run !== this.run || this.stopped) return
        try {
          const snapshots = await this.snapshots.readBatch(batch)
          batch.forEach((jobId, k) => {
            const job = this.watched.get(jobId)
            if (job === undefined) return
            const { data, stalled } = snapshots[k]!
            const epoch = data?.epoch
            // A new generation while we were away: its watchers are checked first.
            if (this.onNewGeneration !== null && typeof epoch === 'number' && job.generation !== undefined && epoch !== job.generation) {
              job.generation = epoch
              job.reauthorizing = true
              return this.onNewGeneration(job)
            }
            if (typeof epoch === 'number') job.generation = epoch
            // Its watchers are being checked: the job_status follows that check, not before it.
            if (job.reauthorizing) return
            this.fanout.status(job, data, 'resync', stalled === true)
          })
          break
        } catch (err) {
          this.log.warn({ attempt, jobs: batch.length, err: (err as Error).message }, 'resync snapshot read failed; retrying')
          await new Promise((resolve) => setTimeout(resolve, RETRY_MIN_MS + backoff(attempt, RETRY_MIN_MS, RETRY_MAX_MS)))
        }
      }
    }
    this.log.info({ jobs: jobIds.length }, 'resynchronised watchers after broker outage')
  }

  stop(): void {
    this.stopped = true
  }
}
