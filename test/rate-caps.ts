// Per-subscription rate caps: a subscription with max_hz (or under --max-update-hz) gets at
// most that many updates a second, always the newest on the trailing edge, terminal states at
// once, nothing reordered; full-rate subscribers of the same job are untouched.

import t from 'tap'
import { pack, unpack } from 'msgpackr'
import WebSocket from 'ws'
import { JobsClient } from '../src/client/jobs-client.js'
import { createBridge } from '../src/stream/bridge.js'
import { Fanout } from '../src/stream/fanout.js'
import { WatchedJobs } from '../src/stream/watched-jobs.js'
import { createLogger } from '../src/support/log.js'
import { Metrics } from '../src/support/metrics.js'
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

t.test('a rate class marks the seqs it conflated: prev_seq after data, in both encodings, spliced or re-encoded', async (t) => {
  const frames: Array<{ topic: string; frame: Record<string, unknown>; raw: string | Buffer }> = []
  const app = {
    numSubscribers: (topic: string) => (/^[jm]50:/.test(topic) ? 1 : 0),
    publish: (topic: string, frame: string | Buffer, binary: boolean) => {
      frames.push({ topic, frame: (binary ? unpack(frame as Buffer) : JSON.parse(frame.toString())) as Record<string, unknown>, raw: frame })
      return true
    },
  }
  const watched = new WatchedJobs({ subscribe: async () => {}, unsubscribe: async () => {} } as never, { mode: 'pattern', channelPrefix: 'progress:', unsubscribeDelayMs: 10 }, createLogger('silent'))
  const fanout = new Fanout(app as never, new Metrics())
  const bridge = createBridge(watched, fanout, new Metrics(), 'progress:'.length, () => undefined)
  const of = (topic: string) => frames.filter((f) => f.topic === topic).map((f) => f.frame)

  for (const [producer, encode] of [['json', (o: object) => Buffer.from(JSON.stringify(o))], ['msgpack', (o: object) => pack(o)]] as const) {
    frames.length = 0
    const job = watched.acquire('rc-m')
    fanout.joinRate(job, 50) // a 20 ms slot
    const send = (body: object) => bridge(Buffer.from('progress:rc-m'), encode(body))
    send({ seq: 1, epoch: 7, status: 'processing' })
    await sleep(25)
    send({ seq: 2, epoch: 7, status: 'processing' }) // a free slot, nothing skipped
    send({ seq: 3, epoch: 7, status: 'processing' }) // held, then replaced
    send({ seq: 4, epoch: 7, status: 'processing' }) // held: the trailing edge (a timer)
    await until(() => of('j50:rc-m').length === 3, 'the trailing edge')
    send({ seq: 5, epoch: 7, status: 'processing' }) // held, then replaced
    send({ seq: 6, epoch: 7, status: 'completed' }) // at once: terminal
    for (const topic of ['j50:rc-m', 'm50:rc-m']) {
      t.same(of(topic), [
        { type: 'job_update', job_id: 'rc-m', data: { seq: 1, epoch: 7, status: 'processing' } },
        { type: 'job_update', job_id: 'rc-m', data: { seq: 2, epoch: 7, status: 'processing' } },
        { type: 'job_update', job_id: 'rc-m', data: { seq: 4, epoch: 7, status: 'processing' }, prev_seq: 2 },
        { type: 'job_update', job_id: 'rc-m', data: { seq: 6, epoch: 7, status: 'completed' }, prev_seq: 4 },
      ], `${producer} producer, ${topic}: only the frames that skip are marked`)
    }
    const terminal = frames.find((f) => f.topic === 'j50:rc-m' && (f.frame.data as { seq: number }).seq === 6)!
    t.match(terminal.raw.toString(), /^\{"type":"job_update","job_id":"rc-m","data":\{.*\},"prev_seq":4\}$/, 'the frame head is unchanged: prev_seq follows data')

    // An update the class never received is no conflation: the skip stays unmarked.
    frames.length = 0
    send({ seq: 1, epoch: 8, status: 'processing' }) // a new epoch: a skip of nothing
    send({ seq: 3, epoch: 8, status: 'processing' }) // seq 2 never arrived
    send({ seq: 4, epoch: 8, status: 'completed' })
    // (seq 1 goes out at once or waits for the slot the terminal took, as timing has it)
    t.same(of('j50:rc-m').at(-1), { type: 'job_update', job_id: 'rc-m', data: { seq: 4, epoch: 8, status: 'completed' } }, `${producer}: a skip over a missed seq is not marked`)
    t.notOk(of('j50:rc-m').some((f) => 'prev_seq' in f), 'nor anything else here')
    fanout.leaveRate(job, 50)
    watched.release(job)
  }
})

/** The ws WebSocket, recording what the client library sends. */
function countingWebSocket(sent: Array<Record<string, unknown>>): typeof globalThis.WebSocket {
  return class extends WebSocket {
    override send(data: string): void {
      sent.push(JSON.parse(data) as Record<string, unknown>)
      super.send(data)
    }
  } as unknown as typeof globalThis.WebSocket
}

