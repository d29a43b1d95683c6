// What a gateway stores of payloads that arrive without seq (plain PUBLISHes, which nothing
// stored). Two cases:
//
// - Jobs whose producers only PUBLISH (Celery-style workers, the seed's code) have no stored
//   state: their snapshot is whatever the channel last carried. A process that was not
//   watching the job when that was published has nothing to show a late subscriber, so each
//   process records the latest payload in Redis (Broker.recordSeen, record-seen.lua), under a
//   lease so that one process per job writes and a stale write never replaces a newer one.
//   Writes are coalesced per job to the trailing edge of a FLUSH_MS throttle, so the record is
//   at most FLUSH_MS behind; a final state (completed, failed, cancelled) is written at once.
//   A write that another process's lease refused, or that failed, is kept (the latest payload
//   only) and tried again with a bounded backoff until it lands or the job is no longer
//   watched here: a final state has no next update to carry it.
//
// - Jobs with a state stored by the producer script: a plain PUBLISH beside the script (a
//   worker's crash handler sending {"status":"failed"}) changes the stored truth only when it
//   is final. Then the gateway stores it through the producer script, merged into the stored
//   state, with if_seq = the stored seq it read, so that of all the gateways watching the job
//   exactly one applies it; the script publishes the resulting sequenced state as usual. A
//   non-final one is not stored; it is counted (jobwire_producer_unsequenced_total) and
//   logged, sampled.

import { randomBytes } from 'node:crypto'
import { RECORDER_LEASE_MS, type Broker, type SeenOutcome } from '../broker/broker.js'
import { FinalState, ProducerError, SeqMismatch } from '../producer/merge.js'
import { backoffCeiling } from '../support/backoff.js'
import { rateLimitedLog, type Logger } from '../support/log.js'
import type { Metrics } from '../support/metrics.js'
import { decodePayload, MalformedPayload } from '../wire/payload.js'
import { isTerminalStatus, type JobPayload } from '../wire/protocol.js'
import type { WatchedJob } from './watched-jobs.js'

const FLUSH_MS = 250

export interface RecorderTiming {
  /** The throttle: a job's latest payload is written at most this long after it arrived. */
  readonly flushMs: number
  /** The longest pause between two tries of a refused or failed write (the backoff's cap). */
  readonly retryMaxMs: number
}

// Capped at half the lease: a holder that stopped watching hands over within a lease and a
// half (broker.ts: 1 s + 0.5 s).
const TIMING: RecorderTiming = { flushMs: FLUSH_MS, retryMaxMs: RECORDER_LEASE_MS / 2 }

/** How often a final state's store through the producer script is tried when the job's seq
 * moves under it (another writer) before this gateway leaves it to them. */
const FINAL_CAS_TRIES = 5

/** The broker calls the recorder makes. */
export type RecorderBroker = Pick<Broker, 'state' | 'recordSeen' | 'readJobs' | 'publishProgress'>

interface Pending {
  /** The latest payload seen, to be recorded. */
  payload: JobPayload
  /** The payload of the write in flight, if any. */
  sending: JobPayload | null
  /** The payload another gateway (the lease holder) was found to have recorded: nothing to
   * write while it is still the latest. */
  recorded: JobPayload | null
  /** Failed or refused tries in a row (the backoff's exponent). */
  attempts: number
  /** Not tried again before this time (ms). */
  retryAt: number
}

export class Recorder {
  /** Unique per gateway process: the lease holder's name. */
  private readonly id = `${process.pid}-${randomBytes(6).toString('hex')}`
  /** PUBLISH-only jobs with a payload not recorded yet. */
  private readonly pending = new Map<WatchedJob, Pending>()
  /** Jobs whose final plain PUBLISH is being stored through the producer script. */
  private readonly finals = new Map<WatchedJob, JobPayload>()
  private readonly timer: NodeJS.Timeout
  private soon: NodeJS.Immediate | null = null
  private readonly warn: (fields: Record<string, unknown>, msg: string) => void
  private unsequencedLogged = 0

