// Small helpers for uWS HTTP responses. uWS responses must be corked when written outside the
// immediate request callback, and must not be touched once aborted.

import { STATUS_CODES } from 'node:http'
import type { HttpRequest, HttpResponse } from 'uWebSockets.js'
import { resolveClient, type AddressRule, type ClientAddress } from '../access/client-address.js'
import { LOOPBACK_ORIGINS } from '../support/config.js'
import { VERSION } from '../support/version.js'
import { JOB_ID_RULE } from '../wire/protocol.js'

export function statusLine(status: number): string {
  return `${status} ${STATUS_CODES[status] ?? 'Status'}`
}

export interface RequestState {
  aborted: boolean
  /** Called once if the peer goes away; uWS takes one onAborted handler per response. */
  onAbort: (() => void) | null
}

/** Tracks whether the peer went away; async handlers check it before writing. */
export function trackAborted(res: HttpResponse): RequestState {
  const state: RequestState = { aborted: false, onAbort: null }
  res.onAborted(() => {
    state.aborted = true
    state.onAbort?.()
  })
  return state
}

/** Headers every answer to a request carries (its CORS headers), whichever helper writes it. */
const answerHeaders = new WeakMap<HttpResponse, Readonly<Record<string, string>>>()

/** Makes every later respond() on `res` carry `headers` as well; set when the request arrives. */
export function addAnswerHeaders(res: HttpResponse, headers: Readonly<Record<string, string>>): void {
  answerHeaders.set(res, { ...answerHeaders.get(res), ...headers })
}

/** The headers addAnswerHeaders() set on `res`, for routes that write their own head (SSE). */
export function answerHeadersOf(res: HttpResponse): Readonly<Record<string, string>> {
  return answerHeaders.get(res) ?? {}
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
    res.writeStatus(statusLine(status)).writeHeader('content-type', contentType).writeHeader('x-jobwire-version', VERSION)
    for (const [k, v] of Object.entries({ ...answerHeaders.get(res), ...headers })) res.writeHeader(k, v)
    res.end(body, closeConnection)
  })
}

export function respondJson(res: HttpResponse, status: number, body: unknown, headers: Record<string, string> = {}, closeConnection = false): void {
  respond(res, status, JSON.stringify(body), 'application/json', { 'cache-control': 'no-store', ...headers }, closeConnection)
}

/** The client behind this request (see access/client-address.ts). Reads the request, so it
 * must run before the handler's first await. */
export function clientOf(res: HttpResponse, req: HttpRequest, rule: AddressRule): ClientAddress {
  const forwardedFor: string[] = []
  if (rule.trustProxy) req.forEach((name, value) => {
    if (name === 'x-forwarded-for') forwardedFor.push(value)
  })
  return resolveClient(rule, Buffer.from(res.getRemoteAddressAsText()).toString(), forwardedFor)
}

/** Browsers always send Origin on WebSocket upgrades; other clients need not. An empty list
 * allows every origin; `https://*.example.com` allows its subdomains; `loopback` allows
 * http(s) origins on localhost, 127.0.0.0/8 and [::1], on any port. */
export function originAllowed(origin: string, allowed: readonly string[]): boolean {
  if (allowed.length === 0 || origin === '') return true
  return allowed.some((pattern) => {
    if (pattern === LOOPBACK_ORIGINS) return isLoopbackOrigin(origin)
    const star = pattern.indexOf('://*.')
    if (star < 0) return pattern === origin
    const scheme = pattern.slice(0, star + 3)
    const suffix = pattern.slice(star + 4) // ".example.com[:port]"
    return origin.startsWith(scheme) && origin.endsWith(suffix) && origin.length > scheme.length + suffix.length
  })
}

/** `http(s)://localhost[:port]`, `http(s)://127.x.x.x[:port]` or `http(s)://[::1][:port]`. */
export function isLoopbackOrigin(origin: string): boolean {
  return /^https?:\/\/(localhost|127\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[::1\])(:\d{1,5})?$/i.test(origin)
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

/** 401 with the reason; the same shape on every route that takes credentials. `code` says
 * which kind, so a client can tell a token to renew (token_expired) from one that is wrong
 * (token_invalid) without reading the message. */
export function respondUnauthorized(res: HttpResponse, message: string, closeConnection = false, code: 'token_expired' | 'token_invalid' = 'token_invalid'): void {
  respondJson(res, 401, { error: 'unauthorized', code, message }, { 'www-authenticate': 'Bearer' }, closeConnection)
}

/** The 401 code for a refused token (access/auth.ts AuthError). */
export function authCode(error: { readonly code: 'missing' | 'invalid' | 'expired' }): 'token_expired' | 'token_invalid' {
  return error.code === 'expired' ? 'token_expired' : 'token_invalid'
}

/** 429 for an address refused after repeated bad credentials. */
export function respondThrottled(res: HttpResponse): void {
  respondJson(res, 429, { error: 'rate_limited', message: 'too many failed attempts from this address; wait and retry' }, { 'retry-after': '1' }, true)
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
