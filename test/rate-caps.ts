// Per-subscription rate caps: a subscription with max_hz (or under --max-update-hz) gets at
// most that many updates a second, always the newest on the trailing edge, terminal states at
// once, nothing reordered; full-rate subscribers of the same job are untouched.

import t from 'tap'
import { rateClass } from '../src/wire/topics.js'
import { startGateway } from './fixtures/gateway.js'
import { until } from './fixtures/until.js'
import type { Message, TestClient } from './fixtures/ws-client.js'

const seqs = (c: TestClient) => c.all('job_update').map((m: Message) => (m.data as { seq: number }).seq)
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

t.test('rate classes: a cap rounds down to a class; none or above the top class is full rate', (t) => {
  t.equal(rateClass(undefined, 0), 0)
  t.equal(rateClass(5, 0), 5)
  t.equal(rateClass(7, 0), 5)
  t.equal(rateClass(0.3, 0), 1, 'below the lowest class: the lowest')
  t.equal(rateClass(1000, 0), 0, 'above the top class: full rate')
  t.equal(rateClass(undefined, 2), 2, 'the server cap applies to everyone')
  t.equal(rateClass(10, 2), 2, 'and bounds what a client asks for')
  t.end()
})

t.test('max_hz 5: at most five a second, the newest on the trailing edge, the terminal at once', async (t) => {
  const gw = await startGateway()
  t.teardown(() => gw.stop())
  const full = await gw.connect()
  const capped = await gw.connect()
  await full.subscribe('rc-1')
  capped.send({ type: 'subscribe_job', job_id: 'rc-1', max_hz: 5 })
  await capped.nextOfType('job_status', 'rc-1')
  const publish = (body: object) => gw.gateway.broker.publishProgress('rc-1', Buffer.from(JSON.stringify(body)))
  const started = Date.now()
  let last = 0
  for (let i = 1; i <= 60; i++) {
    last = await publish({ status: 'processing', progress: i })
    await sleep(10)
  }
  const burstMs = Date.now() - started
  await until(() => seqs(capped).at(-1) === last, 'the trailing edge delivers the newest', 5000)
  const got = seqs(capped)
  t.ok(got.length <= Math.ceil(burstMs / 200) + 2, `${got.length} updates in ${burstMs} ms (at most one per 200 ms)`)
  t.ok(got.length >= 2, 'but more than one')
  t.same(got, [...got].sort((a, b) => a - b), 'in order')
  const terminal = await publish({ status: 'completed', progress: 100 })
  await until(() => seqs(capped).at(-1) === terminal, 'the terminal update')
  await until(() => seqs(full).at(-1) === terminal, 'the full-rate subscriber')
  t.same(seqs(full), Array.from({ length: terminal }, (_, i) => i + 1), 'the full-rate subscriber got every update')
})

t.test('--max-update-hz caps everyone; a bad max_hz is refused', async (t) => {
  const gw = await startGateway({ 'max-update-hz': '2' })
  t.teardown(() => gw.stop())
  const c = await gw.connect()
  await c.subscribe('rc-2')
  let last = 0
  for (let i = 1; i <= 30; i++) {
    last = await gw.gateway.broker.publishProgress('rc-2', Buffer.from(JSON.stringify({ progress: i })))
    await sleep(10)
  }
  await until(() => seqs(c).at(-1) === last, 'the newest', 5000)
  t.ok(seqs(c).length <= 3, `at most a couple in ~300 ms at 2 Hz (${seqs(c).length})`)
  c.send({ type: 'subscribe_job', job_id: 'rc-3', max_hz: -1 })
  t.match(await c.nextOfType('error', 'rc-3'), { code: 'bad_message' })
  c.send({ type: 'subscribe_job', job_id: 'rc-3', max_hz: 'fast' })
  t.match(await c.nextOfType('error', 'rc-3'), { code: 'bad_message' })
})

t.test('in the fan-out: a held update is replaced by newer ones; a terminal goes out synchronously', async (t) => {
  const { Fanout } = await import('../src/stream/fanout.js')
  const { Metrics } = await import('../src/support/metrics.js')
  const { WatchedJobs } = await import('../src/stream/watched-jobs.js')
  const { createBridge } = await import('../src/stream/bridge.js')
  const { createLogger } = await import('../src/support/log.js')
  const published: Array<{ topic: string; seq: number }> = []
  const app = {
    numSubscribers: (topic: string) => (topic === 'j1:rc-u' ? 1 : 0),
    publish: (topic: string, frame: string | Buffer) => {
      published.push({ topic, seq: JSON.parse(frame.toString()).data.seq })
      return true
    },
  }
  const metrics = new Metrics()
  const watched = new WatchedJobs({ subscribe: async () => {}, unsubscribe: async () => {} } as never, { mode: 'pattern', channelPrefix: 'progress:', unsubscribeDelayMs: 10 }, createLogger('silent'))
  const fanout = new Fanout(app as never, metrics)
  const bridge = createBridge(watched, fanout, metrics, 'progress:'.length, () => undefined)
  const job = watched.acquire('rc-u')
  fanout.joinRate(job, 1) // one a second: the slot is long
  const send = (body: object) => bridge(Buffer.from('progress:rc-u'), Buffer.from(JSON.stringify(body)))
  send({ seq: 1, status: 'processing' })
  t.same(published, [{ topic: 'j1:rc-u', seq: 1 }], 'the first goes out at once')
  send({ seq: 2, status: 'processing' })
  send({ seq: 3, status: 'processing' })
  t.equal(published.length, 1, 'the next ones wait for the slot')
  send({ seq: 4, status: 'completed' })
  t.same(published.at(-1), { topic: 'j1:rc-u', seq: 4 }, 'the terminal one goes out in the same call')
  const rate = job.rates!.get(1)!
  t.same([rate.pending, rate.timer], [null, null], 'what it superseded is dropped with its timer: it can never be sent after the terminal')
  t.same(published.map((p) => p.seq), [1, 4])
  fanout.leaveRate(job, 1)
})