  constructor(
    private readonly broker: RecorderBroker,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    private readonly timing: RecorderTiming = TIMING,
    /** Whether the job is still watched by this process; a job that is not is let go. */
    private readonly watched: (job: WatchedJob) => boolean = () => true,
  ) {
    this.timer = setInterval(() => this.flush(), timing.flushMs)
    this.timer.unref()
    this.warn = rateLimitedLog(log)
  }

  /** HOT PATH: the job's newest payload (job.lastPayload) has no seq. */
  note(job: WatchedJob): void {
    const payload = job.lastPayload
    if (payload === null) return
    const final = isTerminalStatus(payload.status)
    // A generation is known only from a stored state (its epoch): the job has one.
    if (job.generation !== undefined) {
      if (final) this.storeFinal(job, payload, job.generation)
      else this.unsequenced(job)
      return
    }
    const entry = this.pending.get(job)
    if (entry === undefined) this.pending.set(job, { payload, sending: null, recorded: null, attempts: 0, retryAt: 0 })
    else {
      entry.payload = payload
      if (final) entry.retryAt = 0
    }
    if (final) this.flushSoon()
  }

  stop(): void {
    clearInterval(this.timer)
    if (this.soon !== null) clearImmediate(this.soon)
    this.pending.clear()
    this.finals.clear()
  }

  private flushSoon(): void {
    this.soon ??= setImmediate(() => {
      this.soon = null
      this.flush()
    })
  }

  private flush(): void {
    if (this.pending.size === 0 || this.broker.state !== 'ready') return
    const now = Date.now()
    const jobs: WatchedJob[] = []
    for (const [job, entry] of this.pending) {
      if (!this.watched(job)) {
        this.pending.delete(job)
        continue
      }
      if (entry.sending !== null || entry.retryAt > now || entry.payload === entry.recorded) continue
      entry.sending = entry.payload
      jobs.push(job)
    }
    if (jobs.length === 0) return
    const entries = jobs.map((job) => ({ jobId: job.id, json: JSON.stringify(this.pending.get(job)!.sending) }))
    this.metrics.seenRecords += entries.length
    this.broker.recordSeen(entries, this.id).then(
      (outcomes) => jobs.forEach((job, i) => this.settle(job, outcomes[i] ?? 'refused')),
      (err: Error) => {
        this.warn({ jobs: jobs.length, err: err.message }, 'recording PUBLISH-only job states failed; trying again')
        for (const job of jobs) this.settle(job, 'failed')
      },
    )
  }

  private settle(job: WatchedJob, outcome: SeenOutcome | 'failed'): void {
    const entry = this.pending.get(job)
    if (entry === undefined) return
    const sent = entry.sending!
    entry.sending = null
    if (outcome === 'written') {
      // Holding the lease: done, or the next flush takes the newer payload that arrived.
      if (entry.payload === sent) this.pending.delete(job)
      else entry.attempts = 0
      return
    }
    if (outcome === 'recorded') {
      // Another gateway holds the lease and records what this one sees. The entry stays, and
      // this gateway keeps backing off (bounded) rather than trying every flush: about one
      // write per update per job, whatever the number of nodes watching it.
      entry.recorded = sent
      entry.retryAt = Date.now() + backoffCeiling(entry.attempts++, this.timing.flushMs, this.timing.retryMaxMs)
      return
    }
    if (outcome === 'stored') {
      // The job got a stored state after this payload arrived (it had none then: this gateway
      // knew no generation of it): a producer began it, or restarted it, since. The payload
      // belongs to what came before, and is not stored over the new generation, final or not
      // (a property run caught a final plain PUBLISH overwriting a restart that followed it).
      this.pending.delete(job)
      this.unsequenced(job)
      return
    }
    // Refused (another process holds the lease) or failed: kept, tried again later; only the
    // latest payload is, since entry.payload is replaced by every note().
    entry.retryAt = Date.now() + backoffCeiling(entry.attempts++, this.timing.flushMs, this.timing.retryMaxMs)
  }

