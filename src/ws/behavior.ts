// The /ws/jobs WebSocket behaviour: upgrade (subprotocol, credentials, admission), client
// requests (subscribe, unsubscribe, status, ping), and the uWS subscription handler, which
// fires for every socket joining or leaving a topic and so keeps WatchedJobs' count of a job's
// socket watchers.
//
// Lifetimes: a uWS WebSocket must not be touched after its close handler ran, so every
// continuation after an await checks `closed` first (SocketConnection does), and writes
// happen inside cork().

import type { HttpRequest, HttpResponse, us_socket_context_t, WebSocketBehavior } from 'uWebSockets.js'
import { credentialsOf, type Access } from '../access/access.js'
import type { Admission } from '../access/admission.js'
import { admitConnection } from '../access/admit-connection.js'
import type { Principal } from '../access/auth.js'
import type { Connections } from '../access/connections.js'
import { TokenRate } from '../access/token-bucket.js'
import { originAccepted } from '../http/cors.js'
import { requestIdOf } from '../http/request-id.js'
import { authCode, clientOf, respondJson, trackAborted } from '../http/respond.js'
import type { DeliveryWindow, Fanout } from '../stream/fanout.js'
import { MAX_LISTED_JOBS, MAX_USERS_PER_SOCKET, resolveUser, userTopic, parseUserTopic, type UserJobs } from '../stream/user-jobs.js'
import type { Watches } from '../stream/watch.js'
import type { WatchedJobs } from '../stream/watched-jobs.js'
import type { Config } from '../support/config.js'
import { accessLog, type Logger } from '../support/log.js'
import type { Metrics } from '../support/metrics.js'
import { decodeClientMessage, RequestError } from '../wire/client-messages.js'
import { statusMessage } from '../wire/frames.js'
import { CloseCode, ErrorCode, Subprotocol, type Encoding, type RequestId } from '../wire/protocol.js'
import { parseTopic, rateClass } from '../wire/topics.js'
import type { CatchUp } from './catch-up.js'
import { SocketConnection, type JobRequest, type SocketHolder } from './connection.js'

export interface WsContext {
  readonly config: Config
  readonly watched: WatchedJobs
  readonly watches: Watches
  readonly metrics: Metrics
  readonly log: Logger
  readonly access: Access
  readonly admission: Admission
  readonly connections: Connections
  /** Open from a publish until uWS has written it: an abnormal close inside is a slow socket. */
  readonly delivery: DeliveryWindow
  /** Parks sockets that fall behind and catches them up. */
  readonly catchUp: CatchUp
  /** Owns the rate classes (max_hz) of each job. */
  readonly fanout: Fanout
  /** subscribe_user_jobs: users' job lists and announcements. */
  readonly userJobs: UserJobs
  isClosing(): boolean
  /** This process holds as many connections as it may (support/file-limit.ts). */
  atCapacity(): boolean
}

/** uWS cuts frames above this without a close frame; between maxMessageBytes and this we
 * answer with the contract's 1009. */
export function uwsPayloadCeiling(maxMessageBytes: number): number {
  return Math.max(64 * 1024, maxMessageBytes * 4)
}

const SUBPROTOCOLS: ReadonlyMap<string, Encoding> = new Map([
  [Subprotocol.Json, 'json'], [Subprotocol.Msgpack, 'msgpack'],
  [Subprotocol.JsonV1, 'json'], [Subprotocol.MsgpackV1, 'msgpack'],
])

/** The first offered subprotocol jobwire speaks, with the name to answer with (the server
 * must echo one of the names the client offered); null when none, or nothing was offered. */
export function chooseSubprotocolName(header: string): { readonly name: string; readonly encoding: Encoding } | null {
  for (const offered of header.split(',')) {
    const name = offered.trim()
    const encoding = SUBPROTOCOLS.get(name)
    if (encoding !== undefined) return { name, encoding }
  }
  return null
}

/** Rate-limit refusals beyond the accepted frames by this many end the connection (1008). */
const MAX_STRIKES = 20

/** An accepted frame takes back one strike, not all: a client that keeps sending well over its
 * rate is refused more often than served and is closed, however its frames interleave (with a
 * reset, one accepted frame per refill kept a 15x flood of pings open). */
function forgiveStrike(conn: SocketConnection): void {
  if (conn.strikes > 0) conn.strikes--
}

/** Spends one token of the socket's budget (messages, pings and pongs alike): 'ok', 'refused'
 * (a strike), or 'closed' once refusals outnumber accepted frames by MAX_STRIKES (1008, with
 * `what` in the reason). */
