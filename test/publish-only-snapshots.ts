// A job whose producer only PUBLISHes has no stored state. Its snapshot must not depend on the
// worker or node a socket lands on: the gateway that sees its messages records the latest one
// in Redis (coalesced, under a lease), and every worker answers late subscribers and
// GET /jobs/<id> with it.

import t from 'tap'
import { Redis } from 'ioredis'
import { freePort } from './fixtures/ports.js'
import { reap, serveProcess } from './fixtures/process.js'
import { startRedis } from './fixtures/redis.js'
import { until } from './fixtures/until.js'
import { connect } from './fixtures/ws-client.js'

t.test('with two workers, every new socket and every GET /jobs sees the latest state of a PUBLISH-only job', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const port = await freePort()
  const served = serveProcess(['--port', String(port), '--workers', '2', '--redis', redis.url])
  t.teardown(() => reap(served))
  await served.waitFor(/jobwire listening/, 20_000)
  const watcher = await connect(`ws://127.0.0.1:${port}/ws/jobs`)
  await watcher.subscribe('po-1')
  const publisher = redis.client()
  for (let step = 1; step <= 30; step++) await publisher.publish('progress:po-1', JSON.stringify({ status: 'processing', step }))
  await watcher.next((m) => (m.data as { step?: number } | null)?.step === 30)
  // The recorder writes at most every 250 ms: wait until the latest is recorded.
  await until(async () => (await publisher.hget('jobwire:job:po-1', 'seen')) === JSON.stringify({ status: 'processing', step: 30 }), 'the latest payload recorded')

  const late = await Promise.all(Array.from({ length: 20 }, () => connect(`ws://127.0.0.1:${port}/ws/jobs`)))
  const statuses = await Promise.all(late.map((c) => c.subscribe('po-1')))
  t.same(statuses.map((s) => (s.data as { step?: number } | null)?.step), new Array(20).fill(30), 'every late socket, whichever worker it landed on')
  const answers = await Promise.all(Array.from({ length: 20 }, async () => {
    const res = await fetch(`http://127.0.0.1:${port}/jobs/po-1`)
    return res.status === 200 ? ((await res.json()) as { data: { step: number } }).data.step : res.status
  }))
  t.same(answers, new Array(20).fill(30), 'every GET /jobs, whichever worker answered')
  await Promise.all([watcher, ...late].map((c) => c.close()))
})

t.test('the lease: one recorder per job; another gateway cannot overwrite until it lapses', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const { RedisBroker } = await import('../src/broker/redis.js')
  const { createLogger } = await import('../src/support/log.js')
  const broker = new RedisBroker(redis.url, { channelPrefix: 'progress:', keyPrefix: 'jobwire:', stateTtlSec: 100, terminalTtlSec: 10 }, createLogger('silent'))
  t.teardown(() => broker.close())
  broker.start({ message: () => undefined, state: () => undefined, restored: () => undefined })
  await until(() => broker.state === 'ready', 'ready')
  const direct: Redis = redis.client()
  t.same(await broker.recordSeen([{ jobId: 'po-2', json: '{"step":2}' }], 'gateway-a'), ['written'])
  t.same(await broker.recordSeen([{ jobId: 'po-2', json: '{"step":1}' }], 'gateway-b'), ['refused'], 'refused, and told so') // a late, stale write
  t.same(await broker.recordSeen([{ jobId: 'po-2', json: '{"step":2}' }], 'gateway-b'), ['recorded'], 'the payload already recorded is no refusal: nothing left to do')
  t.equal(await direct.hget('jobwire:job:po-2', 'seen'), '{"step":2}', 'the other gateway was refused')
  await broker.recordSeen([{ jobId: 'po-2', json: '{"step":3}' }], 'gateway-a')
  t.equal(await direct.hget('jobwire:job:po-2', 'seen'), '{"step":3}', 'the holder goes on')
  await direct.del('jobwire:rec:po-2') // the lease lapsing
  t.same(await broker.recordSeen([{ jobId: 'po-2', json: '{"step":4}' }], 'gateway-b'), ['written'])
  t.equal(await direct.hget('jobwire:job:po-2', 'seen'), '{"step":4}', 'a new holder takes over')
  t.ok((await direct.ttl('jobwire:job:po-2')) > 0, 'the record expires')
  const [record] = await broker.readJobs(['po-2'])
  t.same([record!.state, record!.seen?.toString()], [null, '{"step":4}'])
})

t.test('a plain PUBLISH on a job the producer script manages records nothing and keeps its TTL', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const { RedisBroker } = await import('../src/broker/redis.js')
  const { createLogger } = await import('../src/support/log.js')
  const broker = new RedisBroker(redis.url, { channelPrefix: 'progress:', keyPrefix: 'jobwire:', stateTtlSec: 1000, terminalTtlSec: 10 }, createLogger('silent'))
  t.teardown(() => broker.close())
  broker.start({ message: () => undefined, state: () => undefined, restored: () => undefined })
  await until(() => broker.state === 'ready', 'ready')
  await broker.publishProgress('po-3', Buffer.from('{"status":"completed"}'))
  t.same(await broker.recordSeen([{ jobId: 'po-3', json: '{"late":true}' }], 'gateway-a'), ['stored'], 'not written: the job has a stored state')
  const direct = redis.client()
  t.equal(await direct.hget('jobwire:job:po-3', 'seen'), null, 'nothing recorded')
  t.ok((await direct.ttl('jobwire:job:po-3')) <= 10, 'the terminal TTL stands')
})
