// Client -> server messages: decoding and validation. Anything a client sends either becomes a
// typed ClientMessage or a RequestError naming the contract's error code; nothing a client
// sends can throw past this file.

import { Unpackr } from 'msgpackr'
import { isPlainObject } from './payload.js'
import { ErrorCode, isValidJobId, JOB_ID_RULE, MAX_REQUEST_ID_LENGTH, type ClientMessage, type Encoding, type RequestId, type Since } from './protocol.js'

export class RequestError {
  constructor(readonly code: ErrorCode, readonly message: string, readonly jobId?: string, readonly id?: RequestId) {}
}

const BAD_ID = `'id' must be a string of at most ${MAX_REQUEST_ID_LENGTH} characters or a safe integer`
const BAD_SINCE = "'since' must be {epoch, seq} with two non-negative safe integers"

function isRequestId(id: unknown): id is RequestId {
  return (typeof id === 'string' && id.length <= MAX_REQUEST_ID_LENGTH) || Number.isSafeInteger(id)
}

function isCount(value: unknown): value is number {
  return Number.isSafeInteger(value) && (value as number) >= 0
}

function sinceOf(value: unknown): Since | undefined | null {
  if (value === undefined) return undefined
  if (!isPlainObject(value) || !isCount(value.epoch) || !isCount(value.seq)) return null
  return { epoch: value.epoch, seq: value.seq }
}

const MAX_PING_ID_LENGTH = 128
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' })

export function decodeClientMessage(encoding: Encoding, data: ArrayBuffer, isBinary: boolean): ClientMessage | RequestError {
  let value: unknown
  if (encoding === 'json') {
    if (isBinary) return new RequestError(ErrorCode.BadJson, 'jobwire.json takes JSON text frames, not binary ones')
    try {
      value = JSON.parse(Buffer.from(data).toString('utf8'))
    } catch {
      return new RequestError(ErrorCode.BadJson, 'message is not valid JSON')
    }
  } else {
    if (!isBinary) return new RequestError(ErrorCode.BadJson, 'jobwire.msgpack takes binary msgpack frames, not text ones')
    try {
      value = unpackr.unpack(Buffer.from(data))
    } catch {
      return new RequestError(ErrorCode.BadJson, 'message is not valid msgpack')
    }
  }
  return validateClientMessage(value)
}

export function validateClientMessage(value: unknown): ClientMessage | RequestError {
  if (!isPlainObject(value)) return new RequestError(ErrorCode.BadMessage, 'a message must be an object with a type')
  const type = value.type
  // A valid id is echoed even by the error about the rest of the message.
  const id = value.id
  const echo = isRequestId(id) ? id : undefined
  if (typeof type !== 'string') return new RequestError(ErrorCode.BadMessage, "missing or non-string 'type'", undefined, echo)
  if (type === 'ping') {
    if (id === undefined) return { type }
    if ((typeof id === 'string' && id.length <= MAX_PING_ID_LENGTH) || (typeof id === 'number' && Number.isFinite(id))) {
      return { type, id }
    }
    return new RequestError(ErrorCode.BadMessage, `ping 'id' must be a number or a string of at most ${MAX_PING_ID_LENGTH} characters`)
  }
  if (id !== undefined && echo === undefined) return new RequestError(ErrorCode.BadMessage, `${type.slice(0, 64)} ${BAD_ID}`)
  const withId = <M extends object>(message: M): M => (echo === undefined ? message : { ...message, id: echo })
  switch (type) {
    case 'subscribe_job':
    case 'unsubscribe_job':
    case 'job_status': {
      const jobId = value.job_id
      if (typeof jobId !== 'string') return new RequestError(ErrorCode.BadMessage, `${type} needs a string 'job_id'`, undefined, echo)
      if (!isValidJobId(jobId)) {
        return new RequestError(ErrorCode.BadJobId, JOB_ID_RULE, undefined, echo)
      }
      if (type === 'unsubscribe_job') return withId({ type, job_id: jobId })
      const since = sinceOf(value.since)
      if (since === null) return new RequestError(ErrorCode.BadMessage, `${type} ${BAD_SINCE}`, jobId, echo)
      if (type === 'job_status') return withId(since === undefined ? { type, job_id: jobId } : { type, job_id: jobId, since })
      const maxHz = value.max_hz
      if (maxHz !== undefined && (typeof maxHz !== 'number' || !Number.isFinite(maxHz) || maxHz <= 0)) {
        return new RequestError(ErrorCode.BadMessage, "subscribe_job 'max_hz' must be a number above 0", jobId, echo)
      }
      return withId({ type, job_id: jobId, ...(maxHz === undefined ? {} : { max_hz: maxHz }), ...(since === undefined ? {} : { since }) })
    }
    case 'subscribe_user_jobs':
    case 'unsubscribe_user_jobs': {
      const user = value.user
      if (user === undefined) return withId({ type })
      // The rule of recorded owners: 1..256 characters without whitespace.
      if (typeof user !== 'string' || !/^[^\s]{1,256}$/.test(user)) {
        return new RequestError(ErrorCode.BadMessage, `${type} 'user' must be a user id (1..256 characters without spaces) or 'me'`, undefined, echo)
      }
      return withId({ type, user })
    }
    default:
      return new RequestError(ErrorCode.BadMessage, `unknown message type '${type.slice(0, 64)}'`, undefined, echo)
  }
}
