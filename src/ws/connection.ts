// One /ws/jobs socket's state, kept as uWS's user data. A class, so its behaviour lives once on
// the prototype rather than as closures per socket. It is also the socket's admission ticket:
// admission.release() gets the very object admit() got.
//
// Every socket pays for each field here, so the state is kept flat (bench/heap.ts measures
// it): the common single job in two fields instead of a Map, the message-rate bucket as one
// number, the connect time as a small integer, and the client address shared between sockets
// from the same address.

import type { RefusalCause } from '../access/admission.js'
import type { WebSocket } from 'uWebSockets.js'
import { FORBIDDEN_MESSAGE, type Principal } from '../access/auth.js'
import type { Connection } from '../access/connections.js'
import { FULL, smallInteger } from '../access/token-bucket.js'
import type { Snapshot } from '../stream/snapshot.js'
import type { Refusal } from '../stream/watch.js'
import type { Metrics } from '../support/metrics.js'
import { encodeMessage, frameBytes, statusMessage, TOKEN_EXPIRED_MESSAGE } from '../wire/frames.js'
import { CloseCode, ErrorCode, FORBIDDEN_RETRY_MS, TOKEN_EXPIRED_REASON, type Encoding, type ErrorMessage, type RequestId, type ServerMessage, type Since } from '../wire/protocol.js'
import { topicFor } from '../wire/topics.js'

/** uWS copies the user data given to upgrade() into an object of its own, keeping own fields
 * and losing the prototype: the connection travels as the one field of a holder. */
export interface SocketHolder {
  readonly conn: SocketConnection
  /** The upgrade request's id (http/request-id.ts), for the connect line; dropped after it. */
  request: string | undefined
}

export type JobSocket = WebSocket<SocketHolder>

const UNAVAILABLE_MESSAGE = 'job state is unavailable right now (the broker is down); retry shortly'
/** What an unavailable answer advises waiting before the retry. */
const UNAVAILABLE_RETRY_MS = 1000

/** What a subscription or read names besides the job: echoed or compared in its reply. */
export interface JobRequest {
  readonly since?: Since
  readonly id?: RequestId
}

export interface Refused {
  readonly reason: string
  readonly retryAfterMs: number
  /** Which limit (access/admission.ts), the metric's label. */
  readonly cause: RefusalCause
}

export type JobState = 'pending' | 'subscribed' | 'parked'

/**
 * A socket's jobs and their states, with the part of Map's interface the gateway uses. Most
 * sockets watch one job: it lives in two fields, and a Map (184 bytes even when empty or
 * holding one entry) is made only for a second job and dropped when it empties again.
 * Insertion order is kept as a Map keeps it. Iterating returns a copy, so the table may change
 * meanwhile.
 *
 * SocketConnection extends it so that these fields sit in the connection object itself rather
 * than in one more object per socket; code reaches it as `conn.jobs`.
 */
export class JobTable {
  private firstJob: string | null = null
  private firstState: JobState = 'pending'
  /** Every job after the first, in order; null unless there is one. */
  private otherJobs: Map<string, JobState> | null = null

  get size(): number {
    return this.firstJob === null ? 0 : 1 + (this.otherJobs?.size ?? 0)
  }

  get(jobId: string): JobState | undefined {
    return jobId === this.firstJob ? this.firstState : this.otherJobs?.get(jobId)
  }

  has(jobId: string): boolean {
    return jobId === this.firstJob || this.otherJobs?.has(jobId) === true
  }

  set(jobId: string, state: JobState): this {
    if (this.firstJob === null || jobId === this.firstJob) {
      this.firstJob = jobId
      this.firstState = state
    } else {
      (this.otherJobs ??= new Map()).set(jobId, state)
    }
    return this
  }

