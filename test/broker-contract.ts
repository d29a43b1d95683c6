// One suite, two brokers: the embedded broker must behave as Redis + progress.lua does.

import t from 'tap'
import { pack, unpack } from 'msgpackr'
import type { Broker, BrokerListener } from '../src/broker/broker.js'
import { EmbeddedBroker } from '../src/broker/embedded.js'
import { RedisBroker } from '../src/broker/redis.js'
import { ProducerError } from '../src/producer/merge.js'
import { createLogger } from '../src/support/log.js'
import { startRedis } from './fixtures/redis.js'
import { HOSTILE } from './fixtures/hostile-payloads.js'

const names = { channelPrefix: 'progress:', keyPrefix: 'jobwire:', stateTtlSec: 100, terminalTtlSec: 10 }

interface Received { channel: string; payload: Buffer }

function listen(broker: Broker): { received: Received[]; next(): Promise<Received>; ready: Promise<void> } {
  const received: Received[] = []
  let wake: (() => void) | null = null
  let readyResolve!: () => void
  const ready = new Promise<void>((r) => (readyResolve = r))
  const listener: BrokerListener = {
    message(channel, payload) {
      received.push({ channel: channel.toString(), payload: Buffer.from(payload) })
      wake?.()
    },
    state(state) {
      if (state === 'ready') readyResolve()
    },
    restored() {},
  }
  broker.start(listener)
  let taken = 0
  return {
    received,
    ready,
    async next() {
      const deadline = Date.now() + 5000
      while (received.length <= taken) {
        if (Date.now() > deadline) throw new Error('no message')
        await new Promise<void>((r) => {
          wake = r
          setTimeout(r, 50)
        })
      }
      return received[taken++]!
    },
  }
}

