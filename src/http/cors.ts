// CORS: what a page on another origin may read from the gateway.
//
// - /client.js (and its map) is public and read-only: any origin, never with credentials.
// - The job routes (GET /jobs/<id>, the SSE stream GET /jobs/<id>/events, the producer API
//   POST /jobs/<id>/progress, a user's jobs GET /jobs) follow config.allowedOrigins, the list
//   that also governs WebSocket upgrades (originAccepted, both use it):
//   - empty (any origin; only with access control on, or when the operator wrote `*`):
//     `Access-Control-Allow-Origin: *` and no credentials. jobwire authenticates with bearer
//     tokens, never cookies, so "any origin" must not mean "any origin with the visitor's
//     cookies": browsers refuse `*` with credentials, and so do we.
//   - a list: the request's origin is echoed when it is listed (with `Vary: Origin`, so a
//     cache never hands one origin's answer to another) and credentials are allowed, because
//     the operator named that origin. Any other origin is refused with 403 before any work.
//     While the gateway is open (--open, no key) and --allowed-origins is not given, the list
//     is `loopback` (config.ts): a website cannot drive an open gateway from a visitor's
//     browser, only pages on this machine can.
//   A request without Origin (curl, a worker, a same-origin GET) is not a CORS request and is
//   not affected, and neither is a request whose Origin is the gateway's own (its demo pages);
//   the same holds for WebSocket upgrades (ws/behavior.ts).
// - Preflights (OPTIONS) are answered for each of these routes. Private Network Access
//   (`Access-Control-Allow-Private-Network`) only with --allow-private-network.

import type { HttpRequest, HttpResponse, TemplatedApp } from 'uWebSockets.js'
import { originAllowed, respond, respondJson } from './respond.js'

/** Request headers a cross-origin page may send: tokens, bodies, SSE resumption, the owner. */
const ALLOWED_HEADERS = 'authorization, content-type, last-event-id, cache-control, x-jobwire-owner'
/** Response headers a page may read besides the safelisted ones: the retry hint of 429/503. */
const EXPOSED_HEADERS = 'retry-after'
const PREFLIGHT_MAX_AGE_SEC = '600'

export type CorsHeaders = Readonly<Record<string, string>>

/** What a job route answers to a request's Origin: its CORS headers, or null for an origin
 * that is not allowed. `host` is the request's Host header. */
export function jobRouteCors(origin: string, host: string, allowedOrigins: readonly string[]): CorsHeaders | null {
  if (origin === '' || isSameOrigin(origin, host)) return { vary: 'origin' }
  if (!originAccepted(origin, host, allowedOrigins)) return null
  if (allowedOrigins.length === 0) {
    return { 'access-control-allow-origin': '*', 'access-control-expose-headers': EXPOSED_HEADERS, vary: 'origin' }
  }
  return {
    'access-control-allow-origin': origin,
    'access-control-allow-credentials': 'true',
    'access-control-expose-headers': EXPOSED_HEADERS,
    vary: 'origin',
  }
}

/** The headers of the public, read-only assets: any origin, no credentials. */
export const PUBLIC_CORS: CorsHeaders = { 'access-control-allow-origin': '*', 'cross-origin-resource-policy': 'cross-origin' }

/** A browser cannot forge Host, so an Origin naming the Host it sent is the gateway's own page. */
export function isSameOrigin(origin: string, host: string): boolean {
  if (host === '') return false
  const at = origin.indexOf('://')
  return at > 0 && origin.slice(at + 3).toLowerCase() === host.toLowerCase()
}

/** Whether a browser page on `origin` may use the gateway (a WebSocket upgrade, a job route):
 * no Origin (not a browser page), the gateway's own origin, or one `allowed` (config.allowedOrigins,
 * as loadConfig decided it) lets in. `host` is the request's Host header. */
export function originAccepted(origin: string, host: string, allowed: readonly string[]): boolean {
  return originAllowed(origin, allowed) || isSameOrigin(origin, host)
}

/** 403 for an origin not allowed; `closeConnection` when a body is left unread. */
export function refuseOrigin(res: HttpResponse, origin: string, closeConnection = false): void {
  respondJson(res, 403, { error: 'origin_not_allowed', message: `origin ${origin} is not in --allowed-origins (an open gateway answers only its own and loopback origins unless listed)` }, {}, closeConnection)
}

/** Demo routes serve the gateway's own page only: any Origin but the gateway's own is
 * refused, whatever --allowed-origins says (a cross-site form or fetch must not start jobs in
 * a visitor's name). A request without Origin is not from a page on another site, unless the
 * browser says so with Sec-Fetch-Site. */
export function sameOriginOnly(origin: string, host: string, fetchSite: string): boolean {
  if (origin !== '') return isSameOrigin(origin, host)
  return fetchSite === '' || fetchSite === 'same-origin' || fetchSite === 'none'
}

/** Answers the preflight of one job route; `methods` is what the route serves. */
function answerPreflight(res: HttpResponse, req: HttpRequest, methods: string, allowedOrigins: readonly string[], allowPrivateNetwork: boolean): void {
  const origin = req.getHeader('origin')
  const cors = jobRouteCors(origin, req.getHeader('host'), allowedOrigins)
  if (cors === null) return refuseOrigin(res, origin)
  respond(res, 204, '', 'text/plain', {
    ...cors,
    'access-control-allow-methods': methods,
    'access-control-allow-headers': ALLOWED_HEADERS,
    'access-control-max-age': PREFLIGHT_MAX_AGE_SEC,
    // A public page reaching a gateway on a private address (a developer's 127.0.0.1) asks this
    // too: answered only when the operator asked for it (--allow-private-network), for an
    // origin the check above allowed.
    ...(allowPrivateNetwork && req.getHeader('access-control-request-private-network') === 'true' ? { 'access-control-allow-private-network': 'true' } : {}),
  })
}

export function addPreflightRoutes(app: TemplatedApp, allowedOrigins: readonly string[], allowPrivateNetwork = false): void {
  const preflight = (methods: string) => (res: HttpResponse, req: HttpRequest) => answerPreflight(res, req, methods, allowedOrigins, allowPrivateNetwork)
  app.options('/jobs', preflight('GET')) // a user's jobs (http/user-jobs.ts)
  app.options('/jobs/:id', preflight('GET'))
  app.options('/jobs/:id/events', preflight('GET'))
  app.options('/jobs/:id/progress', preflight('POST'))
  const publicPreflight = (res: HttpResponse) =>
    respond(res, 204, '', 'text/plain', { ...PUBLIC_CORS, 'access-control-allow-methods': 'GET', 'access-control-max-age': PREFLIGHT_MAX_AGE_SEC })
  app.options('/client.js', publicPreflight)
  app.options('/client.js.map', publicPreflight)
}
