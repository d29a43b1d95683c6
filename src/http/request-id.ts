// A request's id, for correlating log lines: the caller's X-Request-Id when it sent a sane one
// (a proxy's or an app's), else one made here, unique across processes and hosts (a random
// prefix per process, then a counter). HTTP answers carry it back in X-Request-Id.

import { randomBytes } from 'node:crypto'
import type { HttpRequest, HttpResponse } from 'uWebSockets.js'
import { addAnswerHeaders } from './respond.js'

const PROCESS_PREFIX = randomBytes(4).toString('hex')
let counter = 0

/** A caller's id is taken only as an id: short, and of characters that need no escaping in a
 * log line or a header. */
const GIVEN = /^[A-Za-z0-9._:-]{1,64}$/

export function requestIdOf(req: HttpRequest): string {
  const given = req.getHeader('x-request-id')
  if (GIVEN.test(given)) return given
  return `${PROCESS_PREFIX}-${(++counter).toString(36)}`
}

/** The request's id, also sent back on every answer to it (X-Request-Id). */
export function answerWithRequestId(res: HttpResponse, req: HttpRequest): string {
  const id = requestIdOf(req)
  addAnswerHeaders(res, { 'x-request-id': id })
  return id
}