for (const kind of ['embedded', 'redis'] as const) {
  t.test(`${kind} broker contract`, async (t) => {
    let ttlOf: (key: string) => Promise<number>
    let broker: Broker
    if (kind === 'redis') {
      const redis = await startRedis()
      t.teardown(() => redis.stop())
      broker = new RedisBroker(redis.url, names, createLogger('silent'))
      const client = redis.client()
      ttlOf = (key) => client.ttl(key)
    } else {
      const embedded = new EmbeddedBroker(names)
      broker = embedded
      ttlOf = async () => -1
    }
    t.teardown(() => broker.close())
    const sink = listen(broker)
    await sink.ready

    t.test('publishProgress bumps seq, merges seq and ts, stores and publishes the same bytes', async (t) => {
      await broker.subscribe(['progress:c1'])
      t.equal(await broker.publishProgress('c1', Buffer.from('{"progress":5}')), 1)
      const msg = await sink.next()
      t.equal(msg.channel, 'progress:c1')
      const obj = JSON.parse(msg.payload.toString())
      t.match(obj, { seq: 1, progress: 5 })
      t.ok(Math.abs(obj.ts - Date.now()) < 5000, 'ts is now')
      t.ok(/^\{"seq":1,"epoch":\d+,"ts":\d+,"progress":5\}$/.test(msg.payload.toString()), 'fields merged first, producer bytes kept')
      t.ok(Math.abs(obj.epoch - Date.now()) < 5000, 'the epoch is when the job began')
      const [record] = await broker.readJobs(['c1'])
      t.same(record!.state, msg.payload, 'stored = published')
      t.equal(record!.owner, null)
      t.equal(await broker.publishProgress('c1', Buffer.from('{}')), 2)
      const second = (await sink.next()).payload.toString()
      t.equal(second.replace(/"ts":\d+/, '"ts":T'), `{"seq":2,"epoch":${obj.epoch},"ts":T}`, 'same epoch while the job lives')
    })

    t.test('a producer ts is kept, and the owner is recorded', async (t) => {
      await broker.publishProgress('c2', Buffer.from(' {"ts":123,"a":[]} '), { owner: 'user-1' })
      const [record] = await broker.readJobs(['c2'])
      t.match(JSON.parse(record!.state!.toString()), { seq: 1, epoch: Number, ts: 123, a: [] })
      t.equal(record!.owner, 'user-1')
      await broker.publishProgress('c2', Buffer.from('{"x":1}'))
      t.equal((await broker.readJobs(['c2']))[0]!.owner, 'user-1', 'owner kept when not given')
    })

    t.test('another owner is refused unless replacing is asked for; replacing begins a new epoch', async (t) => {
      await broker.publishProgress('c7', Buffer.from('{"p":1}'), { owner: 'alice' })
      const before = JSON.parse((await broker.readJobs(['c7']))[0]!.state!.toString())
      await t.rejects(broker.publishProgress('c7', Buffer.from('{"p":2}'), { owner: 'mallory' }), /belongs to another owner/)
      t.equal((await broker.readJobs(['c7']))[0]!.owner, 'alice', 'nothing written')
      t.equal(await broker.publishProgress('c7', Buffer.from('{"p":3}'), { owner: 'alice' }), 2, 'the same owner may write')
      await new Promise((r) => setTimeout(r, 2))
      t.equal(await broker.publishProgress('c7', Buffer.from('{"p":4}'), { owner: 'bob', replaceOwner: true }), 3)
      const [record] = await broker.readJobs(['c7'])
      t.equal(record!.owner, 'bob')
      t.ok(JSON.parse(record!.state!.toString()).epoch > before.epoch, 'a new epoch')
    })

    t.test('a payload may not set epoch', async (t) => {
      await t.rejects(broker.publishProgress('c8', Buffer.from('{"epoch":5}')), /must not set epoch/)
    })

    t.test('msgpack payloads are merged as msgpack', async (t) => {
      await broker.publishProgress('c3', pack({ progress: 1, status: 'processing' }))
      const [record] = await broker.readJobs(['c3'])
      t.match(unpack(record!.state!), { seq: 1, progress: 1, status: 'processing' })
      t.type(unpack(record!.state!).ts, 'number')
      const big: Record<string, number> = {}
      for (let i = 0; i < 20; i++) big[`k${i}`] = i
      await broker.publishProgress('c3', pack(big))
      t.match(unpack((await broker.readJobs(['c3']))[0]!.state!), { ...big, seq: 2 })
    })

    t.test('bad payloads are refused and nothing is stored', async (t) => {
      const bad = ['[1,2]', 'garbage', '', '{"seq":5}', '{"ts":"soon"}', '{"a":NaN}', '{"a":1', '"text"', 'null']
      for (const body of bad) {
        await t.rejects(broker.publishProgress('c4', Buffer.from(body)), ProducerError, `refuses ${JSON.stringify(body)}`)
      }
      await t.rejects(broker.publishProgress('c4', Buffer.from([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xc3, 0x28, 0x22, 0x7d])), ProducerError, 'refuses invalid UTF-8')
      await t.rejects(broker.publishProgress('c4', Buffer.concat([pack({ a: 1 }), Buffer.from([1])])), ProducerError, 'refuses trailing bytes')
      await t.rejects(broker.publishProgress('c4', pack({ seq: null, a: 1 })), /nil values or repeated keys/, 'a nil seq cannot hide from the check')
      await t.rejects(broker.publishProgress('c4', Buffer.from([0x82, 0xa1, 0x61, 0x01, 0xa1, 0x61, 0x02])), /nil values or repeated keys/, 'refuses repeated keys')
      for (const [name, payload] of HOSTILE) {
        await t.rejects(broker.publishProgress('c4', payload), ProducerError, `refuses ${name}`)
      }
      t.same(await broker.readJobs(['c4']), [{ state: null, owner: null, seen: null }])
    })

    t.test('TTL: shorter once the status is terminal', { skip: kind === 'embedded' ? 'TTL is read from Redis' : false }, async (t) => {
      await broker.publishProgress('c5', Buffer.from('{"status":"processing"}'))
      t.ok((await ttlOf('jobwire:job:c5')) > 10, 'running TTL')
      await broker.publishProgress('c5', Buffer.from('{"status":"completed"}'))
      t.ok((await ttlOf('jobwire:job:c5')) <= 10, 'terminal TTL')
    })

    t.test('plain publish reaches subscribers, stores nothing; unsubscribe stops it', async (t) => {
      await broker.subscribe(['progress:c6'])
      await broker.publish('progress:c6', '{"p":1}')
      t.equal((await sink.next()).payload.toString(), '{"p":1}')
      t.same(await broker.readJobs(['c6']), [{ state: null, owner: null, seen: null }])
      await broker.unsubscribe(['progress:c6'])
      const before = sink.received.length
      await broker.publish('progress:c6', '{"p":2}')
      await broker.publish('progress:c1', '{"p":3}')
      t.equal((await sink.next()).payload.toString(), '{"p":3}', 'a still-subscribed channel delivers')
      t.equal(sink.received.length, before + 1, 'the unsubscribed one did not')
    })

    t.test('pattern subscription receives every job channel', async (t) => {
      await broker.psubscribe('progress:*')
      await broker.publish('progress:any-job', '{"p":9}')
      const msg = await sink.next()
      t.equal(msg.channel, 'progress:any-job')
    })
  })
}