  delete(jobId: string): boolean {
    if (jobId !== this.firstJob) {
      const others = this.otherJobs
      if (others === null || !others.delete(jobId)) return false
      if (others.size === 0) this.otherJobs = null
      return true
    }
    // The oldest of the others moves up, so the order stays that of insertion.
    const next = this.otherJobs?.entries().next()
    if (next === undefined || next.done === true) {
      this.firstJob = null
      this.firstState = 'pending'
    } else {
      [this.firstJob, this.firstState] = next.value
      this.otherJobs!.delete(next.value[0])
      if (this.otherJobs!.size === 0) this.otherJobs = null
    }
    return true
  }

  entries(): Array<[string, JobState]> {
    if (this.firstJob === null) return []
    const out: Array<[string, JobState]> = [[this.firstJob, this.firstState]]
    if (this.otherJobs !== null) for (const entry of this.otherJobs) out.push(entry)
    return out
  }

  values(): JobState[] {
    return this.entries().map(([, state]) => state)
  }

  [Symbol.iterator](): IterableIterator<[string, JobState]> {
    return this.entries()[Symbol.iterator]()
  }
}

/** Connect times are kept as ms since this module loaded: a small integer (stored in the field
 * itself) for 24 days, where ms since 1970 is a boxed double of 16 bytes more. */
const EPOCH = Date.now()

/** The same client address string for every socket from it, among the addresses seen lately
 * (two generations of this many), instead of a fresh copy per socket. Bounded, so many
 * one-off addresses cost no more than a fixed amount. */
const ADDRESS_POOL_SIZE = 512
let recentAddresses = new Map<string, string>()
let olderAddresses = new Map<string, string>()

export function sharedAddress(address: string): string {
  const recent = recentAddresses.get(address)
  if (recent !== undefined) return recent
  const shared = olderAddresses.get(address) ?? address
  if (recentAddresses.size >= ADDRESS_POOL_SIZE) {
    olderAddresses = recentAddresses
    recentAddresses = new Map()
  }
  recentAddresses.set(shared, shared)
  return shared
}

export class SocketConnection extends JobTable implements Connection {
  /** Set in the open handler; uWS forbids touching it after its close handler ran. */
  ws: JobSocket | null = null
  /** Set when admission refused the connection: it is told why and closed with 1013 on open. */
  refused: Refused | null = null
  /** Messages refused by the rate limit since the last accepted one. */
  strikes = 0
  /** Its inbound message-rate bucket (a TokenRate's state); unused when the rate is unlimited. */
  bucket = FULL
  closed = false
  /** While parked: the jobs held for it until it has caught up. */
  held: Set<string> | null = null
  /** Jobs watched at a capped rate (max_hz): job id -> rate class. Null while none is. */
  rates: Map<string, number> | null = null
  catchingUp = false
  readonly ip: string
  /** The per-address limit key; null: not limited per address. */
  readonly address: string | null
  /** Connect time, ms since EPOCH. */
  private readonly since: number

  constructor(
    readonly id: number,
    readonly encoding: Encoding,
    ip: string,
    address: string | null,
    /** Who the token says this is; null when access control is off. */
    readonly principal: Principal | null,
    connectedAt: number,
    private readonly metrics: Metrics,
  ) {
    super()
    this.ip = sharedAddress(ip)
    this.address = address === ip ? this.ip : address === null ? null : sharedAddress(address)
    this.since = smallInteger(connectedAt - EPOCH)
  }

  /** Jobs this socket asked for: 'pending' while its snapshot is read, then 'subscribed';
   * 'parked' while it is too far behind to be sent updates (catch-up.ts). */
  get jobs(): JobTable {
    return this
  }

  get connectedAt(): number {
    return EPOCH + this.since
  }

  get transport(): 'websocket' {
    return 'websocket'
  }

  get userId(): string | null {
    return this.principal?.userId ?? null
  }

  subscriptions(): string[] {
    const out: string[] = []
    for (const [job, state] of this.jobs) if (state !== 'pending') out.push(job)
    return out
  }

