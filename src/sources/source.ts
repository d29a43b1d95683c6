// Job sources: queues that already write every state change of their jobs to Redis (Celery's
// result backend, BullMQ's event streams), read as they are so that their workers need no
// change. A source translates its queue's own messages into jobwire payloads and hands them to
// the bridge function the broker calls, so fan-out, SSE, slow-reader catch-up and metrics are
// the same code for every job. WatchedJobs tells a source which of its jobs this node watches;
// a source reads nothing else.
//
// Ordering. A source's messages carry no seq of their own, so each node numbers them: per
// watched job, `seq` counts the payloads this node delivered (1, 2, 3... with no gaps, which the
// browser client reads as "nothing missed"), and `epoch` is when this node began watching the
// job. A snapshot carries the seq of the last payload delivered, so every later payload is
// newer than it. The epoch is renewed when the source's Redis turns out to be another server
// process (a restart or failover): its queue may then hand the same job id to another job, and
// a new epoch makes the gateway check the job's watchers again before they see it.

import { jsonValueProblem, MAX_PAYLOAD_BYTES } from '../wire/payload.js'
import { isTerminalStatus, type JobPayload } from '../wire/protocol.js'

export type SourceName = 'celery' | 'bullmq'

export interface SourceHooks {
  /** The bridge: a payload for the job named by the channel `<channel prefix><job id>`. */
  message(channel: Buffer, payload: Buffer): void
  /** Whether the jobs' messages are flowing from the source (false: some may be missed). */
  live(jobIds: readonly string[], live: boolean): void
  /** Back after an outage during which the jobs' messages may have been missed; `dataLost`: the
   * Redis is another server process than before, so what was delivered before may describe a
   * job that no longer exists. The jobs' watchers need a fresh job_status. */
  restored(jobIds: readonly string[], dataLost: boolean): void
  /** A message of a watched job was dropped (not a record of the queue's, or it failed to
   * translate): counted and logged with the producer payloads dropped for the same reason. */
  malformed(jobId: string, reason: string): void
}

/** A job's stored state, translated, with the owner the source read from the job. */
export interface SourceRecord {
  readonly state: Buffer | null
  readonly owner: string | null
}

export interface JobSource {
  readonly name: SourceName
  start(hooks: SourceHooks): void
  /** Begins delivering the jobs' messages; resolves once they are flowing. While the source's
   * Redis is out of reach that is once it is back (rejects only when closed). */
  watch(jobIds: readonly string[]): Promise<void>
  unwatch(jobIds: readonly string[]): void
  /** The jobs' stored states, translated and numbered like their messages. */
  read(jobIds: readonly string[]): Promise<SourceRecord[]>
  close(): Promise<void>
}

/** A source's record of a job as a jobwire state, and the owner read from it. */
export interface Translated {
  readonly state: JobPayload
  readonly owner: string | null
}

/** What a source knows of one watched job on this node. */
export interface SourceJob {
  epoch: number
  /** The seq of the last payload delivered; 0 before the first. */
  seq: number
  /** The last state translated (delivered or read): a message that tells only part of the state
   * (a BullMQ event) is merged onto it. */
  last: JobPayload | null
  /** The owner the source last read from the job; undefined until one was read. */
  owner: string | null | undefined
}

/** The jobs one source delivers on this node, and their numbering. */
export class SourceJobs {
  private readonly jobs = new Map<string, SourceJob>()
  private lastEpoch = 0

  get size(): number {
    return this.jobs.size
  }

  get(jobId: string): SourceJob | undefined {
    return this.jobs.get(jobId)
  }

  add(jobId: string): SourceJob {
    let job = this.jobs.get(jobId)
    if (job === undefined) {
      job = { epoch: this.nextEpoch(), seq: 0, last: null, owner: undefined }
      this.jobs.set(jobId, job)
    }
    return job
  }

  delete(jobId: string): void {
    this.jobs.delete(jobId)
  }

  ids(): string[] {
    return [...this.jobs.keys()]
  }

  /** The source's Redis is another server: every job begins a new generation. */
  renew(): void {
    for (const job of this.jobs.values()) {
      job.epoch = this.nextEpoch()
      job.last = null
    }
  }

  /** The job id now names another job (a queue re-used it): what is known of the old one is
   * dropped, and the new epoch makes the gateway check the watchers against the new owner
   * before they see anything of it (stream/generations.ts). */
  newGeneration(job: SourceJob): void {
    job.epoch = this.nextEpoch()
    job.last = null
  }

  /** A job whose owner changed is another job under the same id. */
  private sawOwner(job: SourceJob, owner: string | null): void {
    if (job.owner !== undefined && job.owner !== owner) this.newGeneration(job)
    job.owner = owner
  }

  /** Epochs are milliseconds, strictly increasing within the process. */
  nextEpoch(): number {
    this.lastEpoch = Math.max(Date.now(), this.lastEpoch + 1)
    return this.lastEpoch
  }

