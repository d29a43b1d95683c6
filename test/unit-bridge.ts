// The hot path against a fake uWS app: frames are spliced from the producer's bytes, one
// publish per encoding with subscribers, nothing for encodings without, malformed dropped.

import t from 'tap'
import { pack, unpack } from 'msgpackr'
import type { TemplatedApp } from 'uWebSockets.js'
import type { Broker } from '../src/broker/broker.js'
import { createBridge } from '../src/stream/bridge.js'
import { Fanout } from '../src/stream/fanout.js'
import { createLogger } from '../src/support/log.js'
import { Metrics } from '../src/support/metrics.js'
import { WatchedJobs } from '../src/stream/watched-jobs.js'

function setup(subscribers: Record<string, number>) {
  const published: Array<{ topic: string; frame: string | Buffer; binary: boolean }> = []
  const app = {
    numSubscribers: (topic: string) => subscribers[topic] ?? 0,
    publish: (topic: string, frame: string | Buffer, binary: boolean) => {
      published.push({ topic, frame, binary })
      return true
    },
  } as unknown as TemplatedApp
  const broker = { subscribe: async () => {}, unsubscribe: async () => {} } as unknown as Broker
  const watched = new WatchedJobs(broker, { mode: 'pattern', channelPrefix: 'progress:', unsubscribeDelayMs: 10 }, createLogger('silent'))
  const metrics = new Metrics()
  const malformed: string[] = []
  const bridge = createBridge(watched, new Fanout(app, metrics), metrics, 'progress:'.length, (_job, reason) => malformed.push(reason))
  return { published, watched, metrics, malformed, bridge }
}

t.test('a JSON payload is spliced, byte for byte, into one JSON frame', async (t) => {
  const { published, watched, bridge, metrics } = setup({ 'j:a1': 3 })
  watched.acquire('a1')
  const payload = Buffer.from('{"progress": 5, "x":[ ]}')
  bridge(Buffer.from('progress:a1'), payload)
  t.equal(published.length, 1)
  t.equal(published[0]!.topic, 'j:a1')
  t.equal(published[0]!.frame.toString(), '{"type":"job_update","job_id":"a1","data":{"progress": 5, "x":[ ]}}')
  t.equal(published[0]!.binary, false)
  t.equal(metrics.framesOut, 3, 'frames counted per subscriber')
})

t.test('no msgpack frame for a job nobody receives in msgpack, and vice versa', async (t) => {
  const { published, watched, bridge } = setup({ 'm:b1': 1 })
  watched.acquire('b1')
  bridge(Buffer.from('progress:b1'), Buffer.from('{"p":1}'))
  t.same(published.map((p) => p.topic), ['m:b1'])
  t.same(unpack(published[0]!.frame as Buffer), { type: 'job_update', job_id: 'b1', data: { p: 1 } })
  t.equal(published[0]!.binary, true)
})

t.test('a msgpack payload is spliced for msgpack clients and converted for JSON clients', async (t) => {
  const { published, watched, bridge } = setup({ 'm:c1': 1, 'j:c1': 1 })
  watched.acquire('c1')
  const payload = pack({ progress: 9, tags: ['a'] })
  bridge(Buffer.from('progress:c1'), payload)
  t.equal(published.length, 2)
  const json = published.find((p) => p.topic === 'j:c1')!
  const mp = published.find((p) => p.topic === 'm:c1')!
  t.same(JSON.parse(json.frame.toString()), { type: 'job_update', job_id: 'c1', data: { progress: 9, tags: ['a'] } })
  t.ok((mp.frame as Buffer).subarray(-payload.length).equals(payload), 'msgpack payload bytes kept')
  t.same(unpack(mp.frame as Buffer), { type: 'job_update', job_id: 'c1', data: { progress: 9, tags: ['a'] } })
})