  /** Joins the job's topic (uWS's subscription handler then holds the job) and sends its
   * snapshot in one step, so every later message reaches this socket after its job_status.
   * False when the socket is gone or the job is no longer in the state `from`. */
  join(jobId: string, snapshot: Snapshot, from: 'pending' | 'parked', request?: JobRequest): boolean {
    const ws = this.ws
    if (this.closed || ws === null || this.jobs.get(jobId) !== from) return false
    this.jobs.set(jobId, 'subscribed')
    const reason = from === 'pending' ? 'subscribed' : 'caught_up'
    ws.cork(() => {
      ws.subscribe(this.topicOf(jobId))
      this.send(statusMessage(jobId, snapshot.data, reason, { stalled: snapshot.stalled, since: request?.since, id: request?.id }))
    })
    return true
  }

  /** The uWS topic this socket receives the job on: its encoding and rate class. */
  topicOf(jobId: string): string {
    return topicFor(this.encoding, jobId, this.rates?.get(jobId) ?? 0)
  }

  /** 0: full rate. */
  setRate(jobId: string, hz: number): void {
    if (hz === 0) {
      this.rates?.delete(jobId)
      if (this.rates?.size === 0) this.rates = null
    } else {
      ;(this.rates ??= new Map()).set(jobId, hz)
    }
  }

  watches(jobId: string): boolean {
    return this.jobs.has(jobId)
  }

  /** A parked job's hold stays in `held` until the socket catches up or closes. */
  revoke(jobId: string, reason: 'forbidden' | 'unavailable' = 'forbidden', id?: RequestId): void {
    const state = this.jobs.get(jobId)
    if (state === undefined) return
    this.jobs.delete(jobId)
    if (state === 'subscribed') this.ws?.unsubscribe(this.topicOf(jobId))
    this.setRate(jobId, 0)
    if (state !== 'pending') this.metrics.subscriptions--
    this.refuse(reason, jobId, id)
  }

  send(message: ServerMessage): void {
    const ws = this.ws
    if (this.closed || ws === null) return
    const frame = encodeMessage(this.encoding, message)
    ws.cork(() => ws.send(frame, this.encoding === 'msgpack'))
    this.metrics.framesOut++
    this.metrics.bytesOut += frameBytes(frame)
  }

  /** `id`: the request's, echoed. */
  sendError(code: ErrorCode, message: string, jobId?: string, id?: RequestId): void {
    this.metrics.countClientError(code)
    const error: ErrorMessage = { type: 'error', code, message }
    if (jobId !== undefined) error.job_id = jobId
    if (id !== undefined) error.id = id
    this.send(error)
  }

  /** The answer to a watch or read that did not happen (a `gone` receiver gets none). A
   * forbidden is retryable: it is also the answer for a job that has no state yet. */
  refuse(refusal: Refusal, jobId: string, id?: RequestId): void {
    if (refusal === 'gone') return
    const forbidden = refusal === 'forbidden'
    const error: ErrorMessage = forbidden
      ? { type: 'error', code: ErrorCode.Forbidden, message: FORBIDDEN_MESSAGE, job_id: jobId, retry_ms: FORBIDDEN_RETRY_MS }
      : { type: 'error', code: ErrorCode.Unavailable, message: UNAVAILABLE_MESSAGE, job_id: jobId, retry_after_ms: UNAVAILABLE_RETRY_MS }
    if (id !== undefined) error.id = id
    this.metrics.countClientError(error.code)
    this.send(error)
  }

  /** Clients reconnect with a fresh token (the browser client's getToken hook). */
  expire(): void {
    if (this.closed) return
    this.metrics.countClientError(ErrorCode.TokenExpired)
    this.send(TOKEN_EXPIRED_MESSAGE)
    this.end(CloseCode.PolicyViolation, TOKEN_EXPIRED_REASON)
  }

  disconnect(): void {
    this.end(CloseCode.PolicyViolation, 'disconnected by an administrator')
  }

  shutdown(): void {
    this.end(CloseCode.GoingAway, 'server shutting down')
  }

  end(code: number, reason: string): void {
    if (!this.closed && this.ws !== null) this.ws.end(code, reason)
  }
}
