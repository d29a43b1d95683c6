// Producer payloads: what is a valid one, and how to read it. A payload is a JSON object in
// UTF-8 or a msgpack map; the first byte tells which (a msgpack map starts with 0x80-0x8f,
// 0xde or 0xdf, none of which can start JSON text). Its values must be what JSON can carry
// (null, booleans, finite numbers, strings, arrays, objects), nested at most MAX_PAYLOAD_DEPTH
// deep, in at most MAX_PAYLOAD_BYTES. Anything else is malformed: the gateway drops it and
// counts it, so no client ever receives a frame built from it, and no encoder downstream
// meets a value it cannot write (a BigInt, a record, a stack-deep tree). progress.lua applies
// the same rules before it stores anything.

import { isUtf8 } from 'node:buffer'
import { Unpackr } from 'msgpackr'
import type { JobPayload } from './protocol.js'

export type PayloadFormat = 'json' | 'msgpack'

/** Deepest nesting of arrays/objects a payload may have; the top-level object is depth 1. */
export const MAX_PAYLOAD_DEPTH = 64
/** Largest payload accepted, in bytes (the producer API's body limit too). */
export const MAX_PAYLOAD_BYTES = 256 * 1024

export interface DecodedPayload {
  readonly format: PayloadFormat
  /** The payload as received; only valid until the caller returns (it may be a view of a
   * larger network buffer), so it is never stored. */
  readonly bytes: Buffer
  readonly obj: JobPayload
  /** `seq` when the payload carries an integer one. */
  readonly seq: number | undefined
  /** `epoch` when the payload carries an integer one. */
  readonly epoch: number | undefined
}

export class MalformedPayload {
  constructor(readonly reason: string) {}
}

// Preallocated: a producer flooding garbage costs no allocation per rejected message.
const EMPTY = new MalformedPayload('empty payload')
const TOO_LARGE = new MalformedPayload(`payload is larger than ${MAX_PAYLOAD_BYTES} bytes`)
const NOT_UTF8 = new MalformedPayload('JSON payload is not valid UTF-8')
const NOT_JSON = new MalformedPayload('payload is not a valid JSON object')
const NOT_OBJECT = new MalformedPayload('payload must be a JSON object or a msgpack map')
const BAD_MSGPACK = new MalformedPayload('payload is not one well-formed msgpack map')
const TOO_DEEP = new MalformedPayload(`payload is nested deeper than ${MAX_PAYLOAD_DEPTH} levels`)
const NOT_FINITE = new MalformedPayload('payload has a number that is not finite (NaN or Infinity)')
const MSGPACK_TYPE = new MalformedPayload('msgpack payload uses a type JSON cannot carry (extension, binary or timestamp)')
const MSGPACK_KEY = new MalformedPayload('msgpack payload has a map key that is not a string')

// Standard MessagePack only; checkMsgpack has refused every extension type before this runs.
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' })

export function isMsgpackMapStart(firstByte: number): boolean {
  return (firstByte >= 0x80 && firstByte <= 0x8f) || firstByte === 0xde || firstByte === 0xdf
}

export function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !ArrayBuffer.isView(value)
}

export function decodePayload(bytes: Buffer): DecodedPayload | MalformedPayload {
  if (bytes.length === 0) return EMPTY
  if (bytes.length > MAX_PAYLOAD_BYTES) return TOO_LARGE
  let obj: unknown
  let format: PayloadFormat
  if (isMsgpackMapStart(bytes[0]!)) {
    format = 'msgpack'
    const refused = checkMsgpack(bytes)
    if (refused !== null) return refused
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
    // JSON.parse turns 1e400 into Infinity; the nesting is only known after parsing.
    const refused = checkJsonValue(obj, 1)
    if (refused !== null) return refused
  }
  const { seq, epoch } = obj as JobPayload
  return {
    format,
    bytes,
    obj: obj as JobPayload,
    seq: Number.isSafeInteger(seq) ? seq : undefined,
    epoch: Number.isSafeInteger(epoch) ? epoch : undefined,
  }
}

/** Why a value (a translated source state) cannot travel as a payload: a number that is not
 * finite, or nesting past MAX_PAYLOAD_DEPTH. Null when it can. */
export function jsonValueProblem(value: unknown): string | null {
  return checkJsonValue(value, 1)?.reason ?? null
}

function checkJsonValue(value: unknown, depth: number): MalformedPayload | null {
  if (typeof value === 'number') return Number.isFinite(value) ? null : NOT_FINITE
  if (typeof value !== 'object' || value === null) return null
  if (depth > MAX_PAYLOAD_DEPTH) return TOO_DEEP
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const refused = checkJsonValue(value[i], depth + 1)
      if (refused !== null) return refused
    }
    return null
  }
  for (const key in value) {
    const refused = checkJsonValue((value as Record<string, unknown>)[key], depth + 1)
    if (refused !== null) return refused
  }
  return null
}