t.test('unwatched jobs and malformed payloads publish nothing and are counted', async (t) => {
  const { published, watched, bridge, metrics, malformed } = setup({ 'j:d1': 1 })
  bridge(Buffer.from('progress:nobody'), Buffer.from('{"p":1}'))
  t.equal(metrics.unwatchedMessages, 1)
  watched.acquire('d1')
  for (const bad of ['[1]', '{"a"', 'x', '']) bridge(Buffer.from('progress:d1'), Buffer.from(bad))
  t.equal(published.length, 0)
  t.equal(metrics.malformedPayloads, 4)
  t.equal(malformed.length, 4)
})

t.test('the last payload and its seq are kept for snapshots; ts feeds the latency histogram', async (t) => {
  const { watched, bridge, metrics } = setup({})
  const job = watched.acquire('e1')
  bridge(Buffer.from('progress:e1'), Buffer.from(JSON.stringify({ seq: 7, ts: Date.now() - 3, p: 1 })))
  t.same(job.lastPayload, { seq: 7, ts: job.lastPayload!.ts, p: 1 })
  t.equal(job.lastSeq, 7)
  t.equal(metrics.latencyCount, 1)
})

t.test('SSE sinks get the update as one finished event text, the same for every sink', async (t) => {
  const { watched, bridge } = setup({})
  const job = watched.acquire('f1')
  const got: string[][] = [[], []]
  for (const list of got) job.sinks.add({ send: (event) => list.push(event), resync: () => undefined })
  bridge(Buffer.from('progress:f1'), Buffer.from('{"seq":3,\n"p":1}'))
  const expected = 'event: job_update\nid: 3\ndata: {"type":"job_update","job_id":"f1","data":{"seq":3, "p":1}}\n\n'
  t.same(got, [[expected], [expected]], 'line breaks folded, id is the seq')
})

t.test('anything that still throws in the hot path costs one message, not the process', async (t) => {
  const { watched, bridge, metrics, malformed, published } = setup({ 'j:g1': 1 })
  watched.acquire('g1')
  let explode = true
  const original = watched.get('g1')!.see.bind(watched.get('g1')!)
  watched.get('g1')!.see = (payload, seq, epoch) => {
    if (explode) {
      explode = false
      throw new Error('boom')
    }
    original(payload, seq, epoch)
  }
  bridge(Buffer.from('progress:g1'), Buffer.from('{"p":1}'))
  bridge(Buffer.from('progress:g1'), Buffer.from('{"p":2}'))
  t.equal(metrics.malformedPayloads, 1)
  t.match(malformed, [/failed in the hot path: boom/])
  t.equal(published.length, 1, 'the next message went out')
})

t.test('while a new generation is checked, the newest payload is held as a copy; nothing is held otherwise', async (t) => {
  const published: string[] = []
  const app = { numSubscribers: (topic: string) => (topic === 'j:h1' ? 1 : 0), publish: (_topic: string, frame: string | Buffer) => published.push(frame.toString()) } as unknown as TemplatedApp
  const broker = { subscribe: async () => {}, unsubscribe: async () => {} } as unknown as Broker
  const watched = new WatchedJobs(broker, { mode: 'pattern', channelPrefix: 'progress:', unsubscribeDelayMs: 10 }, createLogger('silent'))
  const metrics = new Metrics()
  const checked: string[] = []
  const bridge = createBridge(watched, new Fanout(app, metrics), metrics, 'progress:'.length, () => undefined, (job) => checked.push(job.id))
  const job = watched.acquire('h1')
  bridge(Buffer.from('progress:h1'), Buffer.from('{"seq":4,"epoch":1}'))
  t.equal(job.held, null, 'no copy on the ordinary path')
  const network = Buffer.from('{"seq":1,"epoch":2}')
  bridge(Buffer.from('progress:h1'), network)
  t.same(checked, ['h1'])
  network.fill(0) // the network's buffer is reused
  t.equal(job.held?.toString(), '{"seq":1,"epoch":2}', 'a copy of the new generation\'s frame')
  bridge(Buffer.from('progress:h1'), Buffer.from('{"seq":2,"epoch":2}'))
  t.equal(job.held?.toString(), '{"seq":2,"epoch":2}', 'the newest replaces it')
  t.equal(published.length, 1, 'nothing of the new generation is published during the check')
})