function spendBudget(conn: SocketConnection, rate: TokenRate | null, metrics: Metrics, what: string): 'ok' | 'refused' | 'closed' {
  if (rate === null) return 'ok'
  if (rate.spend(conn, Date.now())) {
    forgiveStrike(conn)
    return 'ok'
  }
  if (++conn.strikes < MAX_STRIKES) return 'refused'
  metrics.countClientError('rate_abuse')
  conn.end(CloseCode.PolicyViolation, `${what} rate limit exceeded repeatedly`)
  return 'closed'
}

/** A ping or pong from the client spends one message token: uWS answers pings itself, so
 * otherwise a flood of them costs CPU and is never refused. No error frame is sent (that would
 * answer a flood with a flood). The pong answering our own idle-timeout ping costs one token
 * per idle period. */
function chargeControlFrame(conn: SocketConnection, rate: TokenRate | null, metrics: Metrics): void {
  if (!conn.closed) spendBudget(conn, rate, metrics, 'ping/pong')
}

export function createWsBehavior(ctx: WsContext): WebSocketBehavior<SocketHolder> {
  const { config, watched, watches, metrics, log, access, admission } = ctx
  const messageBurst = config.maxMessagesPerSec * 2 + config.maxSubscriptionsPerSocket
  /** Each socket keeps its bucket's state (conn.bucket); the rate lives once, here. */
  const messageRate = config.maxMessagesPerSec > 0 ? new TokenRate(config.maxMessagesPerSec, messageBurst) : null

  async function subscribe(conn: SocketConnection, jobId: string, maxHz: number | undefined, request: JobRequest): Promise<void> {
    const state = conn.jobs.get(jobId)
    if (state !== undefined) {
      // Already watched: the latest request's max_hz applies; the first request answers a
      // pending one, a fresh job_status any other.
      changeRate(conn, jobId, rateClass(maxHz, config.maxUpdateHz))
      if (state === 'pending') return
      return status(conn, jobId, request)
    }
    if (conn.jobs.size >= config.maxSubscriptionsPerSocket) {
      refusedLog(conn, jobId, ErrorCode.TooManySubscriptions)
      return conn.sendError(ErrorCode.TooManySubscriptions, `at most ${config.maxSubscriptionsPerSocket} jobs per connection`, jobId, request.id)
    }
    conn.jobs.set(jobId, 'pending')
    conn.setRate(jobId, rateClass(maxHz, config.maxUpdateHz))
    const result = await watches.open(conn.principal, jobId, 'websocket', (_job, snapshot) => {
      if (!conn.join(jobId, snapshot, 'pending', request)) return false
      metrics.subscriptions++
      return true
    }, request.since)
    if (result.ok) return
    if (conn.jobs.get(jobId) === 'pending') {
      conn.jobs.delete(jobId)
      conn.setRate(jobId, 0)
    }
    if (result.refusal !== 'gone') refusedLog(conn, jobId, result.refusal)
    conn.refuse(result.refusal, jobId, request.id)
  }

  /** Moves a watched job to another rate class. A subscribed socket joins the new class's
   * topic and leaves the old one in the same synchronous step, so no frame falls between or
   * arrives twice; joining first keeps the job held throughout. A pending or parked job joins
   * its topic later, and takes the rate it has then. */
  function changeRate(conn: SocketConnection, jobId: string, hz: number): void {
    if ((conn.rates?.get(jobId) ?? 0) === hz) return
    const ws = conn.ws
    if (conn.jobs.get(jobId) !== 'subscribed' || conn.closed || ws === null) return conn.setRate(jobId, hz)
    const from = conn.topicOf(jobId)
    conn.setRate(jobId, hz)
    ws.subscribe(conn.topicOf(jobId))
    ws.unsubscribe(from)
  }

  function refusedLog(conn: SocketConnection, jobId: string, reason: string): void {
    accessLog.info(log, 'refused', { transport: 'websocket', socket: conn.id, ip: conn.ip, user: conn.userId, job: jobId, reason }, `subscribe refused: ${reason}`)
  }

  function unsubscribe(conn: SocketConnection, jobId: string, id: RequestId | undefined): void {
    const state = conn.jobs.get(jobId)
    conn.jobs.delete(jobId)
    if (state === 'subscribed') {
      conn.ws?.unsubscribe(conn.topicOf(jobId))
      metrics.subscriptions--
    } else if (state === 'parked') {
      ctx.catchUp.release(conn, jobId)
      metrics.subscriptions--
    }
    conn.setRate(jobId, 0)
    conn.send(id === undefined ? { type: 'unsubscribed', job_id: jobId } : { type: 'unsubscribed', job_id: jobId, id })
  }

  async function subscribeUser(conn: SocketConnection, requested: string | undefined, id: RequestId | undefined): Promise<void> {
    const echo = id === undefined ? {} : { id }
    const user = resolveUser(conn.principal, requested)
    const state = ctx.userJobs.stateOf(conn, user)
    if (state === 'pending') return // the first request will answer
    if (state === undefined && ctx.userJobs.watching(conn) >= MAX_USERS_PER_SOCKET) {
      metrics.countClientError(ErrorCode.TooManySubscriptions)
      return conn.send({ type: 'error', code: ErrorCode.TooManySubscriptions, message: `at most ${MAX_USERS_PER_SOCKET} users' jobs per connection`, user, ...echo })
    }
    if (state === 'subscribed') {
      // Answered with a fresh list, as a repeated subscribe_job is with a fresh job_status.
      const jobIds = await ctx.userJobs.list(user, MAX_LISTED_JOBS).then((jobs) => jobs.map((j) => j.job_id), () => null)
      if (jobIds !== null) conn.send({ type: 'user_jobs', user, job_ids: jobIds, ...echo })
      return
    }
    const result = await ctx.userJobs.open(conn, conn.principal, user, 'websocket', (jobIds) => {
      const ws = conn.ws
      if (conn.closed || ws === null) return false
      ws.cork(() => {
        ws.subscribe(userTopic(conn.encoding, user))
        conn.send({ type: 'user_jobs', user, job_ids: jobIds, ...echo })
      })
      return true
    })
    if (result.ok || result.refusal === 'gone') return
    accessLog.info(log, 'refused', { transport: 'websocket', socket: conn.id, ip: conn.ip, user: conn.userId, watched_user: user, reason: result.refusal }, `subscribe_user_jobs refused: ${result.refusal}`)
    const code = result.refusal === 'forbidden' ? ErrorCode.Forbidden : ErrorCode.Unavailable
    metrics.countClientError(code)
    conn.send(result.refusal === 'forbidden'
      ? { type: 'error', code, message: "not allowed to watch this user's jobs", user, ...echo }
      : { type: 'error', code, message: 'the job list is unavailable right now; retry shortly', user, retry_after_ms: 1000, ...echo })
  }

  function unsubscribeUser(conn: SocketConnection, requested: string | undefined, id: RequestId | undefined): void {
    const user = resolveUser(conn.principal, requested)
    if (ctx.userJobs.stateOf(conn, user) === 'subscribed') conn.ws?.unsubscribe(userTopic(conn.encoding, user))
    ctx.userJobs.forget(conn, user)
    conn.send(id === undefined ? { type: 'unsubscribed_user_jobs', user } : { type: 'unsubscribed_user_jobs', user, id })
  }

  async function status(conn: SocketConnection, jobId: string, request: JobRequest): Promise<void> {
    const result = await watches.read(conn.principal, jobId, 'websocket', request.since)
    if (result.ok) return conn.send(statusMessage(jobId, result.data, 'requested', { stalled: result.stalled, since: request.since, id: request.id }))
    if (result.refusal !== 'gone') refusedLog(conn, jobId, result.refusal)
    const state = conn.jobs.get(jobId)
    // Forbidden now (the job id names someone else's job): a subscription to it ends too, or
    // its next update would still arrive.
    if (result.refusal === 'forbidden' && (state === 'subscribed' || state === 'parked')) return conn.revoke(jobId, 'forbidden', request.id)
    conn.refuse(result.refusal, jobId, request.id)
  }

  return {
    compression: 0, // uWS.DISABLED: progress frames are small; deflate would cost more than it saves
    maxPayloadLength: uwsPayloadCeiling(config.maxMessageBytes),
    // The hard cap: a socket is parked (catch-up.ts) long before this, checked at least once
    // per quarter of the room above --catch-up-bytes published to its jobs, so only a frame
    // larger than that room (or a threshold set above the cap) reaches it. Past it uWS
    // closes the socket rather than silently skipping frames; the client reconnects and its
    // job_status brings it to the latest state.
    maxBackpressure: config.maxBackpressureBytes,
    closeOnBackpressureLimit: 1,
    idleTimeout: config.idleTimeoutSec,
    sendPingsAutomatically: true,

    upgrade(res: HttpResponse, req: HttpRequest, context: us_socket_context_t) {
      // req is only valid during this call: copy everything out of it before any await.
      const key = req.getHeader('sec-websocket-key')
      const extensions = req.getHeader('sec-websocket-extensions')
      const origin = req.getHeader('origin')
      const credentials = credentialsOf(req)
      const { ip, limitKey } = clientOf(res, req, config)
      const offered = req.getHeader('sec-websocket-protocol')
      const chosen = chooseSubprotocolName(offered)
      const encoding = chosen?.encoding ?? (offered.trim() === '' ? undefined : null)
      const request = requestIdOf(req)
      const refuse = (status: number, reason: string, body: Record<string, unknown>, headers: Record<string, string> = {}, closeConnection = false) => {
        metrics.countRejectedUpgrade(reason)
        accessLog.info(log, 'refused', { transport: 'websocket', request, ip, reason, ...(reason === 'origin' ? { origin } : {}) }, `upgrade refused: ${reason}`)
        respondJson(res, status, body, { 'x-request-id': request, ...headers }, closeConnection)
      }
      if (ctx.isClosing()) return refuse(503, 'shutting_down', { error: 'server is shutting down; reconnect' }, { 'retry-after': '1' })
      // Closed at once: at capacity, every descriptor a refused client keeps is one the next
      // accept() needs.
      if (ctx.atCapacity()) return refuse(503, 'at_capacity', { error: 'at_capacity', message: 'this node holds all the connections it can; retry (another node)' }, { 'retry-after': '1' }, true)
      if (encoding === null) {
        return refuse(400, 'bad_subprotocol', { error: `unsupported subprotocol; offer ${Subprotocol.Json} or ${Subprotocol.Msgpack}` })
      }
      // The gateway's own pages (demo, test page, admin) connect from its own origin, which an
      // operator's list of app origins need not name.
      if (!originAccepted(origin, req.getHeader('host'), config.allowedOrigins)) {
        return refuse(403, 'origin', { error: `origin ${origin} is not allowed` })
      }
      const aborted = trackAborted(res)
      const upgrade = (conn: SocketConnection) => res.cork(() => {
        res.upgrade<SocketHolder>({ conn, request }, key, chosen?.name ?? '', extensions, context)
      })
      const newConnection = (principal: Principal | null) =>
        new SocketConnection(ctx.connections.nextId(), encoding ?? 'json', ip, limitKey, principal, Date.now(), metrics)
      void (async () => {
        const admitted = await admitConnection(admission, access, {
          credentials, limitKey, transport: 'websocket', ticketFor: newConnection, gone: () => aborted.aborted,
        })
        switch (admitted.kind) {
          case 'gone':
            return
          case 'unauthenticated':
            if (!aborted.aborted) refuse(401, `token_${admitted.error.code}`, { error: 'unauthorized', code: authCode(admitted.error), message: admitted.error.message }, { 'www-authenticate': 'Bearer' })
            return
          case 'limited': {
            // Browsers cannot read an HTTP status: the socket opens to say why (open()).
            const conn = admitted.ticket ?? newConnection(null)
            conn.refused = { reason: admitted.reason, retryAfterMs: admitted.retryAfterMs, cause: admitted.cause }
            return upgrade(conn)
          }
          case 'admitted':
            return upgrade(admitted.ticket)
        }
      })()
    },

    open(ws) {
      const holder = ws.getUserData()
      const conn = holder.conn
      const request = holder.request
      holder.request = undefined
      conn.ws = ws
      if (conn.refused !== null) {
        // Refused by a connection cap: browsers cannot read an HTTP status, so the socket says
        // why (error + retry hint) and closes with 1013, "try again later".
        const { reason, retryAfterMs, cause } = conn.refused
        metrics.countRejectedUpgrade(cause)
        accessLog.info(log, 'rate_limited', { transport: 'websocket', request, socket: conn.id, ip: conn.ip, user: conn.userId, reason, cause, retryAfterMs }, 'connection refused: over a connection cap (closed with 1013)')
        conn.send({ type: 'error', code: ErrorCode.RateLimited, message: reason, retry_after_ms: retryAfterMs })
        conn.end(CloseCode.TryAgainLater, `retry-after-ms=${retryAfterMs}`)
        conn.closed = true
        return
      }
      ctx.connections.add(conn)
      metrics.connectionsOpened++
      metrics.connections++
      accessLog.info(log, 'connect', { transport: 'websocket', request, socket: conn.id, ip: conn.ip, user: conn.userId, encoding: conn.encoding }, 'connected')
    },

    message(ws, message, isBinary) {
      const conn = ws.getUserData().conn
      if (conn.closed) return
      const spent = spendBudget(conn, messageRate, metrics, 'message')
      if (spent === 'closed') return
      if (spent === 'refused') {
        metrics.countClientError(ErrorCode.RateLimited)
        accessLog.info(log, 'rate_limited', { transport: 'websocket', socket: conn.id, ip: conn.ip, user: conn.userId, strikes: conn.strikes }, 'message refused: over --max-messages-per-sec')
        conn.send({ type: 'error', code: ErrorCode.RateLimited, message: `at most ${config.maxMessagesPerSec} messages per second`, retry_after_ms: messageRate!.waitMs(conn.bucket, Date.now()) })
        return
      }
      if (message.byteLength > config.maxMessageBytes) {
        metrics.countClientError('message_too_big')
        conn.end(CloseCode.MessageTooBig, `message larger than ${config.maxMessageBytes} bytes`)
        return
      }
      const request = decodeClientMessage(conn.encoding, message, isBinary)
      if (request instanceof RequestError) return conn.sendError(request.code, request.message, request.jobId, request.id)
      switch (request.type) {
        case 'subscribe_job':
          return void subscribe(conn, request.job_id, request.max_hz, request)
        case 'unsubscribe_job':
          return unsubscribe(conn, request.job_id, request.id)
        case 'job_status':
          return void status(conn, request.job_id, request)
        case 'ping':
          return conn.send(request.id === undefined ? { type: 'pong' } : { type: 'pong', id: request.id })
        case 'subscribe_user_jobs':
          return void subscribeUser(conn, request.user, request.id)
        case 'unsubscribe_user_jobs':
          return unsubscribeUser(conn, request.user, request.id)
      }
    },

    ping(ws) {
      chargeControlFrame(ws.getUserData().conn, messageRate, metrics)
    },

    pong(ws) {
      chargeControlFrame(ws.getUserData().conn, messageRate, metrics)
    },

    subscription(_ws, topic, newCount, oldCount) {
      const name = Buffer.from(topic).toString('latin1')
      const parsed = parseTopic(name)
      if (parsed === undefined) {
        // A user's topic holds the user's channel as a job's topic holds the job's.
        const user = parseUserTopic(Buffer.from(topic).toString('utf8'))
        if (user === undefined) return
        if (newCount > oldCount) ctx.userJobs.channels.acquire(user)
        else {
          const held = ctx.userJobs.channels.get(user)
          if (held !== undefined) ctx.userJobs.channels.release(held)
        }
        return
      }
      if (newCount > oldCount) {
        const job = watched.acquire(parsed.jobId)
        if (parsed.hz > 0) ctx.fanout.joinRate(job, parsed.hz)
        ctx.catchUp.joined(job, _ws.getUserData().conn)
      } else {
        const job = watched.get(parsed.jobId)
        if (job === undefined) return
        if (parsed.hz > 0) ctx.fanout.leaveRate(job, parsed.hz)
        ctx.catchUp.left(job, _ws.getUserData().conn)
        watched.release(job)
      }
    },

    close(ws, code, message) {
      const conn = ws.getUserData().conn
      conn.ws = null
      if (conn.refused !== null) return // never admitted, never counted
      accessLog.info(log, 'close', {
        transport: 'websocket', socket: conn.id, ip: conn.ip, user: conn.userId, code,
        reason: Buffer.from(message).toString('utf8'), jobs: conn.subscriptions().length,
        seconds: Math.round((Date.now() - conn.connectedAt) / 1000),
      }, `closed (${code})`)
      conn.closed = true
      ctx.userJobs.forget(conn)
      ctx.connections.remove(conn)
      admission.release(conn)
      metrics.connectionsClosed++
      metrics.connections--
      for (const state of conn.jobs.values()) if (state !== 'pending') metrics.subscriptions--
      const parked = conn.held !== null
      if (parked) ctx.catchUp.release(conn)
      ctx.catchUp.closed(conn)
      if (code === CloseCode.Abnormal && (parked || ctx.delivery.open)) {
        metrics.slowConsumerCloses++
        log.debug({ socket: conn.id, ip: conn.ip }, 'cut a socket that could not take its frames (over its backpressure limit, or gone)')
      } else {
        log.trace({ socket: conn.id, code }, 'socket closed')
      }
    },
  }
}
