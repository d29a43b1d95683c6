// Stall detection, for every job whatever its source: a watched job whose latest state is
// `processing` and that then stays silent for longer than its stall time (--stall-after, or
// the `stall_after` seconds its producer put in a payload) is flagged to its watchers: a
// job_status (reason `stalled`) with its latest state, and `stalled: true` beside it in the
// envelope: the producer's state is never altered, so one (epoch, seq) names one content. Its
// next update clears the flag. A snapshot of a flagged job carries the flag too (snapshot.ts).
//
// One timer per watched job on the node, not per watcher, armed only while the job is
// processing. A message of a job already being timed costs one pointer write (no clock read, no
// timer moved): the timer ticks every quarter of the stall time and compares the job's latest
// state with the one it saw at the previous tick. So a job is flagged between its stall time and
// a quarter more after its last update.

import type { JobPayload } from '../wire/protocol.js'
import type { WatchedJob } from './watched-jobs.js'

/** One job's clock; lives on its WatchedJob. */
export interface StallClock {
  timer: NodeJS.Timeout | null
  /** The job's own stall time in ms (its producer's `stall_after`), if it gave one. */
  ownMs: number | undefined
  /** That `stall_after` as given, in seconds. */
  ownAfter: number | undefined
  /** Since when the job has been silent (to within a tick). */
  quietSince: number
  /** The job's latest state: the one whose silence is measured. */
  state: JobPayload | null
  /** `state` as the previous tick saw it: another one since means the job spoke. */
  tickState: JobPayload | null
  /** Flagged to the watchers as stalled, and not updated since. */
  flagged: boolean
}

export class Stalls {
  constructor(
    /** --stall-after in ms; 0: only jobs whose payloads say `stall_after`. */
    private readonly defaultMs: number,
    /** Sends the flagged state to the job's watchers (a job_status through the fan-out, with
     * `stalled` beside the state). */
    private readonly flag: (job: WatchedJob, state: JobPayload) => void,
  ) {}

  /** HOT PATH: the channel delivered a payload for a watched job. */
  seen(job: WatchedJob, payload: JobPayload): void {
    const clock = job.stall
    const after = payload.stall_after
    // Still processing, timed already, with the same stall time (merged states repeat it): the
    // next tick notices that it spoke.
    if (clock !== null && clock.timer !== null && payload.status === 'processing' && (after === undefined || after === clock.ownAfter)) {
      clock.state = payload
      return
    }
    if (clock === null && payload.status !== 'processing' && typeof after !== 'number') return
    this.observe(job, payload, Date.now())
  }

  /** A snapshot read when a watcher arrived: a job that is already processing (and was not seen
   * by this node yet) starts its clock at its last report (`ts`) or now. */
  snapshot(job: WatchedJob, data: JobPayload | null): void {
    if (data === null || job.stall !== null || job.lastPayload !== null || data.status !== 'processing') return
    const ts = typeof data.ts === 'number' && data.ts <= Date.now() ? data.ts : Date.now()
    this.observe(job, data, ts)
  }

  /** The job is no longer watched (or its history was forgotten). */
  forget(job: WatchedJob): void {
    if (job.stall?.timer) clearTimeout(job.stall.timer)
    job.stall = null
  }

  private observe(job: WatchedJob, payload: JobPayload, at: number): void {
    const clock = job.stall ?? (job.stall = { timer: null, ownMs: undefined, ownAfter: undefined, quietSince: at, state: null, tickState: null, flagged: false })
    const after = payload.stall_after
    if (typeof after === 'number' && Number.isFinite(after) && after >= 0) {
      clock.ownMs = after * 1000
      clock.ownAfter = after
    }
    clock.flagged = false
    clock.state = payload
    clock.tickState = payload
    clock.quietSince = at
    const ms = clock.ownMs ?? this.defaultMs
    if (payload.status !== 'processing' || ms <= 0) {
      if (clock.timer !== null) clearTimeout(clock.timer)
      clock.timer = null
      return
    }
    if (clock.timer !== null) clearTimeout(clock.timer)
    this.arm(job, clock, Math.min(tickOf(ms), Math.max(0, at + ms - Date.now())))
  }

  private arm(job: WatchedJob, clock: StallClock, ms: number): void {
    clock.timer = setTimeout(() => this.check(job, clock), ms)
    clock.timer.unref()
  }

  private check(job: WatchedJob, clock: StallClock): void {
    clock.timer = null
    if (job.stall !== clock || clock.state === null || clock.state.status !== 'processing') return
    const ms = clock.ownMs ?? this.defaultMs
    if (ms <= 0) return
    const now = Date.now()
    if (clock.state !== clock.tickState) {
      // It spoke since the last tick: quiet since about now.
      clock.tickState = clock.state
      clock.quietSince = now
    } else if (now - clock.quietSince >= ms) {
      // Flagged once; the timer rests until the job's next update.
      clock.flagged = true
      return this.flag(job, clock.state)
    }
    this.arm(job, clock, Math.min(tickOf(ms), Math.max(0, clock.quietSince + ms - now)))
  }
}

/** A quarter of the stall time, and no busier than 20 ticks a second. */
function tickOf(ms: number): number {
  return Math.max(50, ms / 4)
}

/** Whether a snapshot of the job should carry the flag: it is flagged, and `data` is the state
 * it was flagged in (the same object, or the same epoch and seq). */
export function stalledIn(job: WatchedJob, data: JobPayload | null): boolean {
  const clock = job.stall
  if (clock === null || !clock.flagged || data === null || clock.state === null) return false
  return data === clock.state || (data.seq !== undefined && data.seq === clock.state.seq && data.epoch === clock.state.epoch)
}
