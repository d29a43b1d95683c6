// Plain HTTP endpoints: liveness, readiness, metrics, and GET /jobs/<id> (the polling
// fallback). Async handlers register onAborted before their first await.

import type { HttpResponse, TemplatedApp } from 'uWebSockets.js'
import { AuthError, canWatch, FORBIDDEN_MESSAGE, principalFor, tokenFrom, type Authenticator } from '../access/auth.js'
import { respond, respondBadJobId, respondJson, safeDecode, trackAborted } from './respond.js'
import type { Logger } from '../support/log.js'
import { isValidJobId } from '../wire/protocol.js'
import type { Snapshot } from '../stream/snapshot.js'

export interface HttpContext {
  readonly log: Logger
  readonly auth: Authenticator
  isReady(): boolean
  brokerState(): string
  readSnapshot(jobId: string): Promise<Snapshot>
  /** The node's metrics in Prometheus text format. */
  renderMetrics(): Promise<string>
}

export function addHttpRoutes(app: TemplatedApp, ctx: HttpContext): void {
  app.get('/healthz', (res) => respondJson(res, 200, { status: 'ok' }))

  app.get('/readyz', (res) => {
    const ready = ctx.isReady()
    respondJson(res, ready ? 200 : 503, { ready, broker: ctx.brokerState() })
  })

  app.get('/metrics', (res) => {
    const state = trackAborted(res)
    ctx.renderMetrics().then(
      (text) => state.aborted || respond(res, 200, text, 'text/plain; version=0.0.4; charset=utf-8'),
      (err: Error) => state.aborted || respondJson(res, 500, { error: `metrics unavailable: ${err.message}` }),
    )
  })

  app.get('/jobs/:id', (res, req) => {
    const jobId = safeDecode(req.getParameter(0))
    const token = tokenFrom(req.getHeader('authorization'), req.getQuery('token') ?? '')
    if (!isValidJobId(jobId)) {
      return respondBadJobId(res)
    }
    const state = trackAborted(res)
    void (async () => {
      const principal = await principalFor(ctx.auth, token).catch((err: AuthError) => err)
      if (principal instanceof AuthError) {
        if (!state.aborted) respondJson(res, 401, { error: 'unauthorized', message: principal.message }, { 'www-authenticate': 'Bearer' })
        return
      }
      try {
        const snapshot = await ctx.readSnapshot(jobId)
        if (state.aborted) return
        // The same answer whether or not the job exists.
        if (!canWatch(principal, jobId, snapshot.owner)) return respondJson(res, 403, { error: 'forbidden', message: FORBIDDEN_MESSAGE })
        if (snapshot.data === null) return respondJson(res, 404, { error: 'not_found', job_id: jobId })
        respondJson(res, 200, { job_id: jobId, data: snapshot.data })
      } catch (err) {
        ctx.log.warn({ job: jobId, err: (err as Error).message }, 'GET /jobs snapshot failed')
        if (!state.aborted) respondJson(res, 503, { error: 'unavailable', message: 'job state is unavailable right now' }, { 'retry-after': '1' })
      }
    })()
  })
}

/** Registered last: everything no other route took. */
export function addNotFound(app: TemplatedApp): void {
  app.any('/*', (res: HttpResponse, req) => {
    respondJson(res, 404, { error: 'not_found', path: req.getUrl() })
  })
}

