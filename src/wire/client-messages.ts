// Client -> server messages: decoding and validation. Anything a client sends either becomes a
// typed ClientMessage or a RequestError naming the contract's error code; nothing a client
// sends can throw past this file.

import { Unpackr } from 'msgpackr'
import { isPlainObject } from './payload.js'
import { ErrorCode, isValidJobId, JOB_ID_RULE, type ClientMessage, type Encoding } from './protocol.js'

export class RequestError {
  constructor(readonly code: ErrorCode, readonly message: string, readonly jobId?: string) {}
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
  if (typeof type !== 'string') return new RequestError(ErrorCode.BadMessage, "missing or non-string 'type'")
  switch (type) {
    case 'subscribe_job':
    case 'unsubscribe_job':
    case 'job_status': {
      const jobId = value.job_id
      if (typeof jobId !== 'string') return new RequestError(ErrorCode.BadMessage, `${type} needs a string 'job_id'`)
      if (!isValidJobId(jobId)) {
        return new RequestError(ErrorCode.BadJobId, JOB_ID_RULE)
      }
      const maxHz = value.max_hz
      if (type !== 'subscribe_job' || maxHz === undefined) return { type, job_id: jobId }
      if (typeof maxHz !== 'number' || !Number.isFinite(maxHz) || maxHz <= 0) {
        return new RequestError(ErrorCode.BadMessage, "subscribe_job 'max_hz' must be a number above 0", jobId)
      }
      return { type, job_id: jobId, max_hz: maxHz }
    }
    case 'subscribe_user_jobs':
    case 'unsubscribe_user_jobs': {
      const user = value.user
      if (user === undefined) return { type }
      // The rule of recorded owners: 1..256 characters without whitespace.
      if (typeof user !== 'string' || !/^[^\s]{1,256}$/.test(user)) {
        return new RequestError(ErrorCode.BadMessage, `${type} 'user' must be a user id (1..256 characters without spaces) or 'me'`)
      }
      return { type, user }
    }
    case 'ping': {
      const id = value.id
      if (id === undefined) return { type }
      if ((typeof id === 'string' && id.length <= MAX_PING_ID_LENGTH) || (typeof id === 'number' && Number.isFinite(id))) {
        return { type, id }
      }
      return new RequestError(ErrorCode.BadMessage, `ping 'id' must be a number or a string of at most ${MAX_PING_ID_LENGTH} characters`)
    }
    default:
      return new RequestError(ErrorCode.BadMessage, `unknown message type '${type.slice(0, 64)}'`)
  }
}
