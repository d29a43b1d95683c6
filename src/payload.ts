// Producer payloads: what is a valid one, and how to read it. A payload is a JSON object in
// UTF-8 or a msgpack map; the first byte tells which (a msgpack map starts with 0x80-0x8f,
// 0xde or 0xdf, none of which can start JSON text). Anything else is malformed: the gateway
// drops it and counts it, so no client ever receives a frame built from it.

import { isUtf8 } from 'node:buffer'
import { Unpackr } from 'msgpackr'
import type { JobPayload } from './protocol.js'

export type PayloadFormat = 'json' | 'msgpack'

export interface DecodedPayload {
  readonly format: PayloadFormat
  /** The payload as received; only valid until the caller returns (it may be a view of a
   * larger network buffer), so it is never stored. */
  readonly bytes: Buffer
  readonly obj: JobPayload
  /** `seq` when the payload carries an integer one. */
  readonly seq: number | undefined
}

export class MalformedPayload {
  constructor(readonly reason: string) {}
}

// Preallocated: a producer flooding garbage costs no allocation per rejected message.
const EMPTY = new MalformedPayload('empty payload')
const NOT_UTF8 = new MalformedPayload('JSON payload is not valid UTF-8')
const NOT_JSON = new MalformedPayload('payload is not a valid JSON object')
const NOT_OBJECT = new MalformedPayload('payload must be a JSON object or a msgpack map')
const BAD_MSGPACK = new MalformedPayload('payload is not one well-formed msgpack map')

// Standard MessagePack only: the records extension would be meaningless to browsers.
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' })

export function isMsgpackMapStart(firstByte: number): boolean {
  return (firstByte >= 0x80 && firstByte <= 0x8f) || firstByte === 0xde || firstByte === 0xdf
}

export function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !ArrayBuffer.isView(value)
}

export function decodePayload(bytes: Buffer): DecodedPayload | MalformedPayload {
  if (bytes.length === 0) return EMPTY
  let obj: unknown
  let format: PayloadFormat
  if (isMsgpackMapStart(bytes[0]!)) {
    format = 'msgpack'
    try {
      obj = unpackr.unpack(bytes)
    } catch {
      return BAD_MSGPACK
    }
    if (!isPlainObject(obj)) return BAD_MSGPACK
  } else {
    format = 'json'
    if (!isUtf8(bytes)) return NOT_UTF8
    try {
      obj = JSON.parse(bytes.toString('utf8'))
    } catch {
      return NOT_JSON
    }
    if (!isPlainObject(obj)) return NOT_OBJECT
  }
  const seq = (obj as JobPayload).seq
  return { format, bytes, obj: obj as JobPayload, seq: Number.isSafeInteger(seq) ? (seq as number) : undefined }
}
