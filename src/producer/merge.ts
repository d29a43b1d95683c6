// The producer rules of progress.lua, in TypeScript: the embedded broker stores state with
// them, and the HTTP producer API checks bodies with them before anything is written. The
// broker test suite runs the same cases against the Lua script and this file.
//
// Merging: an update's top-level fields overwrite the stored state's, the others are kept
// (shallow: a nested object is replaced whole). It works on the encoded members, as the Lua
// script does, so both produce the same bytes and what producers wrote survives as written;
// only a stored field in the other encoding is converted, value by value.

import { pack, Unpackr } from 'msgpackr'
import { decodePayload, MAX_PAYLOAD_BYTES, MalformedPayload, type DecodedPayload } from '../wire/payload.js'
import { isTerminalStatus } from '../wire/protocol.js'

// `replace` belongs with the other producer options in broker.ts; it is declared here while
// that file is the Redis broker work's to change.
declare module '../broker/broker.js' {
  interface ProgressOptions {
    /** Store the payload as the job's whole state instead of merging its fields into the
     * stored state (the default). */
    readonly replace?: boolean
  }
}

/** The values `status` may take (one schema on every producer path; progress.lua too). */
export const STATUSES: readonly string[] = ['queued', 'processing', 'completed', 'failed', 'cancelled']

/** A payload the producer path refuses; nothing was stored or published. */
export class ProducerError extends Error {
  override name = 'ProducerError'
}

export const OWNER_CONFLICT = 'the job belongs to another owner; only an admin may change it'

/** The job has another recorded owner and replacing it was not asked for (or allowed). */
export class OwnerConflict extends ProducerError {
  override name = 'OwnerConflict'
  constructor() {
    super(OWNER_CONFLICT)
  }
}

/** Checks a payload against the producer rules; throws ProducerError with the reason. */
export function checkProducerPayload(payload: Buffer): DecodedPayload {
  const decoded = decodePayload(payload)
  if (decoded instanceof MalformedPayload) {
    throw new ProducerError(decoded.reason)
  }
  if (decoded.format === 'msgpack') {
    // As progress.lua: Lua cannot see nil-valued keys, so such maps are refused everywhere.
    const values = Object.values(decoded.obj)
    if (values.length !== readMapHeader(decoded.bytes)[0] || values.some((v) => v === null || v === undefined)) {
      throw new ProducerError('msgpack payload has nil values or repeated keys at the top level; leave such keys out')
    }
  }
  if (decoded.obj.seq !== undefined) {
    throw new ProducerError('payload must not set seq; the script assigns it')
  }
  if (decoded.obj.epoch !== undefined) {
    throw new ProducerError('payload must not set epoch; the script assigns it')
  }
  if (decoded.obj.ts !== undefined && typeof decoded.obj.ts !== 'number') {
    throw new ProducerError('ts must be a number (milliseconds since the epoch)')
  }
  const { status, progress, message } = decoded.obj
  if (status !== undefined && !(typeof status === 'string' && STATUSES.includes(status))) {
    throw new ProducerError(`status must be one of ${STATUSES.join(', ')}`)
  }
  if (progress !== undefined && !(typeof progress === 'number' && progress >= 0 && progress <= 100)) {
    throw new ProducerError('progress must be a number from 0 to 100')
  }
  if (message !== undefined && typeof message !== 'string') {
    throw new ProducerError('message must be a string')
  }
  return decoded
}

/** A stored state to merge into; null for none, or for one that is not a valid payload
 * (written by something else), which the gateway would ignore too. */
export function storedPayload(state: Buffer | null): DecodedPayload | null {
  if (state === null || state.length === 0) return null
  const decoded = decodePayload(state)
  return decoded instanceof MalformedPayload ? null : decoded
}

/** Whether the job's state after this update is terminal: its status, or the stored one's
 * when it sets none. */
export function isTerminalState(update: DecodedPayload, stored: DecodedPayload | null): boolean {
  return isTerminalStatus(update.obj.status ?? stored?.obj.status)
}

/** The job's next state, as progress.lua builds it: `seq`, `epoch` (and `ts`, when the update
 * has none) first, then the stored members the update does not set, then the update's. With
 * no stored state the update's bytes follow unchanged. Throws ProducerError when the result
 * would be larger than a payload may be. */
export function buildState(update: DecodedPayload, stored: DecodedPayload | null, seq: number, epoch: number, nowMs: number): Buffer {
  const state = stored === null ? mergeProducerFields(update, seq, epoch, nowMs) : mergeInto(update, stored, seq, epoch, nowMs)
  if (state.length > MAX_PAYLOAD_BYTES) {
    throw new ProducerError(`the state would be larger than ${MAX_PAYLOAD_BYTES} bytes with the fields jobwire adds and merges in; send fewer fields, or replace the state`)
  }
  return state
}

