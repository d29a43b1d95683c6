// An open gateway (--open, no key) answers only requests addressed to a loopback name. Origin
// checks alone do not keep websites out: a page on a name its owner makes resolve to 127.0.0.1
// (DNS rebinding) is, to the browser, on the gateway's own origin, so its requests carry a
// matching Origin, or none at all (same-origin GETs). What such a page cannot choose is the
// Host it sends: its own name. So while open, every route refuses a Host that is not
// localhost, 127.x.x.x or [::1] (any port) before anything else runs.
//
// Exceptions: a request without Host (HTTP/1.1 clients always send one, browsers included) and
// --insecure-no-auth (the operator chose to be reached by other names). Nothing a request says
// about itself makes one: a rebound page may send X-Forwarded-For on a same-origin fetch, and
// comes from loopback like a same-host proxy. An open gateway behind a proxy that serves it
// under another name therefore answers nothing until that proxy sends a loopback Host, or a
// key is configured, which is what serving it under a public name calls for.

import type { HttpRequest, HttpResponse, TemplatedApp, WebSocketBehavior } from 'uWebSockets.js'
import { isLoopbackHost } from '../access/auth.js'
import type { Metrics } from '../support/metrics.js'
import { respondJson } from './respond.js'

/** Host header -> host name: `[::1]:8080` -> `::1`, `localhost:8080` -> `localhost`. */
export function hostName(host: string): string {
  const value = host.trim().toLowerCase()
  if (value.startsWith('[')) {
    const end = value.indexOf(']')
    return end < 0 ? value : value.slice(1, end)
  }
  const colon = value.lastIndexOf(':')
  return colon < 0 ? value : value.slice(0, colon)
}

/** Whether an open gateway may answer a request sent with this Host header. */
export function loopbackHostAllowed(host: string): boolean {
  return host === '' || isLoopbackHost(hostName(host))
}

type Handler = (res: HttpResponse, req: HttpRequest) => void | Promise<void>
const ROUTE_METHODS = new Set(['get', 'post', 'options', 'del', 'patch', 'put', 'head', 'connect', 'trace', 'any'])

/**
 * The app as route registration sees it while the gateway is open: every handler (and every
 * WebSocket upgrade) first checks the request's Host. Publishing and everything else go to
 * the app itself.
 */
export function loopbackHostsOnly(app: TemplatedApp, metrics: Metrics): TemplatedApp {
  const allowed = (req: HttpRequest): boolean => loopbackHostAllowed(req.getHeader('host'))
  const refuse = (res: HttpResponse, req: HttpRequest): void => {
    metrics.countRefusal('http', 'host_not_allowed')
    respondJson(res, 403, {
      error: 'host_not_allowed',
      message: `this gateway is open (--open, no key) and answers only requests addressed to localhost, 127.x.x.x or [::1], not ${req.getHeader('host')}: configure a key (--jwt-secret...) to serve other names`,
    })
  }
  const guard = (handler: Handler): Handler => (res, req) => (allowed(req) ? handler(res, req) : refuse(res, req))
  const proxy: TemplatedApp = new Proxy(app, {
    get(target, property, receiver) {
      const value = Reflect.get(target, property, receiver) as unknown
      if (typeof value !== 'function') return value
      if (typeof property === 'string' && ROUTE_METHODS.has(property)) {
        return (pattern: string, handler: Handler) => {
          (value as (p: string, h: Handler) => unknown).call(target, pattern, guard(handler))
          return proxy
        }
      }
      if (property === 'ws') {
        return (pattern: string, behavior: WebSocketBehavior<unknown>) => {
          const upgrade = behavior.upgrade
          const guarded: WebSocketBehavior<unknown> = upgrade === undefined ? behavior : {
            ...behavior,
            upgrade: (res, req, context) => (allowed(req) ? upgrade(res, req, context) : refuse(res, req)),
          }
          target.ws(pattern, guarded)
          return proxy
        }
      }
      return (value as (...args: unknown[]) => unknown).bind(target)
    },
  })
  return proxy
}
