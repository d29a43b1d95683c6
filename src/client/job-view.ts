import type { JobPayload } from '../wire/protocol.js'

/** What applying a frame did to a job's view. */
export type Applied = 'applied' | 'stale' | 'gap'

/**
 * The latest known state of one job. job_status is the server's snapshot and always replaces
 * the view. A job_update of the view's epoch whose seq is not above the view's is stale (or a
 * duplicate) and is dropped, so the view only moves forward; one of another epoch is a new
 * generation of the job (the server lost the state and the producer began again, or the job
 * changed hands) and is the new truth, whatever its seq. An update that skips seqs is applied
 * (payloads carry the whole state) and reported as a gap, so the caller can ask for a fresh
 * snapshot; unless the frame says the skip was conflation (a rate-capped subscription's
 * `prev_seq`, the seq delivered before it) and the view already holds that seq or newer.
 */
export class JobView {
  data: JobPayload | null = null
  seq: number | undefined = undefined
  epoch: number | undefined = undefined
  /** A job_status has been received (the subscription was acknowledged). */
  known = false

  applyStatus(data: JobPayload | null): Applied {
    this.data = data
    this.seq = integer(data?.seq)
    this.epoch = integer(data?.epoch)
    this.known = true
    return 'applied'
  }

  applyUpdate(data: JobPayload, prevSeq?: unknown): Applied {
    const seq = integer(data.seq)
    const epoch = integer(data.epoch)
    const newEpoch = epoch !== undefined && this.epoch !== undefined && epoch !== this.epoch
    if (!newEpoch && seq !== undefined && this.seq !== undefined && seq <= this.seq) return 'stale'
    const conflatedFrom = integer(prevSeq)
    const gap = !newEpoch && seq !== undefined && this.seq !== undefined && seq > this.seq + 1 && !(conflatedFrom !== undefined && conflatedFrom <= this.seq)
    this.data = data
    if (seq !== undefined) this.seq = seq
    if (epoch !== undefined) this.epoch = epoch
    return gap ? 'gap' : 'applied'
  }
}

function integer(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isSafeInteger(value) ? value : undefined
}