interface Member {
  readonly key: string
  /** The whole member in its encoding: `"k":v` in JSON, key and value bytes in msgpack. */
  readonly raw: Buffer
  readonly value: Buffer
}

// Standard MessagePack only, as in wire/payload.ts.
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' })

function mergeInto(update: DecodedPayload, stored: DecodedPayload, seq: number, epoch: number, nowMs: number): Buffer {
  const addTs = update.obj.ts === undefined
  const members = update.format === 'json' ? jsonMembers(update.bytes) : msgpackMembers(update.bytes)
  const own = new Set(['seq', 'epoch', 'ts', ...members.map((m) => m.key)])
  const carried: Buffer[] = []
  for (const m of stored.format === 'json' ? jsonMembers(stored.bytes) : msgpackMembers(stored.bytes)) {
    if (own.has(m.key)) continue
    if (stored.format === update.format) carried.push(m.raw)
    else if (update.format === 'msgpack') carried.push(Buffer.concat([pack(m.key), pack(JSON.parse(m.value.toString('utf8')))]))
    else carried.push(Buffer.from(`${JSON.stringify(m.key)}:${JSON.stringify(unpackr.unpack(m.value))}`))
  }
  if (update.format === 'json') {
    const fields = [Buffer.from(`"seq":${seq}`), Buffer.from(`"epoch":${epoch}`), ...(addTs ? [Buffer.from(`"ts":${nowMs}`)] : []), ...carried, ...members.map((m) => m.raw)]
    const parts: Buffer[] = [OPEN_BRACE]
    fields.forEach((f, i) => parts.push(...(i === 0 ? [f] : [COMMA, f])))
    parts.push(CLOSE_BRACE)
    return Buffer.concat(parts)
  }
  const [count, bodyStart] = readMapHeader(update.bytes)
  const fields = [pack('seq'), pack(seq), pack('epoch'), float64(epoch)]
  if (addTs) fields.push(pack('ts'), float64(nowMs))
  return Buffer.concat([mapHeader(count + carried.length + fields.length / 2), ...fields, ...carried, update.bytes.subarray(bodyStart)])
}

const OPEN_BRACE = Buffer.from('{')
const CLOSE_BRACE = Buffer.from('}')
const COMMA = Buffer.from(',')

function isJsonSpace(b: number): boolean {
  return b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d
}

function skipSpace(s: Buffer, i: number): number {
  while (isJsonSpace(s[i]!)) i++
  return i
}

/** The index of the quote closing the JSON string that opens at i. */
function jsonStringEnd(s: Buffer, i: number): number {
  for (let j = i + 1; ; j++) {
    const b = s[j]!
    if (b === 0x5c) j++
    else if (b === 0x22) return j
  }
}

/** The index just past the JSON value that starts at i (s is valid JSON). */
function jsonValueEnd(s: Buffer, i: number): number {
  const c = s[i]!
  if (c === 0x22) return jsonStringEnd(s, i) + 1
  if (c !== 0x7b && c !== 0x5b) {
    let j = i
    while (j < s.length && !isJsonSpace(s[j]!) && s[j] !== 0x2c && s[j] !== 0x5d && s[j] !== 0x7d) j++
    return j
  }
  let depth = 0
  for (let j = i; ; j++) {
    const b = s[j]!
    if (b === 0x22) j = jsonStringEnd(s, j)
    else if (b === 0x7b || b === 0x5b) depth++
    else if (b === 0x7d || b === 0x5d) {
      if (--depth === 0) return j + 1
    }
  }
}

/** The top-level members of a JSON object (s is a valid one). */
function jsonMembers(s: Buffer): Member[] {
  const out: Member[] = []
  let pos = s.indexOf(0x7b) + 1
  for (;;) {
    pos = skipSpace(s, pos)
    if (s[pos] === 0x7d) return out
    if (s[pos] === 0x2c) pos = skipSpace(s, pos + 1)
    const keyEnd = jsonStringEnd(s, pos)
    const rawKey = s.subarray(pos, keyEnd + 1)
    const key = rawKey.includes(0x5c) ? (JSON.parse(rawKey.toString('utf8')) as string) : rawKey.toString('utf8', 1, rawKey.length - 1)
    const valueStart = skipSpace(s, s.indexOf(0x3a, keyEnd + 1) + 1)
    const valueEnd = jsonValueEnd(s, valueStart)
    const value = s.subarray(valueStart, valueEnd)
    out.push({ key, raw: Buffer.concat([rawKey, Buffer.from(':'), value]), value })
    pos = valueEnd
  }
}

