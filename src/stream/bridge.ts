// HOT PATH: one broker message on `<prefix><job id>` becomes at most one frame per encoding
// that has receivers on this node (fanout.ts). Nothing is decoded for a job nobody here
// watches, and nothing a producer sends can end the process.

import type { Metrics } from '../support/metrics.js'
import { decodePayload, MalformedPayload } from '../wire/payload.js'
import type { Fanout } from './fanout.js'
import type { Losses } from './losses.js'
import type { Recorder } from './recorder.js'
import type { WatchedJob, WatchedJobs } from './watched-jobs.js'

export function createBridge(
  watched: WatchedJobs,
  fanout: Fanout,
  metrics: Metrics,
  channelPrefixLength: number,
  onMalformed: (jobId: string, reason: string) => void,
  /** With access control on: checks a job's watchers again when its generation changes. */
  onNewGeneration: ((job: WatchedJob) => void) | null = null,
  recorder: Recorder | null = null,
  /** Told of a frame that contradicts what the channel delivered or a read found (losses.ts). */
  losses: Pick<Losses, 'report' | 'verify'> | null = null,
): (channel: Buffer, payload: Buffer) => void {
  function forward(job: WatchedJob, payload: Buffer): void {
    const update = decodePayload(payload)
    if (update instanceof MalformedPayload) {
      metrics.malformedPayloads++
      onMalformed(job.id, update.reason)
      return
    }
    // Redis lost writes and the producer counted on from an older state: this frame re-uses
    // an (epoch, seq) of another state, or reopens a final one. It is not sent; the record
    // begins a new epoch, whose frame follows.
    if (update.seq !== undefined && update.epoch !== undefined) {
      if (job.contradicts(update.epoch, update.seq, update.obj.status)) return losses?.report(job.id, update.epoch, update.seq)
      const read = job.againstRead(update.epoch, update.seq, update.obj.status, update.obj)
      if (read === 'loss') return losses?.report(job.id, update.epoch, update.seq)
      // Below a seq read before: either it overtook that read, or the record went back.
      if (read === 'verify' || read === 'stale') losses?.verify(job.id, update.epoch, job.storedSeq!)
      if (read === 'stale') return
    }
    job.see(update.obj, update.seq, update.epoch)
    // No seq: nothing stored it (a plain PUBLISH); record it for the other processes.
    if (update.seq === undefined) recorder?.note(job)
    if (update.epoch !== undefined && update.epoch !== job.generation) {
      const known = job.generation
      job.generation = update.epoch
      // A new generation (the key was created again, or its owner replaced) may belong to
      // someone else: its watchers are checked before they see any of it.
      if (known !== undefined && onNewGeneration !== null) {
        job.reauthorizing = true
        onNewGeneration(job)
      }
    }
    // Held, not dropped: the newest payload waits for the job_status that follows the check,
    // and is sent after it if newer (generations.ts). A copy: the bytes are the network's.
    if (job.reauthorizing) {
      job.held = Buffer.from(payload)
      return
    }
    fanout.update(job, update)
    const ts = update.obj.ts
    if (typeof ts === 'number') metrics.observeLatency(ts, Date.now())
  }

  return function onBrokerMessage(channel, payload) {
    metrics.brokerMessages++
    const job = watched.get(channel.toString('latin1', channelPrefixLength))
    if (job === undefined) {
      metrics.unwatchedMessages++
      return
    }
    // decodePayload refuses what the encoders cannot write; this catch is the last line, so
    // that a payload nobody foresaw costs one dropped message and never the process.
    try {
      forward(job, payload)
    } catch (err) {
      metrics.malformedPayloads++
      onMalformed(job.id, `failed in the hot path: ${(err as Error).message}`)
    }
  }
}
