// Small helpers for uWS HTTP responses. uWS responses must be corked when written outside the
// immediate request callback, and must not be touched once aborted.

import type { HttpResponse } from 'uWebSockets.js'

const STATUS: Record<number, string> = {
  200: '200 OK',
  202: '202 Accepted',
  204: '204 No Content',
  400: '400 Bad Request',
  401: '401 Unauthorized',
  403: '403 Forbidden',
  404: '404 Not Found',
  405: '405 Method Not Allowed',
  413: '413 Payload Too Large',
  415: '415 Unsupported Media Type',
  426: '426 Upgrade Required',
  429: '429 Too Many Requests',
  500: '500 Internal Server Error',
  503: '503 Service Unavailable',
}

export function statusLine(status: number): string {
  return STATUS[status] ?? `${status} Status`
}

/** Tracks whether the peer went away; async handlers check it before writing. */
export function trackAborted(res: HttpResponse): { aborted: boolean } {
  const state = { aborted: false }
  res.onAborted(() => {
    state.aborted = true
  })
  return state
}

export function respond(
  res: HttpResponse,
  status: number,
  body: string | Buffer,
  contentType: string,
  headers: Record<string, string> = {},
): void {
  res.cork(() => {
    res.writeStatus(statusLine(status)).writeHeader('content-type', contentType)
    for (const [k, v] of Object.entries(headers)) res.writeHeader(k, v)
    res.end(body)
  })
}

export function respondJson(res: HttpResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  respond(res, status, JSON.stringify(body), 'application/json', { 'cache-control': 'no-store', ...headers })
}
