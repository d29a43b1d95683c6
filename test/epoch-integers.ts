// Epochs travel as integers in both encodings: 32 bits (the low bits of the millisecond clock,
// compared for equality only), so msgpack carries them as a uint32, which every decoder reads as
// a number (uint64 reads back as a BigInt in msgpackr), written identically by the producer
// script and the embedded broker, and read back by the gateway (wire/payload.ts) as the same
// number. ts stays float64, as JavaScript encoders write it.

import t from 'tap'
import { pack, unpack } from 'msgpackr'
import type { Broker, BrokerListener } from '../src/broker/broker.js'
import { EmbeddedBroker } from '../src/broker/embedded.js'
import { RedisBroker } from '../src/broker/redis.js'
import { createLogger } from '../src/support/log.js'
import { decodePayload, MalformedPayload } from '../src/wire/payload.js'
import { startRedis } from './fixtures/redis.js'

const names = { channelPrefix: 'progress:', keyPrefix: 'jobwire:', stateTtlSec: 100, terminalTtlSec: 10 }
const quiet: BrokerListener = { message() {}, state() {}, restored() {} }
const EPOCH_KEY = pack('epoch')
const TS_KEY = pack('ts')

/** The type byte of the value that follows `key` at the top level of a msgpack state. */
function typeAfter(state: Buffer, key: Buffer): number {
  const at = state.indexOf(key)
  return state[at + key.length]!
}

t.test('epochs are msgpack integers, from the script and the embedded broker alike', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const script = new RedisBroker(redis.url, names, createLogger('silent'))
  const embedded = new EmbeddedBroker(names)
  t.teardown(async () => {
    await script.close()
    await embedded.close()
  })
  script.start(quiet)
  embedded.start(quiet)
  const client = redis.client()
  for (const [kind, broker] of [['script', script], ['embedded', embedded]] as Array<[string, Broker]>) {
    // A first write (the producer's bytes spliced) and a merge (the state rebuilt).
    await broker.publishProgress('ep-1', pack({ status: 'processing', progress: 1 }))
    for (const step of ['first write', 'merged write']) {
      if (step === 'merged write') await broker.publishProgress('ep-1', pack({ progress: 2 }))
      const state = (await broker.readJobs(['ep-1']))[0]!.state!
      t.ok([0xcc, 0xcd, 0xce].includes(typeAfter(state, EPOCH_KEY)) || typeAfter(state, EPOCH_KEY) < 0x80, `${kind}, ${step}: epoch is a msgpack uint of at most 32 bits`)
      t.equal(unpack(state).epoch.constructor, Number, `${kind}, ${step}: msgpackr's defaults read a number, not a BigInt`)
      t.equal(typeAfter(state, TS_KEY), 0xcb, `${kind}, ${step}: ts stays float64`)
      const decoded = decodePayload(state)
      if (decoded instanceof MalformedPayload) throw new Error(decoded.reason)
      t.ok(Number.isSafeInteger(decoded.epoch), `${kind}, ${step}: the gateway reads a safe integer`)
      if (kind === 'script') t.equal(decoded.epoch, Number(await client.hget('jobwire:job:ep-1', 'epoch')), 'the stored epoch exactly')
    }
    // JSON: an integer without fraction or exponent.
    await broker.publishProgress('ep-2', Buffer.from('{"a":1}'))
    t.match((await broker.readJobs(['ep-2']))[0]!.state!.toString(), /"epoch":\d{1,10},/, `${kind}: a JSON integer`)
  }
})
