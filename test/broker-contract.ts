// One suite, three brokers: the embedded broker and the Redis Cluster one must behave as
// Redis + progress.lua does.

import t from 'tap'
import { pack, unpack } from 'msgpackr'
import type { Broker, BrokerListener } from '../src/broker/broker.js'
import { EmbeddedBroker } from '../src/broker/embedded.js'
import { RedisBroker } from '../src/broker/redis.js'
import { ClusterBroker } from '../src/broker/cluster.js'
import { parseClusterSeeds } from '../src/broker/cluster-seeds.js'
import { stateKey } from '../src/wire/topics.js'
import { startCluster } from './fixtures/cluster.js'
import { ProducerError } from '../src/producer/merge.js'
import { RedisOwnerIndex, type OwnerIndex } from '../src/producer/owner-index.js'
import { MAX_PAYLOAD_BYTES } from '../src/wire/payload.js'
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

for (const kind of ['embedded', 'redis', 'cluster'] as const) {
  t.test(`${kind} broker contract`, async (t) => {
    /** The job's state key in this broker's layout (Redis Cluster: with a hash tag). */
    const keyOf = (jobId: string) => stateKey({ ...names, cluster: kind === 'cluster' }, jobId)
    let ttlOf: (key: string) => Promise<number>
    let broker: Broker
    let index: OwnerIndex
    let writeRaw: ((key: string, field: string, value: string) => Promise<unknown>) | null = null
    if (kind === 'redis') {
      const redis = await startRedis()
      t.teardown(() => redis.stop())
      broker = new RedisBroker(redis.url, names, createLogger('silent'))
      const client = redis.client()
      ttlOf = (key) => client.ttl(key)
      const redisIndex = new RedisOwnerIndex(redis.url, names.keyPrefix)
      t.teardown(() => redisIndex.close())
      index = redisIndex
      writeRaw = (key, field, value) => client.hset(key, field, value)
    } else if (kind === 'cluster') {
      const cluster = await startCluster()
      t.teardown(() => cluster.stop())
      const clusterBroker = new ClusterBroker(parseClusterSeeds(cluster.seeds), names, createLogger('silent'))
      broker = clusterBroker
      const client = cluster.client()
      ttlOf = (key) => client.ttl(key)
      // The owner's index is kept by a second step in the owner's slot, and read by the broker.
      index = clusterBroker
      writeRaw = (key, field, value) => client.hset(key, field, value)
    } else {
      const embedded = new EmbeddedBroker(names)
      broker = embedded
      index = embedded
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
      // The low 32 bits of the millisecond clock when the job began (compared for equality only).
      t.ok(Math.abs(obj.epoch - (Date.now() % 0x100000000)) < 5000, 'the epoch is when the job began, in 32 bits')
      const [record] = await broker.readJobs(['c1'])
      t.same(record!.state, msg.payload, 'stored = published')
      t.equal(record!.owner, null)
      t.equal(await broker.publishProgress('c1', Buffer.from('{}'), { replace: true }), 2)
      const second = (await sink.next()).payload.toString()
      t.equal(second.replace(/"ts":\d+/, '"ts":T'), `{"seq":2,"epoch":${obj.epoch},"ts":T}`, 'same epoch while the job lives')
    })

    t.test('readJobs reads several jobs at once, in the order asked, absent ones as nulls', async (t) => {
      await broker.publishProgress('r1', Buffer.from('{"progress":1}'), { owner: 'alice' })
      await broker.publishProgress('r2', Buffer.from('{"progress":2}'))
      const records = await broker.readJobs(['r2', 'absent', 'r1', 'r2'])
      t.same(records.map((r) => r.state === null ? null : JSON.parse(r.state.toString()).progress), [2, null, 1, 2])
      t.same(records.map((r) => r.owner), [null, null, 'alice', null])
      t.same(records.map((r) => r.seen), [null, null, null, null], 'nothing recorded for jobs with stored state')
      t.same(await broker.readJobs([]), [], 'no jobs, no records')
    })

    t.test('an update merges its fields into the stored state; frame = snapshot', async (t) => {
      await broker.subscribe(['progress:m1'])
      await broker.publishProgress('m1', Buffer.from('{"status":"processing","message":"transcoding","progress":10,"result":{"a":1,"b":2}}'))
      await sink.next()
      t.equal(await broker.publishProgress('m1', Buffer.from('{"progress":50,"result":{"a":3}}')), 2)
      const frame = await sink.next()
      t.match(JSON.parse(frame.payload.toString()), { seq: 2, status: 'processing', message: 'transcoding', progress: 50 })
      t.same(JSON.parse(frame.payload.toString()).result, { a: 3 }, 'shallow: a nested object is replaced whole')
      t.same((await broker.readJobs(['m1']))[0]!.state, frame.payload, 'stored = published')
    })

    t.test('merging keeps what producers wrote byte for byte', async (t) => {
      await broker.publishProgress('m2', Buffer.from('{"files":[],"n":1.50,"x":{"y":[]},"ts":7}'))
      await broker.publishProgress('m2', Buffer.from(' { "n" : 2 , "z":"\\u0041"} '))
      const state = (await broker.readJobs(['m2']))[0]!.state!.toString()
      t.equal(state.replace(/"epoch":\d+,"ts":\d+/, '"epoch":E,"ts":T'), '{"seq":2,"epoch":E,"ts":T,"files":[],"x":{"y":[]},"n":2,"z":"\\u0041"}')
    })

    t.test('replace stores the payload alone, as before merging existed', async (t) => {
      await broker.publishProgress('m3', Buffer.from('{"status":"processing","message":"a"}'))
      await broker.publishProgress('m3', Buffer.from('{"progress":5}'), { replace: true })
      const state = JSON.parse((await broker.readJobs(['m3']))[0]!.state!.toString())
      t.same(Object.keys(state), ['seq', 'epoch', 'ts', 'progress'])
    })

    t.test("msgpack and JSON merge across encodings; the update's encoding wins", async (t) => {
      await broker.publishProgress('m4', pack({ a: 0.1, files: [], o: {}, s: 'é', n: -5 }))
      await broker.publishProgress('m4', pack({ b: 2 }))
      let state = (await broker.readJobs(['m4']))[0]!.state!
      t.match(unpack(state), { seq: 2, a: 0.1, files: [], o: {}, s: 'é', n: -5, b: 2 })
      await broker.publishProgress('m4', Buffer.from('{"c":3}'))
      state = (await broker.readJobs(['m4']))[0]!.state!
      const json = JSON.parse(state.toString())
      t.same({ ...json, epoch: 0, ts: 0 }, { seq: 3, epoch: 0, ts: 0, a: 0.1, files: [], o: {}, s: 'é', n: -5, b: 2, c: 3 }, 'msgpack fields carried into JSON')
      await broker.publishProgress('m4', pack({ d: [1, { e: null }] }))
      const back = unpack((await broker.readJobs(['m4']))[0]!.state!)
      t.same({ ...back, epoch: 0, ts: 0 }, { seq: 4, epoch: 0, ts: 0, a: 0.1, files: [], o: {}, s: 'é', n: -5, b: 2, c: 3, d: [1, { e: null }] }, 'and back into msgpack')
    })

    t.test('the schema: status from the fixed set, progress 0..100, message a string', async (t) => {
      for (const body of ['{"progress":"forty"}', '{"status":"done","progress":140}', '{"progress":-1}', '{"progress":100.5}',
        '{"status":"PROCESSING"}', '{"message":5}']) {
        await t.rejects(broker.publishProgress('m5', Buffer.from(body)), ProducerError, `refuses ${body}`)
      }
      await t.rejects(broker.publishProgress('m5', pack({ progress: 'forty' })), /progress must be a number from 0 to 100/)
      await t.rejects(broker.publishProgress('m5', Buffer.from('{"status":"done"}')), /status must be one of queued, processing, completed, failed, cancelled/)
      await t.rejects(broker.publishProgress('m5', Buffer.from('{"message":[]}')), /message must be a string/)
      t.equal((await broker.readJobs(['m5']))[0]!.state, null, 'nothing stored')
      // null deletes a field (docs/protocol.md, merge rules): allowed for every field.
      for (const body of ['{"status":"queued","progress":0}', '{"progress":100,"message":""}', '{"progress":33.3,"other":"free","status2":1}', '{"status":null,"message":null}']) {
        t.ok(await broker.publishProgress('m5', Buffer.from(body)) > 0, `accepts ${body}`)
      }
    })

    t.test('a state that would grow past the payload limit is refused and nothing changes', async (t) => {
      const half = 'x'.repeat(MAX_PAYLOAD_BYTES / 2)
      await broker.publishProgress('m6', Buffer.from(JSON.stringify({ a: half })))
      await t.rejects(broker.publishProgress('m6', Buffer.from(JSON.stringify({ b: half }))), /the state would be larger than 262144 bytes/)
      const state = JSON.parse((await broker.readJobs(['m6']))[0]!.state!.toString())
      t.equal(state.seq, 1, 'seq unchanged')
      t.equal(await broker.publishProgress('m6', Buffer.from(JSON.stringify({ b: half })), { replace: true }), 2, 'replace fits')
    })

    t.test('a stored state that is not a valid payload is not merged', { skip: writeRaw === null ? 'only Redis can hold one' : false }, async (t) => {
      await broker.publishProgress('m7', Buffer.from('{"a":1}'))
      await writeRaw!(keyOf('m7'), 'state', '{"a":NaN,"b":2}')
      await broker.publishProgress('m7', Buffer.from('{"c":3}'))
      const state = JSON.parse((await broker.readJobs(['m7']))[0]!.state!.toString())
      t.same(Object.keys(state), ['seq', 'epoch', 'ts', 'c'])
    })

    t.test("jobs with an owner are indexed under the owner; new ones announced on the owner's channel", async (t) => {
      await broker.subscribe(['jobwire:user-jobs:ida', 'jobwire:user-jobs:ivan'])
      await broker.publishProgress('o1', Buffer.from('{"status":"queued"}'), { owner: 'ida' })
      t.same(await sink.next(), { channel: 'jobwire:user-jobs:ida', payload: Buffer.from('o1') }, 'the new job announced')
      await broker.publishProgress('o2', Buffer.from('{"status":"queued"}'), { owner: 'ida' })
      t.same(await sink.next(), { channel: 'jobwire:user-jobs:ida', payload: Buffer.from('o2') })
      await new Promise((r) => setTimeout(r, 3))
      await broker.publishProgress('o1', Buffer.from('{"progress":5}'))
      t.same(await index.ownerJobs('ida', 10), ['o1', 'o2'], 'most recently updated first, also without the owner given again')
      t.same(await index.ownerJobs('ida', 1), ['o1'], 'limited')
      await broker.publishProgress('o3', Buffer.from('{"progress":5}'))
      t.same(await index.ownerJobs('nobody', 10), [], 'jobs without an owner are not indexed')
      await broker.publishProgress('o2', Buffer.from('{"progress":9}'), { owner: 'ivan', replaceOwner: true })
      t.same(await sink.next(), { channel: 'jobwire:user-jobs:ivan', payload: Buffer.from('o2') }, 'the new owner is told')
      t.same(await index.ownerJobs('ida', 10), ['o1'], 'the old owner no longer lists it')
      t.same(await index.ownerJobs('ivan', 10), ['o2'])
      const before = sink.received.length
      await broker.publishProgress('o1', Buffer.from('{"progress":6}'))
      await broker.publish('progress:c1', '{"p":0}')
      await sink.next()
      t.equal(sink.received.length, before + 1, 'an update of a known job announces nothing')
      await broker.unsubscribe(['jobwire:user-jobs:ida', 'jobwire:user-jobs:ivan'])
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

    t.test('newEpoch: a compare-and-set on (epoch, seq) that begins a new epoch and publishes the state with it', async (t) => {
      await broker.subscribe(['progress:ne1', 'progress:ne2'])
      await broker.publishProgress('ne1', Buffer.from('{"status":"processing","progress":10,"message":"m"}'))
      await broker.publishProgress('ne1', Buffer.from('{"progress":20}'))
      await sink.next()
      const before = JSON.parse((await sink.next()).payload.toString()) as { epoch: number; seq: number }
      t.equal(await broker.newEpoch('ne1', before.epoch + 1, 2), null, 'another epoch: nothing')
      t.equal(await broker.newEpoch('ne1', before.epoch, 1), null, 'another seq: nothing')
      t.equal(await broker.newEpoch('absent-ne', before.epoch, 2), null, 'no record: nothing')
      const epoch = await broker.newEpoch('ne1', before.epoch, 2)
      t.ok(Number.isSafeInteger(epoch) && epoch !== before.epoch, 'a new epoch')
      const frame = await sink.next()
      const moved = JSON.parse(frame.payload.toString())
      t.same({ ...moved, epoch: 0 }, { ...before, epoch: 0 }, 'the same state, in the new epoch')
      t.equal(moved.epoch, epoch)
      t.same((await broker.readJobs(['ne1']))[0]!.state, frame.payload, 'stored = published')
      t.equal(await broker.newEpoch('ne1', before.epoch, 2), null, 'once')
      t.equal(await broker.publishProgress('ne1', Buffer.from('{"progress":30}')), 3)
      t.match(JSON.parse((await sink.next()).payload.toString()), { epoch, seq: 3, progress: 30, message: 'm' }, 'later writes continue the new epoch')
      await broker.publishProgress('ne2', pack({ status: 'processing', progress: 1 }))
      const packed = unpack((await sink.next()).payload) as { epoch: number; seq: number }
      const next = await broker.newEpoch('ne2', packed.epoch, packed.seq)
      t.match(unpack((await sink.next()).payload), { epoch: next, seq: 1, progress: 1, status: 'processing' }, 'msgpack too')
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
      await t.rejects(broker.publishProgress('c4', pack({ seq: null, a: 1 })), /must not set seq/, 'a nil seq cannot hide from the check')
      await t.rejects(broker.publishProgress('c4', Buffer.from([0x82, 0xa1, 0x61, 0x01, 0xa1, 0x61, 0x02])), /the key "a" more than once/, 'refuses repeated keys')
      for (const [name, payload] of HOSTILE) {
        await t.rejects(broker.publishProgress('c4', payload), ProducerError, `refuses ${name}`)
      }
      t.same(await broker.readJobs(['c4']), [{ state: null, owner: null, seen: null }])
    })

    t.test('TTL: shorter once the status is terminal', { skip: kind === 'embedded' ? 'TTL is read from Redis' : false }, async (t) => {
      await broker.publishProgress('c5', Buffer.from('{"status":"processing"}'))
      t.ok((await ttlOf(keyOf('c5'))) > 10, 'running TTL')
      await broker.publishProgress('c5', Buffer.from('{"status":"completed"}'))
      t.ok((await ttlOf(keyOf('c5'))) <= 10, 'terminal TTL')
      await broker.publishProgress('c5', Buffer.from('{"progress":100}'))
      t.ok((await ttlOf(keyOf('c5'))) <= 10, 'still terminal: the merged state is what counts')
      await broker.publishProgress('c9', Buffer.from('{"status":"queued"}'), { owner: 'tara' })
      const ttl = await ttlOf('jobwire:owner:tara')
      t.ok(ttl > 10 && ttl <= 100, `the owner index lives as long as the longest state TTL (${ttl}s)`)
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

    t.test('pattern subscription receives every job channel', { skip: kind === 'cluster' ? 'refused on Redis Cluster (see the cluster tests)' : false }, async (t) => {
      await broker.psubscribe('progress:*')
      await broker.publish('progress:any-job', '{"p":9}')
      const msg = await sink.next()
      t.equal(msg.channel, 'progress:any-job')
    })
  })
}