  /** The next payload of a watched job, as bytes for the bridge. `owner`, where the message
   * names one: a change of owner is a new generation. */
  deliver(job: SourceJob, state: JobPayload, owner?: string | null): Buffer {
    if (owner !== undefined) this.sawOwner(job, owner)
    // A finished job that reports progress again was run again under its id (a Celery task
    // retried by id): final is final within an epoch, so that is a new one.
    if (job.last !== null && isTerminalStatus(job.last.status) && !isTerminalStatus(state.status)) this.newGeneration(job)
    job.last = state
    job.seq++
    return encodeState(job.seq, job.epoch, state)
  }

  /** A stored state read for a snapshot: numbered as the last payload delivered, so every
   * later one is newer. An unwatched job (a one-off read) gets a generation of its own. */
  stored(job: SourceJob | undefined, state: JobPayload, owner: string | null): Buffer {
    if (job === undefined) return encodeState(0, this.nextEpoch(), state)
    this.sawOwner(job, owner)
    if (job.seq === 0) job.last = state
    return encodeState(job.seq, job.epoch, state)
  }
}

/** The most of a queue's stored value (a Celery result's JSON) that is parsed: a larger one is
 * shown as its status and an error, never parsed. */
export const MAX_SOURCE_VALUE_BYTES = 4 * 1024 * 1024

/** What every source delivers passes here, so nothing a queue's producer stored can end the
 * process or reach a browser in a form the payload rules refuse (wire/payload.ts): a state
 * with a value JSON cannot carry, nested too deep or too large keeps its status and says why
 * in `error`, without the fields that could not be shown. */
function encodeState(seq: number, epoch: number, state: JobPayload): Buffer {
  let problem = jsonValueProblem(state)
  if (problem === null) {
    const bytes = Buffer.from(JSON.stringify({ seq, epoch, ...state }))
    if (bytes.length <= MAX_PAYLOAD_BYTES) return bytes
    problem = `the state is larger than ${MAX_PAYLOAD_BYTES} bytes`
  }
  return Buffer.from(JSON.stringify({ seq, epoch, ...unshowable(state, problem) }))
}

/** The part of a state that can always be shown, with why the rest is not. */
export function unshowable(state: JobPayload, problem: string): JobPayload {
  const shown: JobPayload = { status: typeof state.status === 'string' ? state.status : 'processing', error: `not shown: ${problem}` }
  for (const key of ['source', 'source_status', 'task', 'name'] as const) {
    const value = state[key]
    if (typeof value === 'string' && value.length <= 1024) shown[key] = value
  }
  if (typeof state.progress === 'number' && Number.isFinite(state.progress)) shown.progress = state.progress
  return shown
}

/** A queue's JSON text as a value. Python's json writes NaN and Infinity bare, which JSON.parse
 * refuses: they are read as infinities, which encodeState then refuses to show, so the state
 * keeps its status and says why. Undefined when absent, not JSON, or larger than
 * MAX_SOURCE_VALUE_BYTES. */
export function parseQueueJson(text: string | undefined): unknown {
  if (text === undefined || text.length > MAX_SOURCE_VALUE_BYTES) return undefined
  try {
    return JSON.parse(text) as unknown
  } catch {
    // Only the bare tokens, never inside a string.
    const patched = text.replace(/"(?:[^"\\]|\\.)*"|-?Infinity|NaN/g, (token) => (token.startsWith('"') ? token : token.startsWith('-') ? '-1e999' : '1e999'))
    if (patched === text) return undefined
    try {
      return JSON.parse(patched) as unknown
    } catch {
      return undefined
    }
  }
}

/** A number as a percentage: finite, clamped to 0..100. */
export function percent(value: unknown): number | undefined {
  if (typeof value !== 'number' || !Number.isFinite(value)) return undefined
  return Math.min(100, Math.max(0, value))
}

/** The progress a source reports, as 0..100: a number, or an object's `progress` or `percent`,
 * or 100 x `current` / `total`. */
export function progressOf(value: unknown): number | undefined {
  if (typeof value === 'number') return percent(value)
  if (!isRecord(value)) return undefined
  const direct = percent(value.progress) ?? percent(value.percent)
  if (direct !== undefined) return direct
  const { current, total } = value
  if (typeof current === 'number' && typeof total === 'number' && total > 0) return percent((100 * current) / total)
  return undefined
}

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/** The fields a source's progress details lend to the top level of the payload (`message`,
 * `stall_after`), besides `progress`. The details themselves travel whole under `meta`. */
export function liftDetails(details: unknown, into: JobPayload): void {
  if (!isRecord(details)) return
  if (typeof details.message === 'string') into.message = details.message
  if (typeof details.stall_after === 'number') into.stall_after = details.stall_after
}

/** A state that says nothing about progress keeps the last one known (a failure at 60% shows
 * 60%), except a job that is queued again. */
export function carryProgress(state: JobPayload, last: JobPayload | null): JobPayload {
  if (state.progress === undefined && state.status !== 'queued' && typeof last?.progress === 'number') {
    return { ...state, progress: last.progress }
  }
  return state
}

/** Reads `a.b.c` from an object; a string or a number there is an owner. */
export function ownerAt(value: unknown, path: string): string | null {
  if (path === '') return null
  let at: unknown = value
  for (const key of path.split('.')) {
    if (!isRecord(at)) return null
    at = at[key]
  }
  if (typeof at === 'string' && at !== '') return at
  if (typeof at === 'number' && Number.isFinite(at)) return String(at)
  return null
}
