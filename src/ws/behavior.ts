// The /ws/jobs WebSocket behaviour: upgrade (subprotocol, per-socket state), client requests
// (subscribe, unsubscribe, status, ping), and the uWS subscription handler that tells
// WatchedJobs when a job gains or loses its socket watchers.
//
// Lifetimes: a uWS WebSocket must not be touched after its close handler ran, so every
// continuation after an await checks `data.closed` first, and writes happen inside cork().

import type { HttpRequest, HttpResponse, us_socket_context_t, WebSocket, WebSocketBehavior } from 'uWebSockets.js'
import { TokenBucket, type Admission, type AdmissionRequest } from '../access/admission.js'
import { canWatch, FORBIDDEN_MESSAGE, principalFor, tokenFrom, type Authenticator, type Principal } from '../access/auth.js'
import { delivery } from '../stream/bridge.js'
import type { Connections } from '../access/connections.js'
import { decodeClientMessage, RequestError } from '../wire/client-messages.js'
import type { Config } from '../support/config.js'
import { encodeMessage, frameBytes, statusMessage } from '../wire/frames.js'
import { clientAddress, originAllowed, respondJson, trackAborted } from '../http/respond.js'
import type { Logger } from '../support/log.js'
import type { Metrics } from '../support/metrics.js'
import { CloseCode, ErrorCode, Subprotocol, type Encoding, type ServerMessage } from '../wire/protocol.js'
import type { Snapshot } from '../stream/snapshot.js'
import { parseTopic, topicFor } from '../wire/topics.js'
import type { WatchedJob, WatchedJobs } from '../stream/watched-jobs.js'

export interface SocketData {
  readonly id: number
  readonly encoding: Encoding
  readonly ip: string
  /** Who the token says this is; null when access control is off. */
  readonly principal: Principal | null
  readonly userId: string | null
  readonly connectedAt: number
  /** Set when admission refused the connection: it is told why and closed with 1013 on open. */
  readonly refusal: { reason: string; retryAfterMs: number } | null
  /** The admission ticket, released when the socket closes. */
  readonly ticket: AdmissionRequest
  /** Inbound message rate; null when unlimited. */
  readonly bucket: TokenBucket | null
  /** Messages refused by the rate limit since the last accepted one. */
  strikes: number
  /** Jobs this socket asked for: 'pending' while its snapshot is being read, then 'subscribed'. */
  readonly jobs: Map<string, 'pending' | 'subscribed'>
  closed: boolean
}

export type JobSocket = WebSocket<SocketData>

export interface WsContext {
  readonly config: Config
  readonly watched: WatchedJobs
  readonly metrics: Metrics
  readonly log: Logger
  readonly auth: Authenticator
  readonly admission: Admission
  /** Every open socket, by user and by token expiry. */
  readonly connections: Connections
  isClosing(): boolean
  /** Snapshot of one job, for a one-off status request. */
  readSnapshot(jobId: string): Promise<Snapshot>
  /** Snapshot for a new watcher: waits until the job's channel is live. */
  readLiveSnapshot(job: WatchedJob): Promise<Snapshot>
}

/** uWS cuts frames above this without a close frame; between maxMessageBytes and this we
 * answer with the contract's 1009. */
export function uwsPayloadCeiling(maxMessageBytes: number): number {
  return Math.max(64 * 1024, maxMessageBytes * 4)
}

export function chooseSubprotocol(header: string): Encoding | null | undefined {
  if (header.trim() === '') return undefined
  for (const offered of header.split(',')) {
    const name = offered.trim()
    if (name === Subprotocol.Json) return 'json'
    if (name === Subprotocol.Msgpack) return 'msgpack'
  }
  return null
}

/** Repeated rate-limit refusals without a pause end the connection (1008). */
const MAX_STRIKES = 20