  private unsequenced(job: WatchedJob): void {
    this.metrics.unsequencedPayloads++
    // Sampled: a worker that only PUBLISHes beside the script does so on every update.
    const count = this.metrics.unsequencedPayloads
    if (count >= this.unsequencedLogged * 2 || count - this.unsequencedLogged >= 1000) {
      this.unsequencedLogged = count
      this.log.warn({ job: job.id, count },
        'a payload without seq (a plain PUBLISH) on a job whose state the producer script stores: not stored; run the script for every update (or send only the final state by plain PUBLISH)')
    }
  }

  /** A final plain PUBLISH on a job with a stored state: merged into it by the producer script,
   * compare-and-set on the stored seq, so that one gateway of all those watching applies it. */
  private storeFinal(job: WatchedJob, payload: JobPayload, epoch: number | undefined): void {
    const running = this.finals.has(job)
    this.finals.set(job, payload)
    if (running) return
    void this.runFinal(job, epoch)
  }

  private async runFinal(job: WatchedJob, epoch: number | undefined): Promise<void> {
    let tries = 0
    let failures = 0
    try {
      while (this.finals.has(job) && this.watched(job)) {
        const payload = this.finals.get(job)!
        try {
          const outcome = await this.applyFinal(job, payload, epoch)
          if (outcome === 'seen') {
            // No stored state after all (it expired): record it as PUBLISH-only jobs are.
            this.finals.delete(job)
            this.pending.set(job, { payload, sending: null, recorded: null, attempts: 0, retryAt: 0 })
            this.flushSoon()
            return
          }
          if (outcome === 'moved' && ++tries < FINAL_CAS_TRIES && this.finals.get(job) === payload) continue
          if (this.finals.get(job) === payload) this.finals.delete(job)
        } catch (err) {
          if (err instanceof ProducerError) {
            this.warn({ job: job.id, err: err.message }, 'a final state sent by plain PUBLISH was refused by the producer rules; not stored')
            if (this.finals.get(job) === payload) this.finals.delete(job)
            continue
          }
          // Redis unreachable or slow: kept and tried again until it lands or the job is let go.
          this.warn({ job: job.id, err: (err as Error).message }, 'storing a final state sent by plain PUBLISH failed; trying again')
          await new Promise((resolve) => setTimeout(resolve, backoffCeiling(failures++, this.timing.flushMs, this.timing.retryMaxMs)).unref())
        }
      }
    } finally {
      if (!this.watched(job)) this.finals.delete(job)
    }
  }

  /** One try: 'done' (stored, or nothing to do), 'moved' (the seq changed under it), 'seen'
   * (the job has no stored state). */
  private async applyFinal(job: WatchedJob, payload: JobPayload, epoch: number | undefined): Promise<'done' | 'moved' | 'seen'> {
    if (this.broker.state !== 'ready') throw new Error('the broker is not ready')
    const [record] = await this.broker.readJobs([job.id])
    const stored = record?.state ? decodePayload(record.state) : null
    if (stored === null || stored instanceof MalformedPayload || stored.seq === undefined) return 'seen'
    // Another generation began since (a restart): the final state belonged to the old one.
    if (epoch !== undefined && stored.epoch !== epoch) return 'done'
    const { seq: _seq, epoch: _epoch, ...fields } = payload
    // Already there: stored by another gateway (or by the producer itself).
    if (isTerminalStatus(stored.obj.status) && holds(stored.obj, fields)) return 'done'
    try {
      await this.broker.publishProgress(job.id, Buffer.from(JSON.stringify(fields)), { ifSeq: stored.seq })
      this.metrics.finalsRecorded++
      return 'done'
    } catch (err) {
      if (err instanceof SeqMismatch) return 'moved'
      if (err instanceof FinalState) return 'done'
      throw err
    }
  }
}

/** Whether `state` already has every field of `fields` as it is (null: absent). */
function holds(state: JobPayload, fields: JobPayload): boolean {
  for (const [key, value] of Object.entries(fields)) {
    if (key === 'ts') continue
    if (value === null ? state[key] !== undefined && state[key] !== null : JSON.stringify(state[key]) !== JSON.stringify(value)) return false
  }
  return true
}
