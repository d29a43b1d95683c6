import { isTerminalStatus, type JobPayload, type Relation } from '../wire/protocol.js'

/** What applying a frame did to a job's view. */
export type Applied = 'applied' | 'stale' | 'gap'

/**
 * The latest known state of one job, kept by the state model of docs/protocol.md ("State
 * model"). Epochs are compared for equality only: seq orders states within one epoch, and a
 * state of another epoch is another history of the job (lost and begun again, restarted, or
 * given to another owner), taken as the new truth whatever its seq.
 *
 * Final is final: within one epoch a terminal state is never replaced by a non-terminal one,
 * whatever carries it (a job_update, a job_status, a plain PUBLISH), and a held state is never
 * dropped for `data: null` (the terminal TTL expired) or a job_status that is behind it.
 *
 * A job_update whose seq is not above the view's is stale (or a duplicate) and dropped. One that
 * skips seqs is applied (payloads carry the whole state) and reported as a gap, so the caller can
 * ask for a fresh snapshot; unless the frame says the skip was conflation (a rate-capped
 * subscription's `prev_seq`, the seq delivered before it) and the view already holds that seq.
 * A job_update without seq is a producer's plain PUBLISH, which may carry only the fields that
 * changed: it is merged into the held state (mergePatch), not put in its place.
 */
export class JobView {
  data: JobPayload | null = null
  seq: number | undefined = undefined
  epoch: number | undefined = undefined
  /** A job_status has been received (the subscription was acknowledged). */
  known = false

  /** The (epoch, seq) to send as `since` when asking again; undefined while none is held. */
  get since(): { epoch: number; seq: number } | undefined {
    return this.epoch !== undefined && this.seq !== undefined ? { epoch: this.epoch, seq: this.seq } : undefined
  }

  /** A job_status; `relation` as the server gave it for the `since` sent, if any. */
  applyStatus(data: JobPayload | null, relation?: Relation): Applied {
    const wasKnown = this.known
    this.known = true
    const held = this.data
    if (wasKnown && held !== null) {
      // The server holds nothing (expired, or not recorded yet) or less than what is held.
      if (data === null || relation === 'behind' || relation === 'none') return 'stale'
      if (this.sameEpoch(data)) {
        const seq = integer(data.seq)
        if (seq !== undefined && this.seq !== undefined && seq < this.seq) return 'stale'
        if (isTerminalStatus(held.status) && !isTerminalStatus(data.status)) return 'stale'
      }
    }
    this.data = data
    this.seq = integer(data?.seq)
    this.epoch = integer(data?.epoch)
    return 'applied'
  }

  applyUpdate(data: JobPayload, prevSeq?: unknown): Applied {
    const seq = integer(data.seq)
    if (seq === undefined) return this.applyPatch(data)
    const epoch = integer(data.epoch)
    const sameEpoch = this.sameEpoch(data)
    if (sameEpoch && this.seq !== undefined && seq <= this.seq) return 'stale'
    if (sameEpoch && this.data !== null && isTerminalStatus(this.data.status) && !isTerminalStatus(data.status)) return 'stale'
    const conflatedFrom = integer(prevSeq)
    const gap = sameEpoch && this.seq !== undefined && seq > this.seq + 1 && !(conflatedFrom !== undefined && conflatedFrom <= this.seq)
    this.data = data
    this.seq = seq
    if (epoch !== undefined) this.epoch = epoch
    return gap ? 'gap' : 'applied'
  }

  /** A plain PUBLISH: merged into the held state, which keeps its seq and epoch. */
  private applyPatch(patch: JobPayload): Applied {
    const merged = mergePatch(this.data, patch)
    if (this.data !== null && isTerminalStatus(this.data.status) && !isTerminalStatus(merged.status)) return 'stale'
    this.data = merged
    return 'applied'
  }

  /** Whether a state belongs to the held history: the same epoch, or one of them has none. */
  private sameEpoch(data: JobPayload): boolean {
    const epoch = integer(data.epoch)
    return epoch === undefined || this.epoch === undefined || epoch === this.epoch
  }
}

/** Fields a change of status clears unless the same update sets them: they describe the
 * status they came with. */
const STATUS_BOUND = ['message', 'error', 'result'] as const

/**
 * The merge rule of docs/protocol.md, the same as the producer script's: a top-level JSON
 * merge-patch. A field set to null deletes it; any other value, nested objects included,
 * replaces the held one whole; a change of `status` clears message, error and result unless
 * the patch sets them.
 */
export function mergePatch(held: JobPayload | null, patch: Readonly<Record<string, unknown>>): JobPayload {
  const out: JobPayload = { ...held }
  if ('status' in patch && patch.status !== out.status) for (const field of STATUS_BOUND) if (!(field in patch)) delete out[field]
  for (const [field, value] of Object.entries(patch)) {
    if (value === null) delete out[field]
    else out[field] = value
  }
  return out
}

function integer(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isSafeInteger(value) ? value : undefined
}
