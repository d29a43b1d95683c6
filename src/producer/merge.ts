// The producer rules of progress.lua, in TypeScript: the embedded broker stores state with
// them, and the HTTP producer API checks bodies with them before anything is written. The
// broker test suite and test/merge-rules.ts run the same cases against the Lua script and
// this file.
//
// Merging (docs/protocol.md, "Merge rules"): a top-level merge-patch. An update's top-level
// fields overwrite the stored state's and the others are kept; a field set to null is
// deleted; a nested object is replaced whole; a change of status drops the stored message,
// error and result unless the update sets them; a key given twice is refused. It works on the
// encoded members, as the Lua script does, so both produce the same bytes and what producers
// wrote survives as written; only a stored field in the other encoding is converted, value by
// value.

import { pack, Unpackr } from 'msgpackr'
import { decodePayload, MAX_PAYLOAD_BYTES, MalformedPayload, type DecodedPayload } from '../wire/payload.js'
import { isTerminalStatus } from '../wire/protocol.js'

// Producer options beyond broker.ts's, declared here while that file is the Redis broker
// work's to change.
declare module '../broker/broker.js' {
  interface ProgressOptions {
    /** Store the payload as the job's whole state instead of merging its fields into the
     * stored state (the default). */
    readonly replace?: boolean
    /** Start a new generation of the job: a new epoch, the stored state replaced by the
     * payload, the owner kept. The only way to take a final (completed, failed, cancelled)
     * job back to a running state. */
    readonly restart?: boolean
    /** Compare-and-set: write only when the job's stored seq is this one (a job with no
     * state is at 0); otherwise SeqMismatch and nothing is written. */
    readonly ifSeq?: number
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

/** The job's stored state is final (completed, failed, cancelled) in the current epoch and
 * the update would make it non-final; nothing was written. `restart` starts a new generation. */
export class FinalState extends ProducerError {
  override name = 'FinalState'
}

export function finalStateMessage(jobId: string, status: string): string {
  return `job ${jobId} is ${status}: a final state is final; pass restart to start a new generation`
}

/** `ifSeq` was given and the job's seq is another; nothing was written. */
export class SeqMismatch extends ProducerError {
  override name = 'SeqMismatch'
}

export const SEQ_MISMATCH = /^if_seq \S* does not match the job's seq \d+$/

/** Checks a payload against the producer rules; throws ProducerError with the reason. */
export function checkProducerPayload(payload: Buffer): DecodedPayload {
  const decoded = decodePayload(payload)
  if (decoded instanceof MalformedPayload) {
    throw new ProducerError(decoded.reason)
  }
  // A key given twice is refused: decoders silently keep one of the two, and not all the same.
  const seen = new Set<string>()
  for (const m of membersOf(decoded)) {
    if (seen.has(m.key)) throw new ProducerError(`payload has the key ${JSON.stringify(m.key)} more than once`)
    seen.add(m.key)
  }
  if (seen.has('seq')) {
    throw new ProducerError('payload must not set seq; the script assigns it')
  }
  if (seen.has('epoch')) {
    throw new ProducerError('payload must not set epoch; the script assigns it')
  }
  if (seen.has('ts') && typeof decoded.obj.ts !== 'number') {
    throw new ProducerError('ts must be a number (milliseconds since the epoch)')
  }
  // null deletes any of them (a merge-patch).
  const { status, progress, message } = decoded.obj
  if (status !== undefined && status !== null && !(typeof status === 'string' && STATUSES.includes(status))) {
    throw new ProducerError(`status must be one of ${STATUSES.join(', ')}`)
  }
  if (progress !== undefined && progress !== null && !(typeof progress === 'number' && progress >= 0 && progress <= 100)) {
    throw new ProducerError('progress must be a number from 0 to 100')
  }
  if (message !== undefined && message !== null && typeof message !== 'string') {
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

/** The stored state's status, when it has one. */
export function statusOf(stored: DecodedPayload | null): string | undefined {
  const status = stored?.obj.status
  return typeof status === 'string' ? status : undefined
}

/** The job's status after this update: the update's when it sets one (null deletes it), else
 * the stored one's when the update is merged into it. */
export function resultingStatus(update: DecodedPayload, merged: DecodedPayload | null): string | undefined {
  if (Object.hasOwn(update.obj, 'status')) return typeof update.obj.status === 'string' ? update.obj.status : undefined
  return statusOf(merged)
}

/** Whether the job's state after this update is terminal. */
export function isTerminalState(update: DecodedPayload, merged: DecodedPayload | null): boolean {
  return isTerminalStatus(resultingStatus(update, merged))
}

/** Final means final: refuses an update that would take a job whose stored state is final
 * back to a non-final status within the same epoch (progress.lua does the same). */
export function checkFinal(jobId: string, update: DecodedPayload, stored: DecodedPayload | null, merging: boolean): void {
  const storedStatus = statusOf(stored)
  if (storedStatus !== undefined && isTerminalStatus(storedStatus) && !isTerminalState(update, merging ? stored : null)) {
    throw new FinalState(finalStateMessage(jobId, storedStatus))
  }
}

/** The job's next state, as progress.lua builds it: `seq`, `epoch` (and `ts`, when the update
 * has none) first, then the stored members the update does not set (none when `merged` is
 * null), then the update's, less those set to null. With nothing to merge and nothing deleted
 * the update's bytes follow unchanged. Throws ProducerError when the result would be larger
 * than a payload may be. */
export function buildState(update: DecodedPayload, merged: DecodedPayload | null, seq: number, epoch: number, nowMs: number): Buffer {
  const members = membersOf(update)
  const state = merged === null && !members.some(isNull(update.format))
    ? mergeProducerFields(update, seq, epoch, nowMs)
    : mergeInto(update, members, merged, seq, epoch, nowMs)
  if (state.length > MAX_PAYLOAD_BYTES) {
    throw new ProducerError(`the state would be larger than ${MAX_PAYLOAD_BYTES} bytes with the fields jobwire adds and merges in; send fewer fields, or replace the state`)
  }
  return state
}

const MSGPACK_NIL = 0xc0
const JSON_NULL = Buffer.from('null')

function isNull(format: DecodedPayload['format']): (m: Member) => boolean {
  return format === 'msgpack' ? (m) => m.value.length === 1 && m.value[0] === MSGPACK_NIL : (m) => m.value.equals(JSON_NULL)
}

function membersOf(payload: DecodedPayload): Member[] {
  return payload.format === 'json' ? jsonMembers(payload.bytes) : msgpackMembers(payload.bytes)
}

interface Member {
  readonly key: string
  /** The whole member in its encoding: `"k":v` in JSON, key and value bytes in msgpack. */
  readonly raw: Buffer
  readonly value: Buffer
}

// Standard MessagePack only, as in wire/payload.ts.
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' })

function mergeInto(update: DecodedPayload, members: readonly Member[], merged: DecodedPayload | null, seq: number, epoch: number, nowMs: number): Buffer {
  const addTs = update.obj.ts === undefined
  const own = new Set(['seq', 'epoch', 'ts', ...members.map((m) => m.key)])
  // A change of status drops the stored message, error and result: they described the
  // previous status. Set in the same update, they are the update's anyway.
  if (merged !== null && Object.hasOwn(update.obj, 'status') && resultingStatus(update, null) !== statusOf(merged)) {
    own.add('message').add('error').add('result')
  }
  const carried: Buffer[] = []
  for (const m of merged === null ? [] : membersOf(merged)) {
    if (own.has(m.key)) continue
    if (merged!.format === update.format) carried.push(m.raw)
    else if (update.format === 'msgpack') carried.push(Buffer.concat([pack(m.key), pack(JSON.parse(m.value.toString('utf8')))]))
    else carried.push(Buffer.from(`${JSON.stringify(m.key)}:${JSON.stringify(unpackr.unpack(m.value))}`))
  }
  const kept = members.filter((m) => !isNull(update.format)(m)).map((m) => m.raw)
  if (update.format === 'json') {
    const fields = [Buffer.from(`"seq":${seq}`), Buffer.from(`"epoch":${epoch}`), ...(addTs ? [Buffer.from(`"ts":${nowMs}`)] : []), ...carried, ...kept]
    const parts: Buffer[] = [OPEN_BRACE]
    fields.forEach((f, i) => parts.push(...(i === 0 ? [f] : [COMMA, f])))
    parts.push(CLOSE_BRACE)
    return Buffer.concat(parts)
  }
  const fields = [pack('seq'), pack(seq), pack('epoch'), msgpackUint(epoch)]
  if (addTs) fields.push(pack('ts'), float64(nowMs))
  return Buffer.concat([mapHeader(carried.length + kept.length + fields.length / 2), ...fields, ...carried, ...kept])
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
  const fields = [pack('seq'), pack(seq), pack('epoch'), msgpackUint(epoch)]
  if (addTs) fields.push(pack('ts'), float64(nowMs))
  return Buffer.concat([mapHeader(count + fields.length / 2), ...fields, bytes.subarray(bodyStart)])
}

/** A non-negative integer as progress.lua's cmsgpack writes it: the smallest uint, uint64
 * past 32 bits, never float64, so epochs read back exactly in every decoder. */
function msgpackUint(value: number): Buffer {
  // An epoch from a previous version (milliseconds, past 32 bits): float64, as it was written
  // then, since uint64 reads back as a BigInt in common decoders.
  if (value >= 0x100000000) {
    const b = Buffer.alloc(9)
    b[0] = 0xcb
    b.writeDoubleBE(value, 1)
    return b
  }
  if (value < 0x80) return Buffer.from([value])
  if (value < 0x100) return Buffer.from([0xcc, value])
  const b = Buffer.alloc(value < 0x10000 ? 3 : value < 0x100000000 ? 5 : 9)
  if (value < 0x10000) {
    b[0] = 0xcd
    b.writeUInt16BE(value, 1)
  } else if (value < 0x100000000) {
    b[0] = 0xce
    b.writeUInt32BE(value, 1)
  }
  return b
}

/** A new epoch, as progress.lua picks it: the low 32 bits of the millisecond clock (never 0),
 * different from the previous one. Epochs are compared for equality only. */
export function nextEpoch(nowMs: number, previous: number): number {
  let fresh = nowMs % 0x100000000
  if (fresh === previous) fresh = (fresh + 1) % 0x100000000
  return fresh === 0 ? 1 : fresh
}

/** ts as float64, as JavaScript encoders write it (and progress.lua): a decoder that turns
 * uint64 into BigInt would break arithmetic on it. */
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
