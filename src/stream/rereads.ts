// A job without a stored state (its producers only PUBLISH) is answered from what this process
// saw on its channel, else from what another gateway recorded (`seen`), else null. A socket
// that subscribes here right after updates published while only another process watched the
// job gets the record as it was then: that process writes the latest payload within 250 ms
// (recorder.ts), but nothing tells this one. So a subscribe answered from a record or from
// nothing is followed by one re-read, about a second later (RE_READ_MS), coalesced per job:
// every subscribe meanwhile moves it on (up to twice RE_READ_MS after the first), and one read
// serves them all. Its result is sent as a
// job_status (reason `resync`) only when it differs from what a watcher was answered and the
// channel has delivered nothing since (what it delivers reaches the watchers anyway, and is
// newer). So every socket reaches the latest state within about a second, with nothing more
// published.

import type { JobPayload } from '../wire/protocol.js'
import type { Fanout } from './fanout.js'
import type { SnapshotReader } from './snapshot.js'
import type { WatchedJob, WatchedJobs } from './watched-jobs.js'

export const RE_READ_MS = 1000

interface Due {
  at: number
  /** The latest `at` may be moved to: a watcher that subscribes again and again must not put
   * off everyone's re-read for ever. */
  readonly deadline: number
  timer: NodeJS.Timeout
  /** What watchers were answered since the re-read was scheduled, as JSON. */
  readonly answered: Set<string>
  /** The job's seenCount at the last answer. */
  seenCount: number
}

export class Rereads {
  private readonly due = new Map<WatchedJob, Due>()
  private stopped = false

  constructor(
    private readonly watched: Pick<WatchedJobs, 'get'>,
    private readonly snapshots: Pick<SnapshotReader, 'read'>,
    private readonly fanout: Pick<Fanout, 'status'>,
    private readonly delayMs = RE_READ_MS,
  ) {}

  /** A watcher of the job was answered `data`, which came from a record or from nothing. */
  schedule(job: WatchedJob, data: JobPayload | null): void {
    if (this.stopped) return
    const at = Date.now() + this.delayMs
    let due = this.due.get(job)
    if (due === undefined) {
      due = { at, deadline: at + this.delayMs, timer: this.arm(job, this.delayMs), answered: new Set(), seenCount: job.seenCount }
      this.due.set(job, due)
    }
    due.at = Math.min(at, due.deadline)
    due.seenCount = job.seenCount
    due.answered.add(JSON.stringify(data))
  }

  stop(): void {
    this.stopped = true
    for (const due of this.due.values()) clearTimeout(due.timer)
    this.due.clear()
  }

  private arm(job: WatchedJob, ms: number): NodeJS.Timeout {
    const timer = setTimeout(() => this.fire(job), ms)
    timer.unref()
    return timer
  }

  private fire(job: WatchedJob): void {
    const due = this.due.get(job)
    if (due === undefined) return
    const wait = due.at - Date.now()
    if (wait > 0) {
      due.timer = this.arm(job, wait)
      return
    }
    this.due.delete(job)
    if (this.watched.get(job.id) !== job) return
    this.snapshots.read(job.id).then((snapshot) => {
      if (this.stopped || this.watched.get(job.id) !== job || job.reauthorizing) return
      if (job.seenCount !== due.seenCount || snapshot.data === null) return
      const text = JSON.stringify(snapshot.data)
      if (due.answered.size === 1 && due.answered.has(text)) return
      this.fanout.status(job, snapshot.data, 'resync', snapshot.stalled === true)
    }, () => {
      // The broker is unreachable: its return resynchronises every watcher (resync.ts).
    })
  }
}
