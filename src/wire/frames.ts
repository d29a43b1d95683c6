// Server -> client frames in both encodings. job_update frames are spliced from the producer's
// own bytes where the encodings match (no re-serialisation); everything else is encoded from
// the message object.

import { pack } from 'msgpackr'
import type { DecodedPayload } from './payload.js'
import { ErrorCode, relationOf, type Encoding, type JobPayload, type JobStatusMessage, type RequestId, type ServerMessage, type Since, type StatusReason } from './protocol.js'

export type Frame = string | Buffer

/** The fixed prefixes of a job's job_update frames. Job ids need no JSON escaping (see
 * JOB_ID_PATTERN), so the id is written as is. */
export interface UpdateHeads {
  readonly json: Buffer
  readonly msgpack: Buffer
}

const JSON_CLOSE = Buffer.from('}')

export function updateHeads(jobId: string): UpdateHeads {
  return {
    json: Buffer.from(`{"type":"job_update","job_id":"${jobId}","data":`),
    // fixmap of 3 entries: type, job_id, data (the payload map follows as the last value)
    msgpack: Buffer.concat([Buffer.from([0x83]), pack('type'), pack('job_update'), pack('job_id'), pack(jobId), pack('data')]),
  }
}

/** HOT PATH */
export function jsonUpdateFrame(jobId: string, heads: UpdateHeads, update: DecodedPayload): Frame {
  if (update.format === 'json') return Buffer.concat([heads.json, update.bytes, JSON_CLOSE])
  return `{"type":"job_update","job_id":"${jobId}","data":${JSON.stringify(update.obj)}}`
}

/** HOT PATH */
export function msgpackUpdateFrame(jobId: string, heads: UpdateHeads, update: DecodedPayload): Buffer {
  if (update.format === 'msgpack') return Buffer.concat([heads.msgpack, update.bytes])
  return pack({ type: 'job_update', job_id: jobId, data: update.obj })
}

// A rate class's job_update (max_hz) that skips seqs says so: `prev_seq` is the seq of the
// update the class delivered before it, and every update in between was received and
// deliberately replaced by this one (conflated), not lost. It goes after `data`, so the frame's
// head, and the splice of the producer's bytes, stay as for any other job_update.
const JSON_PREV_SEQ = ',"prev_seq":'
/** The rate-class map has a fourth entry: fixmap of 4. */
const MSGPACK_MAP_OF_4 = Buffer.from([0x84])
const MSGPACK_PREV_SEQ = pack('prev_seq')

/** HOT PATH (at most a rate class's rate): a job_update for a rate class; with `prevSeq`, it
 * carries `prev_seq`. */
export function jsonRateFrame(jobId: string, heads: UpdateHeads, update: DecodedPayload, prevSeq: number | undefined): Frame {
  if (prevSeq === undefined) return jsonUpdateFrame(jobId, heads, update)
  if (update.format === 'json') return Buffer.concat([heads.json, update.bytes, Buffer.from(`${JSON_PREV_SEQ}${prevSeq}}`, 'latin1')])
  return `{"type":"job_update","job_id":"${jobId}","data":${JSON.stringify(update.obj)}${JSON_PREV_SEQ}${prevSeq}}`
}

/** HOT PATH (at most a rate class's rate) */
export function msgpackRateFrame(jobId: string, heads: UpdateHeads, update: DecodedPayload, prevSeq: number | undefined): Buffer {
  if (prevSeq === undefined) return msgpackUpdateFrame(jobId, heads, update)
  if (update.format === 'msgpack') return Buffer.concat([MSGPACK_MAP_OF_4, heads.msgpack.subarray(1), update.bytes, MSGPACK_PREV_SEQ, pack(prevSeq)])
  return pack({ type: 'job_update', job_id: jobId, data: update.obj, prev_seq: prevSeq })
}

export function frameBytes(frame: Frame): number {
  return typeof frame === 'string' ? Buffer.byteLength(frame) : frame.length
}

export function encodeMessage(encoding: Encoding, message: ServerMessage): Frame {
  return encoding === 'json' ? JSON.stringify(message) : pack(message)
}

/** Sent to a socket or SSE stream whose token has expired, before it is closed. */
export const TOKEN_EXPIRED_MESSAGE: ServerMessage = { type: 'error', code: ErrorCode.TokenExpired, message: 'token expired; reconnect with a fresh one' }

/** What a job_status carries beside `data` other than its reason. */
export interface StatusExtras {
  readonly stalled?: boolean
  /** The request's `since`: the reply says how `data` relates to it. */
  readonly since?: Since
  readonly id?: RequestId
}

export function statusMessage(jobId: string, data: JobPayload | null, reason: StatusReason, extras?: StatusExtras): JobStatusMessage {
  const message: JobStatusMessage = { type: 'job_status', job_id: jobId, data, reason }
  if (extras === undefined) return message
  if (extras.stalled === true) message.stalled = true
  if (extras.since !== undefined) message.relation = relationOf(extras.since, data)
  if (extras.id !== undefined) message.id = extras.id
  return message
}