/** The index just past the msgpack value that starts at pos (s is well-formed). */
function msgpackValueEnd(s: Buffer, pos: number): number {
  let pending = 1
  while (pending > 0) {
    const b = s[pos]!
    pending--
    if (b <= 0x7f || b >= 0xe0 || b === 0xc0 || b === 0xc2 || b === 0xc3) pos += 1
    else if (b >= 0xa0 && b <= 0xbf) pos += 1 + b - 0xa0
    else if (b >= 0x90 && b <= 0x9f) { pending += b - 0x90; pos += 1 }
    else if (b >= 0x80 && b <= 0x8f) { pending += 2 * (b - 0x80); pos += 1 }
    else if (b === 0xcc || b === 0xd0) pos += 2
    else if (b === 0xcd || b === 0xd1) pos += 3
    else if (b === 0xce || b === 0xd2 || b === 0xca) pos += 5
    else if (b === 0xcf || b === 0xd3 || b === 0xcb) pos += 9
    else if (b === 0xd9) pos += 2 + s[pos + 1]!
    else if (b === 0xda) pos += 3 + s.readUInt16BE(pos + 1)
    else if (b === 0xdb) pos += 5 + s.readUInt32BE(pos + 1)
    else if (b === 0xdc) { pending += s.readUInt16BE(pos + 1); pos += 3 }
    else if (b === 0xdd) { pending += s.readUInt32BE(pos + 1); pos += 5 }
    else if (b === 0xde) { pending += 2 * s.readUInt16BE(pos + 1); pos += 3 }
    else { pending += 2 * s.readUInt32BE(pos + 1); pos += 5 }
  }
  return pos
}

/** The top-level entries of a msgpack map (s is a well-formed one with string keys). */
function msgpackMembers(s: Buffer): Member[] {
  const out: Member[] = []
  let [count, pos] = readMapHeader(s)
  for (; count > 0; count--) {
    const keyEnd = msgpackValueEnd(s, pos)
    const valueEnd = msgpackValueEnd(s, keyEnd)
    out.push({ key: unpackr.unpack(s.subarray(pos, keyEnd)) as string, raw: s.subarray(pos, valueEnd), value: s.subarray(keyEnd, valueEnd) })
    pos = valueEnd
  }
  return out
}

/** The stored/published bytes: the payload with `seq`, `epoch` (and `ts`, when absent) merged
 * in first, the producer's own bytes kept as they are. */
export function mergeProducerFields(decoded: DecodedPayload, seq: number, epoch: number, nowMs: number): Buffer {
  const addTs = decoded.obj.ts === undefined
  const bytes = decoded.bytes
  if (decoded.format === 'json') {
    const open = bytes.indexOf(0x7b) // '{', after optional JSON whitespace
    const empty = Object.keys(decoded.obj).length === 0
    const fields = `{"seq":${seq},"epoch":${epoch}${addTs ? `,"ts":${nowMs}` : ''}${empty ? '' : ','}`
    return Buffer.concat([Buffer.from(fields), bytes.subarray(open + 1)])
  }
  const [count, bodyStart] = readMapHeader(bytes)
  // epoch and ts as float64, as progress.lua writes them.
  const fields = [pack('seq'), pack(seq), pack('epoch'), float64(epoch)]
  if (addTs) fields.push(pack('ts'), float64(nowMs))
  return Buffer.concat([mapHeader(count + fields.length / 2), ...fields, bytes.subarray(bodyStart)])
}

function float64(value: number): Buffer {
  const b = Buffer.alloc(9)
  b[0] = 0xcb
  b.writeDoubleBE(value, 1)
  return b
}

function readMapHeader(bytes: Buffer): [count: number, bodyStart: number] {
  const b0 = bytes[0]!
  if (b0 <= 0x8f) return [b0 - 0x80, 1]
  if (b0 === 0xde) return [bytes.readUInt16BE(1), 3]
  return [bytes.readUInt32BE(1), 5]
}

function mapHeader(count: number): Buffer {
  if (count < 16) return Buffer.from([0x80 + count])
  if (count < 0x10000) {
    const b = Buffer.alloc(3)
    b[0] = 0xde
    b.writeUInt16BE(count, 1)
    return b
  }
  const b = Buffer.alloc(5)
  b[0] = 0xdf
  b.writeUInt32BE(count, 1)
  return b
}