export function createWsBehavior(ctx: WsContext): WebSocketBehavior<SocketData> {
  const { config, watched, metrics, log, auth, admission } = ctx
  let nextSocketId = 1
  const messageBurst = config.maxMessagesPerSec * 2 + config.maxSubscriptionsPerSocket

  function send(ws: JobSocket, data: SocketData, message: ServerMessage): void {
    if (data.closed) return
    const frame = encodeMessage(data.encoding, message)
    ws.cork(() => ws.send(frame, data.encoding === 'msgpack'))
    metrics.framesOut++
    metrics.bytesOut += frameBytes(frame)
  }

  function sendError(ws: JobSocket, data: SocketData, code: ErrorCode, message: string, jobId?: string): void {
    metrics.countClientError(code)
    send(ws, data, jobId === undefined ? { type: 'error', code, message } : { type: 'error', code, message, job_id: jobId })
  }

  async function subscribe(ws: JobSocket, data: SocketData, jobId: string): Promise<void> {
    const state = data.jobs.get(jobId)
    if (state === 'pending') return // the first request will answer
    if (state === 'subscribed') return status(ws, data, jobId)
    if (data.jobs.size >= config.maxSubscriptionsPerSocket) {
      return sendError(ws, data, ErrorCode.TooManySubscriptions,
        `at most ${config.maxSubscriptionsPerSocket} jobs per connection`, jobId)
    }
    data.jobs.set(jobId, 'pending')
    // Hold the job while its snapshot is read, so the channel stays subscribed throughout.
    const job = watched.acquire(jobId)
    try {
      const snapshot = await ctx.readLiveSnapshot(job)
      if (data.closed || data.jobs.get(jobId) !== 'pending') return
      if (!canWatch(data.principal, jobId, snapshot.owner)) {
        // The same answer whether or not the job exists.
        data.jobs.delete(jobId)
        return sendError(ws, data, ErrorCode.Forbidden, FORBIDDEN_MESSAGE, jobId)
      }
      // Joining the topic and sending the snapshot happen in one synchronous step: every
      // message the channel delivers from here on reaches this socket after its job_status.
      data.jobs.set(jobId, 'subscribed')
      ws.cork(() => {
        ws.subscribe(topicFor(data.encoding, jobId))
        send(ws, data, statusMessage(jobId, snapshot.data))
      })
      metrics.subscriptions++
    } catch (err) {
      if (data.jobs.get(jobId) === 'pending') data.jobs.delete(jobId)
      if (data.closed) return
      log.warn({ job: jobId, err: (err as Error).message }, 'subscribe failed')
      sendError(ws, data, ErrorCode.Internal, 'job state is unavailable right now; retry shortly', jobId)
    } finally {
      watched.release(job)
    }
  }

  function unsubscribe(ws: JobSocket, data: SocketData, jobId: string): void {
    const state = data.jobs.get(jobId)
    data.jobs.delete(jobId)
    if (state === 'subscribed') {
      ws.unsubscribe(topicFor(data.encoding, jobId))
      metrics.subscriptions--
    }
    send(ws, data, { type: 'unsubscribed', job_id: jobId })
  }

  async function status(ws: JobSocket, data: SocketData, jobId: string): Promise<void> {
    try {
      const snapshot = await ctx.readSnapshot(jobId)
      if (!canWatch(data.principal, jobId, snapshot.owner)) return sendError(ws, data, ErrorCode.Forbidden, FORBIDDEN_MESSAGE, jobId)
      send(ws, data, statusMessage(jobId, snapshot.data))
    } catch (err) {
      if (data.closed) return
      log.warn({ job: jobId, err: (err as Error).message }, 'status request failed')
      sendError(ws, data, ErrorCode.Internal, 'job state is unavailable right now; retry shortly', jobId)
    }
  }

  return {
    compression: 0, // uWS.DISABLED: progress frames are small; deflate would cost more than it saves
    maxPayloadLength: uwsPayloadCeiling(config.maxMessageBytes),
    maxBackpressure: config.maxBackpressureBytes,
    // A socket this far behind is cut rather than silently skipped: its client reconnects and
    // its job_status brings it to the latest state, so no job's latest state is ever lost.
    closeOnBackpressureLimit: 1,
    idleTimeout: config.idleTimeoutSec,
    sendPingsAutomatically: true,

    upgrade(res: HttpResponse, req: HttpRequest, context: us_socket_context_t) {
      // req is only valid during this call: copy everything out of it before any await.
      const key = req.getHeader('sec-websocket-key')
      const extensions = req.getHeader('sec-websocket-extensions')
      const origin = req.getHeader('origin')
      const token = tokenFrom(req.getHeader('authorization'), req.getQuery('token') ?? '')
      const ip = clientAddress(res, config.trustProxy ? req.getHeader('x-forwarded-for') : '')
      const encoding = chooseSubprotocol(req.getHeader('sec-websocket-protocol'))
      const refuse = (status: number, reason: string, body: Record<string, unknown>, headers: Record<string, string> = {}) => {
        metrics.countRejectedUpgrade(reason)
        respondJson(res, status, body, headers)
      }
      if (ctx.isClosing()) return refuse(503, 'shutting_down', { error: 'server is shutting down; reconnect' }, { 'retry-after': '1' })
      if (encoding === null) {
        return refuse(400, 'bad_subprotocol', { error: `unsupported subprotocol; offer ${Subprotocol.Json} or ${Subprotocol.Msgpack}` })
      }
      if (!originAllowed(origin, config.allowedOrigins)) return refuse(403, 'origin', { error: `origin ${origin} is not allowed` })
      const aborted = trackAborted(res)
      void (async () => {
        let principal: Principal | null
        try {
          principal = await principalFor(auth, token)
        } catch (err) {
          const code = (err as { code?: string }).code ?? 'invalid'
          if (!aborted.aborted) refuse(401, `token_${code}`, { error: 'unauthorized', message: (err as Error).message }, { 'www-authenticate': 'Bearer' })
          return
        }
        const userId = principal?.userId ?? null
        const ticket: AdmissionRequest = { userId, ip }
        const admitted = await admission.admit(ticket)
        if (aborted.aborted) {
          if (admitted.ok) admission.release(ticket)
          return
        }
        const data: SocketData = {
          id: nextSocketId++,
          encoding: encoding ?? 'json',
          ip,
          principal,
          userId,
          connectedAt: Date.now(),
          refusal: admitted.ok ? null : { reason: admitted.reason, retryAfterMs: admitted.retryAfterMs },
          ticket,
          bucket: config.maxMessagesPerSec > 0 ? new TokenBucket(config.maxMessagesPerSec, messageBurst, Date.now()) : null,
          strikes: 0,
          jobs: new Map(),
          closed: false,
        }
        res.cork(() => {
          res.upgrade(data, key, encoding === undefined ? '' : encoding === 'json' ? Subprotocol.Json : Subprotocol.Msgpack, extensions, context)
        })
      })()
    },

    open(ws) {
      const data = ws.getUserData()
      if (data.refusal !== null) {
        // Refused by a connection cap: browsers cannot read an HTTP status, so the socket says
        // why (error + retry hint) and closes with 1013, "try again later".
        metrics.countRejectedUpgrade('connection_limit')
        data.closed = true
        const retry = data.refusal.retryAfterMs
        ws.cork(() => {
          ws.send(encodeMessage(data.encoding, { type: 'error', code: ErrorCode.RateLimited, message: data.refusal!.reason, retry_after_ms: retry }), data.encoding === 'msgpack')
          ws.end(CloseCode.TryAgainLater, `retry-after-ms=${retry}`)
        })
        return
      }
      ctx.connections.add(ws, data)
      metrics.connectionsOpened++
      metrics.connections++
    },

    message(ws, message, isBinary) {
      const data = ws.getUserData()
      if (data.closed) return
      if (data.bucket !== null && !data.bucket.take(Date.now())) {
        if (++data.strikes >= MAX_STRIKES) {
          metrics.countClientError('rate_abuse')
          ws.end(CloseCode.PolicyViolation, 'message rate limit exceeded repeatedly')
          return
        }
        metrics.countClientError(ErrorCode.RateLimited)
        send(ws, data, { type: 'error', code: ErrorCode.RateLimited, message: `at most ${config.maxMessagesPerSec} messages per second`, retry_after_ms: data.bucket.waitMs(Date.now()) })
        return
      }
      data.strikes = 0
      if (message.byteLength > config.maxMessageBytes) {
        metrics.countClientError('message_too_big')
        ws.end(CloseCode.MessageTooBig, `message larger than ${config.maxMessageBytes} bytes`)
        return
      }
      const request = decodeClientMessage(data.encoding, message, isBinary)
      if (request instanceof RequestError) return sendError(ws, data, request.code, request.message, request.jobId)
      switch (request.type) {
        case 'subscribe_job':
          return void subscribe(ws, data, request.job_id)
        case 'unsubscribe_job':
          return unsubscribe(ws, data, request.job_id)
        case 'job_status':
          return void status(ws, data, request.job_id)
        case 'ping':
          return send(ws, data, request.id === undefined ? { type: 'pong' } : { type: 'pong', id: request.id })
      }
    },

    subscription(_ws, topic, newCount, oldCount) {
      const parsed = parseTopic(Buffer.from(topic).toString('latin1'))
      if (parsed === undefined) return
      if (newCount > oldCount) {
        watched.acquire(parsed.jobId)
      } else {
        const job = watched.get(parsed.jobId)
        if (job !== undefined) watched.release(job)
      }
    },

    close(ws, code) {
      const data = ws.getUserData()
      if (data.refusal !== null) return // never admitted, never counted
      data.closed = true
      ctx.connections.remove(ws, data)
      admission.release(data.ticket)
      metrics.connectionsClosed++
      metrics.connections--
      for (const state of data.jobs.values()) if (state === 'subscribed') metrics.subscriptions--
      if (delivery.window && code === CloseCode.Abnormal) {
        metrics.slowConsumerCloses++
        log.debug({ socket: data.id, ip: data.ip }, 'cut a socket that could not take its frames (over its backpressure limit, or gone)')
      } else {
        log.trace({ socket: data.id, code }, 'socket closed')
      }
    },
  }
}