t.test('maxHz 2: the client library asks for no job_status for what the cap conflated, and ends on the final state', async (t) => {
  const gw = await startGateway()
  t.teardown(() => gw.stop())
  const sent: Array<Record<string, unknown>> = []
  const received: Array<Record<string, unknown>> = []
  const client = new JobsClient({ url: gw.wsUrl, WebSocket: countingWebSocket(sent), EventSource: null })
  t.teardown(() => client.close())
  client.addEventListener('message', (e) => received.push((e as CustomEvent).detail))
  let statuses = 0
  client.subscribe('rc-c', { onStatus: () => statuses++ }, { maxHz: 2 })
  await until(() => statuses === 1, 'the subscription')
  let last = 0
  for (let i = 1; i <= 19; i++) {
    last = await gw.gateway.broker.publishProgress('rc-c', Buffer.from(JSON.stringify({ status: 'processing', progress: i * 5 })))
    await sleep(10)
  }
  last = await gw.gateway.broker.publishProgress('rc-c', Buffer.from(JSON.stringify({ status: 'completed', progress: 100 })))
  await until(() => client.job('rc-c')?.seq === last, 'the final state', 5000)
  await sleep(100) // a resync request would be answered by now
  t.match(client.job('rc-c')!.data, { status: 'completed', progress: 100, seq: last })
  const updates = received.filter((m) => m.type === 'job_update')
  t.ok(updates.length < 10, `the cap held (${updates.length} updates of ${last})`)
  t.ok(updates.some((m) => typeof m.prev_seq === 'number'), 'skips were marked')
  t.same(sent.filter((m) => m.type === 'job_status'), [], 'no job_status requests')
  t.equal(received.filter((m) => m.type === 'job_status').length, 1, 'only the subscription\'s job_status')
})

t.test('a repeated subscribe_job with a new max_hz moves the socket to that rate, losing and repeating nothing', async (t) => {
  const gw = await startGateway()
  t.teardown(() => gw.stop())
  const c = await gw.connect()
  await c.subscribe('rc-r')
  const publish = (body: object) => gw.gateway.broker.publishProgress('rc-r', Buffer.from(JSON.stringify(body)))
  const burst = async (n: number): Promise<number> => {
    let last = 0
    for (let i = 0; i < n; i++) {
      last = await publish({ status: 'processing', progress: i })
      await sleep(10)
    }
    return last
  }
  let last = await burst(3)
  await until(() => seqs(c).at(-1) === last, 'full rate')
  t.same(seqs(c), [1, 2, 3], 'full rate: every update')

  c.send({ type: 'subscribe_job', job_id: 'rc-r', max_hz: 1 })
  t.match(await c.nextOfType('job_status', 'rc-r'), { data: { seq: 3 } }, 'answered with a job_status')
  const before = seqs(c).length
  last = await burst(20)
  await until(() => seqs(c).at(-1) === last, 'the trailing edge at 1 Hz', 5000)
  const capped = seqs(c).length - before
  t.ok(capped <= 3, `capped to 1 Hz: ${capped} updates for 20 in ~${20 * 12} ms`)

  c.send({ type: 'subscribe_job', job_id: 'rc-r' })
  await c.nextOfType('job_status', 'rc-r')
  const uncapped = seqs(c).length
  const first = last + 1
  last = await burst(5)
  await until(() => seqs(c).at(-1) === last, 'full rate again')
  t.same(seqs(c).slice(uncapped), [first, first + 1, first + 2, first + 3, first + 4], 'without max_hz: full rate again')
  t.same(seqs(c), [...new Set(seqs(c))].sort((a, b) => a - b), 'nothing repeated or reordered across the moves')
})

t.test('a new generation goes out at once under a cap, not conflated behind a later plain PUBLISH', async (t) => {
  // Found by the property test: a 2 Hz client held the old generation's final state for good,
  // the restart's frame having been replaced in the slot by a plain PUBLISH (no epoch).
  const gw = await startGateway({ 'max-update-hz': '1' })
  t.teardown(() => gw.stop())
  const c = await gw.connect()
  await c.subscribe('rc-gen')
  const broker = gw.gateway.broker
  await broker.publishProgress('rc-gen', Buffer.from('{"status":"processing"}'))
  await broker.publishProgress('rc-gen', Buffer.from('{"status":"completed"}')) // final: at once
  const restarted = await broker.publishProgress('rc-gen', Buffer.from('{"status":"processing","round":2}'), { restart: true })
  await broker.publish('progress:rc-gen', '{"progress":5}') // a plain PUBLISH in the same second
  const generation = await c.next((m) => m.type === 'job_update' && (m.data as { round?: number }).round === 2, 3000)
  t.match(generation.data, { seq: restarted, status: 'processing', round: 2 }, 'the new generation reached the capped client')
})
