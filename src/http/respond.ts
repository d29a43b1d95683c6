// Small helpers for uWS HTTP responses. uWS responses must be corked when written outside the
// immediate request callback, and must not be touched once aborted.

import type { HttpResponse } from 'uWebSockets.js'
import { JOB_ID_RULE } from '../wire/protocol.js'

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
  closeConnection = false,
): void {
  res.cork(() => {
    res.writeStatus(statusLine(status)).writeHeader('content-type', contentType)
    for (const [k, v] of Object.entries(headers)) res.writeHeader(k, v)
    res.end(body, closeConnection)
  })
}

export function respondJson(res: HttpResponse, status: number, body: unknown, headers: Record<string, string> = {}, closeConnection = false): void {
  respond(res, status, JSON.stringify(body), 'application/json', { 'cache-control': 'no-store', ...headers }, closeConnection)
}

/** The client's address: the socket's peer, or with a trusted proxy the last entry of its
 * X-Forwarded-For (the address the proxy itself saw; earlier entries are client-supplied). */
export function clientAddress(res: HttpResponse, forwardedFor: string): string {
  if (forwardedFor !== '') {
    const last = forwardedFor.split(',').pop()!.trim()
    if (last !== '') return last.slice(0, 64)
  }
  return Buffer.from(res.getRemoteAddressAsText()).toString()
}

/** Browsers always send Origin on WebSocket upgrades; other clients need not. An empty list
 * allows every origin; `https://*.example.com` allows its subdomains. */
export function originAllowed(origin: string, allowed: readonly string[]): boolean {
  if (allowed.length === 0 || origin === '') return true
  return allowed.some((pattern) => {
    const star = pattern.indexOf('://*.')
    if (star < 0) return pattern === origin
    const scheme = pattern.slice(0, star + 3)
    const suffix = pattern.slice(star + 4) // ".example.com[:port]"
    return origin.startsWith(scheme) && origin.endsWith(suffix) && origin.length > scheme.length + suffix.length
  })
}

/** Reads a request body up to `limit` bytes. uWS hands out chunks that are only valid during
 * the callback, so each is copied. Resolves null when the peer aborted, rejects BodyTooLarge
 * past the limit (the connection is then closed, nothing more is read). */
export class BodyTooLarge extends Error {}

export function readBody(res: HttpResponse, limit: number, aborted: { aborted: boolean; abandoned?: boolean }): Promise<Buffer | null> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let size = 0
    let done = false
    res.onData((chunk, isLast) => {
      // Abandoned: the request was already answered (refused); keep nothing more.
      if (done || aborted.abandoned) return
      size += chunk.byteLength
      if (size > limit) {
        done = true
        reject(new BodyTooLarge(`body larger than ${limit} bytes`))
        return
      }
      chunks.push(Buffer.from(chunk.slice(0)))
      if (isLast) {
        done = true
        resolve(aborted.aborted ? null : Buffer.concat(chunks))
      }
    })
  })
}

export function respondBadJobId(res: HttpResponse): void {
  respondJson(res, 400, { error: 'bad_job_id', message: JOB_ID_RULE })
}

/** decodeURIComponent that answers undefined instead of throwing on a bad % escape. */
export function safeDecode(component: string): string | undefined {
  try {
    return decodeURIComponent(component)
  } catch {
    return undefined
  }
}
