// GET /jobs/<id>/events: Server-Sent Events, the fallback for clients that cannot open a
// WebSocket. The same messages as the socket (job_status, then job_update, each with `id:` =
// seq), the same credentials, access rule and connection caps, through the same watch flow.

import type { TemplatedApp } from 'uWebSockets.js'
import { credentialsOf, type Access } from '../access/access.js'
import type { Admission, AdmissionRequest } from '../access/admission.js'
import { admitConnection } from '../access/admit-connection.js'
import { FORBIDDEN_MESSAGE } from '../access/auth.js'
import type { Connections } from '../access/connections.js'
import { jobRouteCors, refuseOrigin } from '../http/cors.js'
import { addAnswerHeaders, answerHeadersOf, clientOf, respondBadJobId, respondJson, respondUnauthorized, safeDecode, trackAborted, authCode } from '../http/respond.js'
import type { SnapshotReader } from '../stream/snapshot.js'
import type { Watches } from '../stream/watch.js'
import type { WatchedJobs } from '../stream/watched-jobs.js'
import type { Config } from '../support/config.js'
import { accessLog, type Logger } from '../support/log.js'
import type { Metrics } from '../support/metrics.js'
import { FORBIDDEN_RETRY_MS, isValidJobId } from '../wire/protocol.js'
import { SSE_RETRY_MS, SseStream } from './stream.js'
import { answerWithRequestId } from '../http/request-id.js'

const HEARTBEAT_MS = 15_000

export interface SseContext {
  readonly config: Config
  readonly access: Access
  readonly admission: Admission
  readonly watched: WatchedJobs
  readonly watches: Watches
  readonly snapshots: SnapshotReader
  readonly connections: Connections
  readonly metrics: Metrics
  readonly log: Logger
  isClosing(): boolean
  atCapacity(): boolean
}

/** Registers the route; the returned function stops its heartbeat. */
export function addSseRoute(app: TemplatedApp, ctx: SseContext): () => void {
  const streams = new Set<SseStream>()
  const heartbeat = setInterval(() => {
    const now = Date.now()
    for (const s of streams) s.heartbeat(now)
  }, HEARTBEAT_MS)
  heartbeat.unref()

  app.get('/jobs/:id/events', (res, req) => {
    const jobId = safeDecode(req.getParameter(0))
    const credentials = credentialsOf(req)
    const { ip, limitKey } = clientOf(res, req, ctx.config)
    const origin = req.getHeader('origin')
    const cors = jobRouteCors(origin, req.getHeader('host'), ctx.config.allowedOrigins)
    const requestId = answerWithRequestId(res, req)
    const refused = (reason: string, user: string | null = null) =>
      accessLog.info(ctx.log, 'refused', { transport: 'sse', request: requestId, ip, user, job: jobId, reason }, `SSE stream refused: ${reason}`)
    if (cors === null) {
      refused('origin')
      return refuseOrigin(res, origin)
    }
    addAnswerHeaders(res, cors)
    if (ctx.isClosing()) return respondJson(res, 503, { error: 'shutting_down' }, { 'retry-after': '1' })
    if (ctx.atCapacity()) {
      refused('at_capacity')
      ctx.metrics.countRefusal('sse', 'at_capacity')
      return respondJson(res, 503, { error: 'at_capacity', message: 'this node holds all the connections it can; retry (another node)' }, { 'retry-after': '1' }, true)
    }
    if (!isValidJobId(jobId)) return respondBadJobId(res)
    const request = trackAborted(res)
    const refuse = (refusal: { reason: string; retryAfterMs: number; cause: string }) => {
      accessLog.info(ctx.log, 'rate_limited', { transport: 'sse', request: requestId, ip, job: jobId, reason: refusal.reason, cause: refusal.cause }, 'SSE stream refused: rate limited')
      ctx.metrics.countRefusal('sse', refusal.cause)
      if (!request.aborted) respondJson(res, 429, { error: 'rate_limited', message: refusal.reason, retry_after_ms: refusal.retryAfterMs }, { 'retry-after': String(Math.ceil(refusal.retryAfterMs / 1000)) })
    }
    void (async () => {
      const admitted = await admitConnection(ctx.admission, ctx.access, {
        credentials, limitKey, transport: 'sse', gone: () => request.aborted,
        ticketFor: (principal): AdmissionRequest => ({ userId: principal?.userId ?? null, address: limitKey }),
      })
      if (admitted.kind === 'gone') return
      if (admitted.kind === 'limited') return refuse(admitted)
      if (admitted.kind === 'unauthenticated') {
        refused(`token_${admitted.error.code}`)
        return request.aborted || respondUnauthorized(res, admitted.error.message, false, authCode(admitted.error))
      }
      const { principal, ticket } = admitted
      const result = await ctx.watches.open(principal, jobId, 'sse', (job, snapshot) => {
        if (request.aborted) return false
        const user = principal?.userId ?? null
        const openedAt = Date.now()
        const stream = new SseStream(ctx.connections.nextId(), res, jobId, principal, ip, ctx.metrics, () => {
          accessLog.info(ctx.log, 'close', { transport: 'sse', stream: stream.id, ip, user, job: jobId, seconds: Math.round((Date.now() - openedAt) / 1000) }, 'SSE stream closed')
          job.sinks.delete(stream)
          streams.delete(stream)
          ctx.connections.remove(stream)
          ctx.watched.release(job)
          ctx.admission.release(ticket)
          ctx.metrics.sseStreams--
        }, () => ctx.snapshots.read(jobId))
        request.onAbort = () => stream.gone()
        res.cork(() => {
          res.writeStatus('200 OK')
            .writeHeader('content-type', 'text/event-stream')
            .writeHeader('cache-control', 'no-store')
            .writeHeader('x-accel-buffering', 'no')
          for (const [name, value] of Object.entries(answerHeadersOf(res))) res.writeHeader(name, value)
          res.write(`retry: ${SSE_RETRY_MS}\n\n`)
        })
        accessLog.info(ctx.log, 'connect', { transport: 'sse', request: requestId, stream: stream.id, ip, user, job: jobId }, 'SSE stream opened')
        // The stream holds the job for its lifetime; joining its sinks and sending the
        // snapshot in one step means nothing the channel delivers can come before it.
        ctx.watched.acquire(jobId)
        job.sinks.add(stream)
        streams.add(stream)
        ctx.connections.add(stream)
        ctx.metrics.sseStreams++
        stream.status(snapshot.data, 'subscribed', snapshot.stalled === true)
        return true
      })
      if (result.ok) return
      ctx.admission.release(ticket)
      if (request.aborted || result.refusal === 'gone') return
      refused(result.refusal, principal?.userId ?? null)
      if (result.refusal === 'forbidden') respondJson(res, 403, { error: 'forbidden', message: FORBIDDEN_MESSAGE, retry_ms: FORBIDDEN_RETRY_MS })
      else respondJson(res, 503, { error: 'unavailable', message: 'job state is unavailable right now' }, { 'retry-after': '1' })
    })()
  })

  return () => clearInterval(heartbeat)
}
