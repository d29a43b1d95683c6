// Redis can lose writes without losing a job's key: a failover to a replica that lacked the
// last writes, or a restored copy. The producer script then counts seq on from the older state
// in the same epoch, and (epoch, seq) pairs that already named other states name new ones: a
// client holding "completed" at seq 10 would be shown "processing" at seq 9 or 11 of the same
// history. The gateway notices (a frame or a stored state behind what the channel delivered
// before, or a non-terminal state after a terminal one of the same epoch; watched-jobs.ts and
// snapshot.ts) and begins a new epoch on the stored record (Broker.newEpoch, a compare-and-set
// on the (epoch, seq) it found), so everything written from then on is a visibly new history.
// The record's state is published with the new epoch, which moves every gateway and client to it.

import type { Broker } from '../broker/broker.js'
import { rateLimitedLog, type Logger } from '../support/log.js'
import type { Metrics } from '../support/metrics.js'
import { decodePayload, MalformedPayload } from '../wire/payload.js'

/** A client's word (its `since`) may begin a new epoch on a job at most this often: it is a
 * claim, not evidence. Anyone allowed to read a job can send one, and each new epoch is a
 * write to the job's record and a frame to every watcher (an attacker's pass measured 94 new
 * epochs a second on one job from ten sockets before this bound). */
export const CLAIM_COOLDOWN_MS = 60_000
/** Jobs remembered for the cooldown at most; past it, entries whose cooldown ended go. */
const MAX_CLAIMED_JOBS = 10_000

export class Losses {
  /** Jobs whose new epoch is on its way: one script call per job at a time. */
  private readonly pending = new Set<string>()
  /** Jobs whose record is being read to tell a loss from a frame that overtook a read. */
  private readonly verifying = new Set<string>()
  /** Jobs a client's `since` last made us act on, and when. */
  private readonly claimed = new Map<string, number>()
  private readonly warn: (fields: Record<string, unknown>, msg: string) => void

  constructor(private readonly broker: Broker, private readonly metrics: Metrics, private readonly log: Logger) {
    this.warn = rateLimitedLog(log)
  }

  /** The job's stored record is at (epoch, seq), behind what this gateway saw of that epoch. */
  readonly report = (jobId: string, epoch: number, seq: number, claim = false): void => {
    if (this.pending.has(jobId)) return
    this.pending.add(jobId)
    if (claim) this.metrics.historyLossClaims++
    else this.metrics.historyLosses++
    this.warn({ job: jobId, epoch, seq, evidence: claim ? 'a client\'s since' : 'this gateway' }, 'redis lost writes to this job (its state went back within one epoch); beginning a new epoch')
    this.broker.newEpoch(jobId, epoch, seq).then(
      (next) => this.log.info({ job: jobId, epoch: next }, next === null ? 'the job moved on before its new epoch began' : 'new epoch begun after lost writes'),
      (err: Error) => this.log.warn({ job: jobId, err: err.message }, 'could not begin a new epoch after lost writes; the next one noticed tries again'),
    ).finally(() => this.pending.delete(jobId))
  }

  /** Something says the job's record held (epoch, seq) or newer in that epoch (a read before a
   * frame that is below it, or a client's `since` the server is behind): read the record, and
   * if it is behind that within the epoch, it lost writes. */
  readonly verify = (jobId: string, epoch: number, seq: number, claim = false): void => {
    if (this.verifying.has(jobId) || this.pending.has(jobId)) return
    this.verifying.add(jobId)
    this.broker.readJobs([jobId]).then(([record]) => {
      const state = record?.state ? decodePayload(record.state) : null
      if (state === null || state instanceof MalformedPayload || state.epoch !== epoch || state.seq === undefined || state.seq >= seq) return
      this.report(jobId, epoch, state.seq, claim)
    }, (err: Error) => this.log.debug({ job: jobId, err: err.message }, 'could not read a job to tell whether it lost writes')).finally(() => this.verifying.delete(jobId))
  }

  /** A client says it holds (epoch, seq) of the job, ahead of what the server answered (its
   * `since`): a gateway that restarted after Redis lost writes knows it only this way. Acted
   * on at most once per job per CLAIM_COOLDOWN_MS, and counted apart from what the gateway saw
   * itself (history_loss_claims_total), so a client cannot make it write at will. */
  readonly verifyClaim = (jobId: string, epoch: number, seq: number): void => {
    const now = Date.now()
    const last = this.claimed.get(jobId)
    if (last !== undefined && now - last < CLAIM_COOLDOWN_MS) return
    if (this.claimed.size >= MAX_CLAIMED_JOBS) {
      for (const [job, at] of this.claimed) if (now - at >= CLAIM_COOLDOWN_MS) this.claimed.delete(job)
      if (this.claimed.size >= MAX_CLAIMED_JOBS) return
    }
    this.claimed.set(jobId, now)
    this.verify(jobId, epoch, seq, true)
  }
}
