// The /ws/jobs WebSocket behaviour: upgrade (subprotocol, per-socket state), client requests
// (subscribe, unsubscribe, status, ping), and the uWS subscription handler that tells
// WatchedJobs when a job gains or loses its socket watchers.
//
// Lifetimes: a uWS WebSocket must not be touched after its close handler ran, so every
// continuation after an await checks `data.closed` first, and writes happen inside cork().

import type { HttpRequest, HttpResponse, us_socket_context_t, WebSocket, WebSocketBehavior } from 'uWebSockets.js'
import { delivery } from './bridge.js'
import { withDeadline } from './deadline.js'
import { decodeClientMessage, RequestError } from './client-messages.js'
import type { Config } from './config.js'
import { encodeMessage, frameBytes, statusMessage } from './frames.js'
import { respondJson } from './http.js'
import type { Logger } from './log.js'
import type { Metrics } from './metrics.js'
import { CloseCode, ErrorCode, Subprotocol, type Encoding, type ServerMessage } from './protocol.js'
import type { Snapshot } from './snapshot.js'
import { parseTopic, topicFor } from './topics.js'
import type { WatchedJob, WatchedJobs } from './watched-jobs.js'

export interface SocketData {
  readonly id: number
  readonly encoding: Encoding
  readonly ip: string
  /** The authenticated user, when access control is on. */
  readonly userId: string | null
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
  /** Every open socket, for shutdown and admin. */
  readonly sockets: Set<JobSocket>
  isClosing(): boolean
  /** Snapshot of one job; for a subscribe, called only once the job's channel is live. */
  readSnapshot(jobId: string): Promise<Snapshot>
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

export function createWsBehavior(ctx: WsContext): WebSocketBehavior<SocketData> {
  const { config, watched, metrics, log } = ctx
  let nextSocketId = 1

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
      const snapshot = await liveSnapshot(job)
      if (data.closed || data.jobs.get(jobId) !== 'pending') return
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

  async function liveSnapshot(job: WatchedJob): Promise<Snapshot> {
    await withDeadline(watched.whenLive(job), config.brokerTimeoutMs, 'broker subscription')
    return ctx.readSnapshot(job.id)
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
      if (ctx.isClosing()) {
        metrics.countRejectedUpgrade('shutting_down')
        return respondJson(res, 503, { error: 'server is shutting down; reconnect' }, { 'retry-after': '1' })
      }
      const encoding = chooseSubprotocol(req.getHeader('sec-websocket-protocol'))
      if (encoding === null) {
        metrics.countRejectedUpgrade('bad_subprotocol')
        return respondJson(res, 400, { error: `unsupported subprotocol; offer ${Subprotocol.Json} or ${Subprotocol.Msgpack}` })
      }
      const data: SocketData = {
        id: nextSocketId++,
        encoding: encoding ?? 'json',
        ip: Buffer.from(res.getRemoteAddressAsText()).toString(),
        userId: null,
        jobs: new Map(),
        closed: false,
      }
      res.upgrade(
        data,
        req.getHeader('sec-websocket-key'),
        encoding === undefined ? '' : encoding === 'json' ? Subprotocol.Json : Subprotocol.Msgpack,
        req.getHeader('sec-websocket-extensions'),
        context,
      )
    },

    open(ws) {
      ctx.sockets.add(ws)
      metrics.connectionsOpened++
      metrics.connections++
    },

    message(ws, message, isBinary) {
      const data = ws.getUserData()
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
      data.closed = true
      ctx.sockets.delete(ws)
      metrics.connectionsClosed++
      metrics.connections--
      for (const state of data.jobs.values()) if (state === 'subscribed') metrics.subscriptions--
      if (delivery.publishing) {
        metrics.slowConsumerCloses++
        log.debug({ socket: data.id, ip: data.ip }, 'closed a slow consumer over its backpressure limit')
      } else {
        log.trace({ socket: data.id, code }, 'socket closed')
      }
    },
  }
}
