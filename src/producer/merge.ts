// The producer rules of progress.lua, in TypeScript: the embedded broker stores state with
// them, and the HTTP producer API checks bodies with them before anything is written. The
// broker test suite runs the same cases against the Lua script and this file.

import { pack } from 'msgpackr'
import { decodePayload, MalformedPayload, type DecodedPayload } from '../wire/payload.js'
import { isTerminalStatus } from '../wire/protocol.js'

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
  return decoded
}

export function isTerminalPayload(decoded: DecodedPayload): boolean {
  return isTerminalStatus(decoded.obj.status)
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
