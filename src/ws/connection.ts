// One /ws/jobs socket's state, kept as uWS's user data. A class, so its behaviour lives once on
// the prototype rather than as closures per socket. It is also the socket's admission ticket:
// admission.release() gets the very object admit() got.

import type { WebSocket } from 'uWebSockets.js'
import { FORBIDDEN_MESSAGE, type Principal } from '../access/auth.js'
import type { Connection } from '../access/connections.js'
import type { TokenBucket } from '../access/token-bucket.js'
import type { Refusal } from '../stream/watch.js'
import type { Metrics } from '../support/metrics.js'
import { encodeMessage, frameBytes, statusMessage, TOKEN_EXPIRED_MESSAGE } from '../wire/frames.js'
import { CloseCode, ErrorCode, TOKEN_EXPIRED_REASON, type Encoding, type JobPayload, type ServerMessage } from '../wire/protocol.js'
import { topicFor } from '../wire/topics.js'

/** uWS copies the user data given to upgrade() into an object of its own, keeping own fields
 * and losing the prototype: the connection travels as the one field of a holder. */
export interface SocketHolder {
  readonly conn: SocketConnection
}

export type JobSocket = WebSocket<SocketHolder>

const UNAVAILABLE_MESSAGE = 'job state is unavailable right now (the broker is down); retry shortly'
/** What an unavailable answer advises waiting before the retry. */
const UNAVAILABLE_RETRY_MS = 1000

export interface Refused {
  readonly reason: string
  readonly retryAfterMs: number
}

export class SocketConnection implements Connection {
  /** Set in the open handler; uWS forbids touching it after its close handler ran. */
  ws: JobSocket | null = null
  /** Set when admission refused the connection: it is told why and closed with 1013 on open. */
  refused: Refused | null = null
  /** Messages refused by the rate limit since the last accepted one. */
  strikes = 0
  closed = false
  /** Jobs this socket asked for: 'pending' while its snapshot is read, then 'subscribed';
   * 'parked' while it is too far behind to be sent updates (catch-up.ts). */
  readonly jobs = new Map<string, 'pending' | 'subscribed' | 'parked'>()
  /** While parked: the jobs held for it until it has caught up. */
  held: Set<string> | null = null
  catchingUp = false

  constructor(
    readonly id: number,
    readonly encoding: Encoding,
    readonly ip: string,
    /** The per-address limit key; null: not limited per address. */
    readonly address: string | null,
    /** Who the token says this is; null when access control is off. */
    readonly principal: Principal | null,
    readonly connectedAt: number,
    /** Inbound message rate; null when unlimited. */
    readonly bucket: TokenBucket | null,
    private readonly metrics: Metrics,
  ) {}

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
  join(jobId: string, data: JobPayload | null, from: 'pending' | 'parked'): boolean {
    const ws = this.ws
    if (this.closed || ws === null || this.jobs.get(jobId) !== from) return false
    this.jobs.set(jobId, 'subscribed')
    ws.cork(() => {
      ws.subscribe(topicFor(this.encoding, jobId))
      this.send(statusMessage(jobId, data))
    })
    return true
  }

  watches(jobId: string): boolean {
    return this.jobs.has(jobId)
  }

  /** A parked job's hold stays in `held` until the socket catches up or closes. */
  revoke(jobId: string): void {
    const state = this.jobs.get(jobId)
    if (state === undefined) return
    this.jobs.delete(jobId)
    if (state === 'subscribed') this.ws?.unsubscribe(topicFor(this.encoding, jobId))
    if (state !== 'pending') this.metrics.subscriptions--
    this.sendError(ErrorCode.Forbidden, FORBIDDEN_MESSAGE, jobId)
  }

  send(message: ServerMessage): void {
    const ws = this.ws
    if (this.closed || ws === null) return
    const frame = encodeMessage(this.encoding, message)
    ws.cork(() => ws.send(frame, this.encoding === 'msgpack'))
    this.metrics.framesOut++
    this.metrics.bytesOut += frameBytes(frame)
  }

  sendError(code: ErrorCode, message: string, jobId?: string): void {
    this.metrics.countClientError(code)
    this.send(jobId === undefined ? { type: 'error', code, message } : { type: 'error', code, message, job_id: jobId })
  }

  /** The answer to a watch or read that did not happen (a `gone` receiver gets none). */
  refuse(refusal: Refusal, jobId: string): void {
    if (refusal === 'forbidden') this.sendError(ErrorCode.Forbidden, FORBIDDEN_MESSAGE, jobId)
    else if (refusal === 'unavailable') {
      this.metrics.countClientError(ErrorCode.Unavailable)
      this.send({ type: 'error', code: ErrorCode.Unavailable, message: UNAVAILABLE_MESSAGE, job_id: jobId, retry_after_ms: UNAVAILABLE_RETRY_MS })
    }
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
