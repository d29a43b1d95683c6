// Plain HTTP endpoints: liveness, readiness, metrics, and GET /jobs/<id> (the polling
// fallback). Async handlers register onAborted before their first await.

import { VERSION } from '../support/version.js'
import type { HttpResponse, TemplatedApp } from 'uWebSockets.js'
import { credentialsOf, type Access } from '../access/access.js'
import { AuthError, FORBIDDEN_MESSAGE } from '../access/auth.js'
import type { AddressRule } from '../access/client-address.js'
import type { Watches } from '../stream/watch.js'
import { accessLog, type Logger } from '../support/log.js'
import { FORBIDDEN_RETRY_MS, isValidJobId } from '../wire/protocol.js'
import { addPreflightRoutes, jobRouteCors, refuseOrigin } from './cors.js'
import { addAnswerHeaders, clientOf, respond, respondBadJobId, respondJson, respondUnauthorized, safeDecode, trackAborted, authCode } from './respond.js'
import { answerWithRequestId } from './request-id.js'

export interface HttpContext {
  readonly access: Access
  readonly watches: Watches
  /** --allowed-origins: which other origins' pages may read job routes (see cors.ts). */
  readonly allowedOrigins: readonly string[]
  /** --allow-private-network: answer Private Network Access preflights (cors.ts). */
  readonly allowPrivateNetwork?: boolean
  readonly addressRule: AddressRule
  readonly log: Logger
  isReady(): boolean
  notReadyReason(): string | null
  brokerState(): string
  /** The node's metrics in Prometheus text format. */
  renderMetrics(): Promise<string>
}

export function addHttpRoutes(app: TemplatedApp, ctx: HttpContext): void {
  app.get('/healthz', (res) => respondJson(res, 200, { status: 'ok', version: VERSION }))

  app.get('/readyz', (res) => {
    const ready = ctx.isReady()
    respondJson(res, ready ? 200 : 503, { ready, broker: ctx.brokerState(), ...(ready ? {} : { reason: ctx.notReadyReason() }) })
  })

  app.get('/metrics', (res) => {
    const state = trackAborted(res)
    ctx.renderMetrics().then(
      (text) => state.aborted || respond(res, 200, text, 'text/plain; version=0.0.4; charset=utf-8'),
      (err: Error) => state.aborted || respondJson(res, 500, { error: `metrics unavailable: ${err.message}` }),
    )
  })

  addPreflightRoutes(app, ctx.allowedOrigins, ctx.allowPrivateNetwork === true)

  app.get('/jobs/:id', (res, req) => {
    const jobId = safeDecode(req.getParameter(0))
    const credentials = credentialsOf(req)
    const origin = req.getHeader('origin')
    const cors = jobRouteCors(origin, req.getHeader('host'), ctx.allowedOrigins)
    const { ip } = clientOf(res, req, ctx.addressRule)
    const request = answerWithRequestId(res, req)
    const refused = (reason: string, user: string | null = null) =>
      accessLog.info(ctx.log, 'refused', { transport: 'http', request, ip, user, job: jobId, reason }, `GET /jobs/<id> refused: ${reason}`)
    if (cors === null) {
      refused('origin')
      return refuseOrigin(res, origin)
    }
    addAnswerHeaders(res, cors)
    if (!isValidJobId(jobId)) return respondBadJobId(res)
    const state = trackAborted(res)
    void (async () => {
      const principal = await ctx.access.authenticate(credentials, 'http')
      if (principal instanceof AuthError) {
        refused(`token_${principal.code}`)
        return state.aborted || respondUnauthorized(res, principal.message, false, authCode(principal))
      }
      const result = await ctx.watches.read(principal, jobId, 'http')
      if (state.aborted) return
      if (result.ok) {
        if (result.data === null) return respondJson(res, 404, { error: 'not_found', job_id: jobId })
        return respondJson(res, 200, { job_id: jobId, data: result.data })
      }
      refused(result.refusal, principal?.userId ?? null)
      // Also the answer for a job with no state yet: retryable.
      if (result.refusal === 'forbidden') return respondJson(res, 403, { error: 'forbidden', message: FORBIDDEN_MESSAGE, retry_ms: FORBIDDEN_RETRY_MS })
      respondJson(res, 503, { error: 'unavailable', message: 'job state is unavailable right now' }, { 'retry-after': '1' })
    })()
  })
}

/** Registered last: everything no other route took. */
export function addNotFound(app: TemplatedApp): void {
  app.any('/*', (res: HttpResponse, req) => {
    respondJson(res, 404, { error: 'not_found', path: req.getUrl() })
  })
}

