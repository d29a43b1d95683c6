// A producer that sends what JSON cannot carry (msgpack extensions, binary, NaN, 6,000-deep
// nesting, oversized bodies) must cost one dropped message, never the process: over a plain
// PUBLISH with both encodings watching, over the producer API, and as a poisoned stored state.

import t from 'tap'
import { startGateway } from './fixtures/gateway.js'
import { startRedis } from './fixtures/redis.js'
import { deepJson, deepMsgpack, hex, HOSTILE } from './fixtures/hostile-payloads.js'

// A crash anywhere in the gateway (it runs in this process) fails the run.
const crashes: Error[] = []
process.on('uncaughtException', (err) => crashes.push(err))
process.on('unhandledRejection', (err) => crashes.push(err as Error))

t.test('limits are inclusive: 64 levels of nesting pass', async (t) => {
  const { decodePayload, MalformedPayload } = await import('../src/wire/payload.js')
  t.notOk(decodePayload(deepMsgpack(63)) instanceof MalformedPayload, 'msgpack, 64 levels')
  t.notOk(decodePayload(Buffer.from(deepJson(63))) instanceof MalformedPayload, 'JSON, 64 levels')
  for (const [name, payload] of HOSTILE) t.ok(decodePayload(payload) instanceof MalformedPayload, `refuses ${name}`)
})

t.test('hostile PUBLISHes are dropped and counted; JSON and msgpack watchers keep their stream', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const gw = await startGateway({ redis: redis.url })
  t.teardown(() => gw.stop())
  const json = await gw.connect()
  const msgpack = await gw.connect('jobwire.msgpack')
  await json.subscribe('hp-1')
  await msgpack.subscribe('hp-1')
  const before = gw.gateway.metricsSnapshot().counters.producer_malformed_total!
  const publisher = redis.client()
  let step = 0
  for (const [name, payload] of HOSTILE) {
    await publisher.publish('progress:hp-1', payload)
    await publisher.publish('progress:hp-1', JSON.stringify({ status: 'processing', step: ++step }))
    const isStep = (m: { type: string; data?: unknown }) => m.type === 'job_update' && (m.data as { step?: number }).step === step
    t.ok(await json.next(isStep), `JSON watcher goes on after ${name}`)
    t.ok(await msgpack.next(isStep), `msgpack watcher goes on after ${name}`)
  }
  t.equal(json.all('job_update').length, HOSTILE.length, 'the JSON watcher saw only the valid frames')
  t.equal(msgpack.all('job_update').length, HOSTILE.length, 'the msgpack watcher saw only the valid frames')
  t.equal(gw.gateway.metricsSnapshot().counters.producer_malformed_total! - before, HOSTILE.length, 'each one counted')
  t.same(crashes, [], 'nothing escaped to the process')
})

t.test('the producer API refuses each with 400 and stores nothing', async (t) => {
  const gw = await startGateway()
  t.teardown(() => gw.stop())
  const json = await gw.connect()
  const msgpack = await gw.connect('jobwire.msgpack')
  await json.subscribe('hp-2')
  await msgpack.subscribe('hp-2')
  for (const [name, payload] of HOSTILE) {
    const isMsgpack = payload[0]! >= 0x80
    const res = await fetch(`${gw.http}/jobs/hp-2/progress`, {
      method: 'POST',
      headers: { 'content-type': isMsgpack ? 'application/msgpack' : 'application/json' },
      body: new Uint8Array(payload),
    })
    t.ok(res.status === 400 || res.status === 413, `${name}: ${res.status}`)
  }
  t.equal((await fetch(`${gw.http}/jobs/hp-2`)).status, 404, 'nothing was stored')
  const ok = await fetch(`${gw.http}/jobs/hp-2/progress`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"status":"completed"}' })
  t.equal(ok.status, 200)
  t.match((await json.nextOfType('job_update', 'hp-2')).data, { status: 'completed', seq: 1 })
  t.match((await msgpack.nextOfType('job_update', 'hp-2')).data, { status: 'completed', seq: 1 })
  t.same(crashes, [])
})

t.test('a poisoned stored state is ignored, not a 503', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const gw = await startGateway({ redis: redis.url })
  t.teardown(() => gw.stop())
  await redis.client().hset('jobwire:job:hp-3', 'state', hex('81 a1 6e d4 42 01'))
  t.equal((await fetch(`${gw.http}/jobs/hp-3`)).status, 404, 'read as no state')
  const c = await gw.connect('jobwire.msgpack')
  t.same((await c.subscribe('hp-3')).data, null, 'job_status carries no state')
})

t.test("a job's state key of another type is no job, and fails no other job read with it", async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const gw = await startGateway({ redis: redis.url })
  t.teardown(() => gw.stop())
  const writer = redis.client()
  await writer.set('jobwire:job:squatted', 'a string where a hash goes')
  await gw.gateway.broker.publishProgress('beside-squatted', Buffer.from('{"status":"processing","progress":5}'))
  // Read in one turn: one script call for both.
  const [squatted, beside] = await Promise.all([fetch(`${gw.http}/jobs/squatted`), fetch(`${gw.http}/jobs/beside-squatted`)])
  t.equal(squatted.status, 404, 'the squatted id reads as no job')
  t.equal(beside.status, 200, 'the job read with it is answered')
  t.match(await beside.json(), { data: { progress: 5 } })
  t.same(crashes, [])
})
