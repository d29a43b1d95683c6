// HEAD on every GET route. Load balancers' health checks and `curl -I` send HEAD; uWS routes
// by method, so without this every HEAD met the 404 fallback. Rather than a second handler per
// route (which would drift from the GET it mirrors), each GET handler also runs for HEAD with
// a response that sends the same status and headers, reports the body's length, and drops the
// body. A streaming route (SSE) is told the peer left once its head is out, so it releases
// what it holds as for any client that goes away.

import type { HttpRequest, HttpResponse, RecognizedString, TemplatedApp } from 'uWebSockets.js'

type Handler = (res: HttpResponse, req: HttpRequest) => void | Promise<void>

function byteLength(body: RecognizedString | undefined): number {
  if (body === undefined) return 0
  if (typeof body === 'string') return Buffer.byteLength(body)
  return body.byteLength
}

/** `res` as a HEAD request's handler sees it: every body-writing call ends the response
 * without a body, once; later writes are no-ops that report success. */
export function headResponse(res: HttpResponse): HttpResponse {
  let ended = false
  const aborted: Array<() => void> = []
  let peerGone = false
  // uWS 20.30's endWithoutBody(length) never completes the response (the process aborts:
  // "returning from a request handler without responding"), and end(body) sends the body
  // even to HEAD: so the length goes out as a header, and the response ends with no
  // arguments at all (an explicit undefined fails the same way).
  const finish = (length: number | undefined): void => {
    if (ended || peerGone) return
    ended = true
    if (length !== undefined) res.writeHeader('content-length', String(length))
    res.endWithoutBody()
  }
  const proxy: HttpResponse = new Proxy(res, {
    get(target, property, receiver) {
      switch (property) {
        case 'end':
          return (body?: RecognizedString) => {
            finish(byteLength(body))
            return proxy
          }
        case 'endWithoutBody':
          return (length?: number) => {
            finish(length)
            return proxy
          }
        case 'tryEnd':
          return (_chunk: RecognizedString, total: number): [boolean, boolean] => {
            finish(total)
            return [true, true]
          }
        case 'write':
          // A streamed body has no length to report: the head goes out as is, and the
          // handler is told the client left, so it stops streaming.
          return () => {
            if (!ended && !peerGone) {
              finish(undefined)
              queueMicrotask(() => {
                for (const handler of aborted) handler()
              })
            }
            return true
          }
        case 'onAborted':
          return (handler: () => void) => {
            aborted.push(handler)
            if (aborted.length === 1) target.onAborted(() => {
              peerGone = true
              if (!ended) for (const h of aborted) h()
            })
            return proxy
          }
        case 'onWritable':
          return () => proxy
      }
      const value = Reflect.get(target, property, receiver) as unknown
      if (typeof value !== 'function') return value
      // Chained calls (res.writeStatus(...).writeHeader(...)) must stay on the proxy.
      return (...args: unknown[]) => {
        const result = (value as (...a: unknown[]) => unknown).apply(target, args)
        return result === target ? proxy : result
      }
    },
  })
  return proxy
}

const forHead = (handler: Handler): Handler => (res, req) => handler(headResponse(res), req)

/**
 * The app as route registration sees it: `get` registers the handler for HEAD too, and the
 * catch-all (`any`) answers a HEAD without a body. Everything else goes to the app itself.
 */
export function withHead(app: TemplatedApp): TemplatedApp {
  const proxy: TemplatedApp = new Proxy(app, {
    get(target, property, receiver) {
      const value = Reflect.get(target, property, receiver) as unknown
      if (property === 'get') {
        return (pattern: RecognizedString, handler: Handler) => {
          target.get(pattern, handler)
          target.head(pattern, forHead(handler))
          return proxy
        }
      }
      if (property === 'any') {
        return (pattern: RecognizedString, handler: Handler) => {
          target.any(pattern, (res, req) => (req.getMethod() === 'head' ? handler(headResponse(res), req) : handler(res, req)))
          return proxy
        }
      }
      if (typeof value !== 'function') return value
      return (...args: unknown[]) => {
        const result = (value as (...a: unknown[]) => unknown).apply(target, args)
        return result === target ? proxy : result
      }
    },
  })
  return proxy
}
