// GET /jobs/<id>/events: Server-Sent Events, the fallback for clients that cannot open a
// WebSocket. The same messages as the socket (job_status, then job_update, each with `id:` =
// seq), the same credentials, access rule and connection caps, through the same watch flow.

import type { TemplatedApp } from 'uWebSockets.js'
import { credentialsOf, type Access } from '../access/access.js'
import type { Admission, AdmissionRequest } from '../access/admission.js'
import { AuthError, FORBIDDEN_MESSAGE } from '../access/auth.js'
import type { Connections } from '../access/connections.js'
import { clientOf, respondBadJobId, respondJson, respondUnauthorized, safeDecode, trackAborted } from '../http/respond.js'
import type { SnapshotReader } from '../stream/snapshot.js'
import type { Watches } from '../stream/watch.js'
import type { WatchedJobs } from '../stream/watched-jobs.js'
import type { Config } from '../support/config.js'
import type { Metrics } from '../support/metrics.js'
import { isValidJobId } from '../wire/protocol.js'
import { SseStream } from './stream.js'

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
  isClosing(): boolean
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
    if (ctx.isClosing()) return respondJson(res, 503, { error: 'shutting_down' }, { 'retry-after': '1' })
    if (!isValidJobId(jobId)) return respondBadJobId(res)
    const request = trackAborted(res)
    const refuse = (refusal: { reason: string; retryAfterMs: number }) => {
      ctx.metrics.countRefusal('sse', 'rate_limited')
      if (!request.aborted) respondJson(res, 429, { error: 'rate_limited', message: refusal.reason, retry_after_ms: refusal.retryAfterMs }, { 'retry-after': String(Math.ceil(refusal.retryAfterMs / 1000)) })
    }
    void (async () => {
      // The connection rate before the credentials, as for WebSocket upgrades.
      const charged = await ctx.admission.charge(limitKey)
      if (!charged.ok) return refuse(charged)
      const principal = await ctx.access.authenticate(credentials, 'sse')
      if (principal instanceof AuthError) return request.aborted || respondUnauthorized(res, principal.message)
      const ticket: AdmissionRequest = { userId: principal?.userId ?? null, address: limitKey }
      const admitted = await ctx.admission.admit(ticket)
      if (!admitted.ok) return refuse(admitted)
      const result = await ctx.watches.open(principal, jobId, 'sse', (job, snapshot) => {
        if (request.aborted) return false
        const stream = new SseStream(ctx.connections.nextId(), res, jobId, principal, ip, ctx.metrics, () => {
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
            .write('retry: 2000\n\n')
        })
        // The stream holds the job for its lifetime; joining its sinks and sending the
        // snapshot in one step means nothing the channel delivers can come before it.
        ctx.watched.acquire(jobId)
        job.sinks.add(stream)
        streams.add(stream)
        ctx.connections.add(stream)
        ctx.metrics.sseStreams++
        stream.status(snapshot.data)
        return true
      })
      if (result.ok) return
      ctx.admission.release(ticket)
      if (request.aborted || result.refusal === 'gone') return
      if (result.refusal === 'forbidden') respondJson(res, 403, { error: 'forbidden', message: FORBIDDEN_MESSAGE })
      else respondJson(res, 503, { error: 'unavailable', message: 'job state is unavailable right now' }, { 'retry-after': '1' })
    })()
  })

  return () => clearInterval(heartbeat)
}
