// When a job's generation changes (its state key was created again after it expired or Redis
// lost it, or an admin replaced its owner), the job may now belong to someone else: every
// watcher is checked against the owner read afresh before it sees anything of the new
// generation. Those who may no longer see it are told `forbidden` and stop receiving it; the
// rest get a job_status with the new state.
//
// Nothing is lost meanwhile: the bridge holds the newest frame that arrives during the check
// (bridge.ts), and it is sent after the job_status when it is newer than the state read. A
// failed owner read is retried with backoff for up to the outage hold; if it still fails, no
// one is told `forbidden` (nobody knows whose job it is): watchers who need the owner to see
// the job get a retryable `unavailable` and their subscription ends (the client subscribes
// again, and is checked then); those who see it whoever owns it (admins, a jobs claim) get a
// job_status of the newest state this node saw of the new generation.

import { canWatch } from '../access/auth.js'
import type { Connection, Connections } from '../access/connections.js'
import { backoff } from '../support/backoff.js'
import type { Logger } from '../support/log.js'
import type { Metrics } from '../support/metrics.js'
import { compareVersions, decodePayload, MalformedPayload, type DecodedPayload } from '../wire/payload.js'
import type { JobPayload } from '../wire/protocol.js'
import type { Fanout } from './fanout.js'
import type { Snapshot, SnapshotReader } from './snapshot.js'
import type { WatchedJob, WatchedJobs } from './watched-jobs.js'

const RETRY_MIN_MS = 100
const RETRY_MAX_MS = 2000

export interface ReauthorizerContext {
  readonly connections: Pick<Connections, 'all'>
  readonly snapshots: Pick<SnapshotReader, 'read'>
  readonly fanout: Pick<Fanout, 'status' | 'update'>
  readonly watched: Pick<WatchedJobs, 'get'>
  readonly metrics: Metrics
  readonly log: Logger
  /** How long a failing owner read is retried before watchers are told `unavailable`
   * (--outage-hold-ms). */
  readonly holdMs: number
}

export function createReauthorizer(ctx: ReauthorizerContext): (job: WatchedJob) => void {
  const { connections, snapshots, fanout, watched, metrics, log, holdMs } = ctx
  /** The latest check of each job: a generation that changes again during a check starts a
   * new one, which alone decides (the earlier owner may no longer be the owner). */
  const runs = new WeakMap<WatchedJob, number>()

  return (job) => {
    const run = (runs.get(job) ?? 0) + 1
    runs.set(job, run)
    void check(job, run)
  }

  /** Whether this check still decides: the latest of a job this process still watches. */
  function current(job: WatchedJob, run: number): boolean {
    return runs.get(job) === run && watched.get(job.id) === job
  }

  async function check(job: WatchedJob, run: number): Promise<void> {
    const deadline = Date.now() + holdMs
    let snapshot: Snapshot
    for (let attempt = 0; ; attempt++) {
      try {
        snapshot = await snapshots.read(job.id)
        break
      } catch (err) {
        if (!current(job, run)) return
        const wait = RETRY_MIN_MS + backoff(attempt, RETRY_MIN_MS, RETRY_MAX_MS)
        if (Date.now() + wait >= deadline) return unreadable(job, err as Error)
        log.info({ job: job.id, attempt, err: (err as Error).message }, 'new job generation: owner read failed; retrying')
        await new Promise((resolve) => setTimeout(resolve, wait))
        if (!current(job, run)) return
      }
    }
    if (!current(job, run)) return
    revokeWhere(job, (c) => !canWatch(c.principal, job.id, snapshot.owner), 'forbidden')
    const held = takeHeld(job)
    job.reauthorizing = false
    fanout.status(job, snapshot.data, 'new_generation', snapshot.stalled === true)
    if (held !== null && isNewer(held, snapshot.data)) fanout.update(job, held)
  }

  /** The owner stayed unreadable: nobody is refused as `forbidden`. */
  function unreadable(job: WatchedJob, err: Error): void {
    // What this node saw of the new generation (its newest payload: the held one, if any, is
    // the same) is what those who need no owner are shown; without it they must ask again too.
    const seen = job.generation !== undefined && job.lastEpoch === job.generation ? job.lastPayload : null
    log.warn({ job: job.id, err: err.message }, 'new job generation: owner unreadable; watchers who need it are told unavailable')
    revokeWhere(job, (c) => seen === null || !canWatch(c.principal, job.id, null), 'unavailable')
    job.held = null
    job.reauthorizing = false
    if (seen !== null) fanout.status(job, seen, 'new_generation')
  }

  function revokeWhere(job: WatchedJob, refused: (c: Connection) => boolean, reason: 'forbidden' | 'unavailable'): void {
    for (const c of connections.all()) {
      if (!c.watches(job.id) || !refused(c)) continue
      c.revoke(job.id, reason)
      metrics.countRefusal(c.transport, reason)
    }
  }
}

function takeHeld(job: WatchedJob): DecodedPayload | null {
  const bytes = job.held
  job.held = null
  if (bytes === null) return null
  const decoded = decodePayload(bytes)
  return decoded instanceof MalformedPayload ? null : decoded
}

/** Whether a payload held during the check is newer than the state the job_status sent. A
 * plain PUBLISH (no seq) is not in a stored state, and the stream would have delivered it:
 * it is sent after a snapshot that has a seq. Without one either, the snapshot is the newest
 * payload this node saw, which is the held one. Of another epoch, it is the latest frame:
 * sent (a history newer than it would arrive after it). */
function isNewer(held: DecodedPayload, data: JobPayload | null): boolean {
  if (data === null) return true
  const seq = Number.isSafeInteger(data.seq) ? data.seq : undefined
  const epoch = Number.isSafeInteger(data.epoch) ? data.epoch : undefined
  if (held.seq === undefined) return seq !== undefined
  const order = compareVersions(held.epoch, held.seq, epoch, seq)
  return order === null || order > 0
}