/** Orders two states of one job within one epoch: positive when `a` is newer. Epochs are
 * compared for equality only: states of different epochs are different histories, not ordered
 * (null); which is current depends on where each came from (docs/protocol.md, "State model").
 * States without a seq (plain PUBLISHes) are never newer than one with it. */
export function compareVersions(aEpoch: number | undefined, aSeq: number | undefined, bEpoch: number | undefined, bSeq: number | undefined): number | null {
  if (aSeq === undefined || bSeq === undefined) return aSeq === undefined ? (bSeq === undefined ? 0 : -1) : 1
  if (aEpoch !== bEpoch) return null
  return aSeq - bSeq
}

/** Walks one msgpack value's bytes without building it: only JSON's types, string map keys,
 * finite floats, nesting within MAX_PAYLOAD_DEPTH, and nothing after the value. Iterative, so
 * no input can exhaust the stack. */
export function checkMsgpack(bytes: Buffer): MalformedPayload | null {
  const end = bytes.length
  // remaining[d]: items still to read in the container at depth d (a map counts 2 per entry,
  // so while it is even the next item is a key).
  const remaining: number[] = []
  const isMap: boolean[] = []
  let pos = 0
  let depth = 0
  for (;;) {
    if (pos >= end) return BAD_MSGPACK
    if (depth > 0 && isMap[depth - 1]! && remaining[depth - 1]! % 2 === 0) {
      // A map key: a string.
      const b = bytes[pos]!
      if (!((b >= 0xa0 && b <= 0xbf) || b === 0xd9 || b === 0xda || b === 0xdb)) return MSGPACK_KEY
    }
    const b = bytes[pos++]!
    let skip = 0
    let open = -1
    let openMap = false
    if (b <= 0x7f || b >= 0xe0 || b === 0xc0 || b === 0xc2 || b === 0xc3) skip = 0
    else if (b >= 0xa0 && b <= 0xbf) skip = b - 0xa0
    else if (b >= 0x90 && b <= 0x9f) open = b - 0x90
    else if (b >= 0x80 && b <= 0x8f) { open = b - 0x80; openMap = true }
    else {
      switch (b) {
        case 0xcc: case 0xd0: skip = 1; break
        case 0xcd: case 0xd1: skip = 2; break
        case 0xce: case 0xd2: skip = 4; break
        case 0xcf: case 0xd3: skip = 8; break
        case 0xca:
          if (pos + 4 > end) return BAD_MSGPACK
          if (!Number.isFinite(bytes.readFloatBE(pos))) return NOT_FINITE
          skip = 4
          break
        case 0xcb:
          if (pos + 8 > end) return BAD_MSGPACK
          if (!Number.isFinite(bytes.readDoubleBE(pos))) return NOT_FINITE
          skip = 8
          break
        case 0xd9: if (pos + 1 > end) return BAD_MSGPACK; skip = 1 + bytes[pos]!; break
        case 0xda: if (pos + 2 > end) return BAD_MSGPACK; skip = 2 + bytes.readUInt16BE(pos); break
        case 0xdb: if (pos + 4 > end) return BAD_MSGPACK; skip = 4 + bytes.readUInt32BE(pos); break
        case 0xdc: if (pos + 2 > end) return BAD_MSGPACK; open = bytes.readUInt16BE(pos); pos += 2; break
        case 0xdd: if (pos + 4 > end) return BAD_MSGPACK; open = bytes.readUInt32BE(pos); pos += 4; break
        case 0xde: if (pos + 2 > end) return BAD_MSGPACK; open = bytes.readUInt16BE(pos); pos += 2; openMap = true; break
        case 0xdf: if (pos + 4 > end) return BAD_MSGPACK; open = bytes.readUInt32BE(pos); pos += 4; openMap = true; break
        case 0xc1: return BAD_MSGPACK // never used
        default: return MSGPACK_TYPE // bin 0xc4-0xc6, ext 0xc7-0xc9 and 0xd4-0xd8
      }
    }
    pos += skip
    if (pos > end) return BAD_MSGPACK
    if (depth > 0) remaining[depth - 1]!--
    if (open >= 0) {
      if (depth >= MAX_PAYLOAD_DEPTH) return TOO_DEEP
      const items = openMap ? open * 2 : open
      // Every item takes at least one byte: a count beyond what is left is a lie.
      if (items > end - pos) return BAD_MSGPACK
      remaining[depth] = items
      isMap[depth] = openMap
      depth++
    }
    while (depth > 0 && remaining[depth - 1] === 0) depth--
    if (depth === 0) return pos === end ? null : BAD_MSGPACK
  }
}
