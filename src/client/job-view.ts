import type { JobPayload } from '../wire/protocol.js'

/** What applying a frame did to a job's view. */
export type Applied = 'applied' | 'stale' | 'gap'

/**
 * The latest known state of one job. job_status is the server's snapshot and always replaces
 * the view; a job_update whose seq is not above the view's is stale (or a duplicate) and is
 * dropped, so the view only moves forward. An update that skips seqs is applied (payloads carry
 * the whole state) and reported as a gap, so the caller can ask for a fresh snapshot.
 */
export class JobView {
  data: JobPayload | null = null
  seq: number | undefined = undefined
  /** A job_status has been received (the subscription was acknowledged). */
  known = false

  applyStatus(data: JobPayload | null): Applied {
    this.data = data
    this.seq = seqOf(data)
    this.known = true
    return 'applied'
  }

  applyUpdate(data: JobPayload): Applied {
    const seq = seqOf(data)
    if (seq !== undefined && this.seq !== undefined && seq <= this.seq) return 'stale'
    const gap = seq !== undefined && this.seq !== undefined && seq > this.seq + 1
    this.data = data
    if (seq !== undefined) this.seq = seq
    return gap ? 'gap' : 'applied'
  }
}

function seqOf(data: JobPayload | null): number | undefined {
  const seq = data?.seq
  return typeof seq === 'number' && Number.isSafeInteger(seq) ? seq : undefined
}
