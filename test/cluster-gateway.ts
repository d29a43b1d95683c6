// A gateway on a real Redis Cluster (3 masters, 3 replicas): a plain PUBLISH job and a
// producer-script job stream to one socket, each message once; the script's job is on
// sharded pub/sub (PUBSUB SHARDCHANNELS on the master that owns it) while it is watched, and
// only then; `jobwire publish --redis-cluster` reaches the socket; pattern mode is refused.

import t from 'tap'
import { spawn } from 'node:child_process'
import { keySlot } from '../src/broker/slots.js'
import { Producer } from '../src/producer/producer.js'
import { loadConfig } from '../src/support/config.js'
import { startCluster, type TestCluster } from './fixtures/cluster.js'
import { startGateway, type TestGateway } from './fixtures/gateway.js'
import { CLI } from './fixtures/process.js'
import { until } from './fixtures/until.js'

let cluster: TestCluster
let gw: TestGateway
let producer: Producer

t.before(async () => {
  cluster = await startCluster()
  gw = await startGateway({ 'redis-cluster': cluster.seeds })
  producer = new Producer({ cluster: cluster.seeds })
})
t.teardown(async () => {
  await gw?.stop()
  await producer?.close()
  await cluster?.stop()
})

async function shardChannels(port: number): Promise<string[]> {
  return (await cluster.node(port).call('PUBSUB', 'SHARDCHANNELS')) as string[]
}

t.test('a plain PUBLISH job and a producer-script job stream to one socket, each message once', async (t) => {
  const ws = await gw.connect()
  t.same((await ws.subscribe('plain-1')).data, null, 'nothing stored for the plain job')
  t.same((await ws.subscribe('plain-2')).data, null)
  t.same((await ws.subscribe('script-1')).data, null)

  const owner = await cluster.masterOf(keySlot('progress:script-1'))
  t.ok((await shardChannels(owner)).includes('progress:script-1'), `PUBSUB SHARDCHANNELS on the owning master (${owner}) lists the watched job`)
  for (const port of (await cluster.masters()).filter((p) => p !== owner)) {
    t.notOk((await shardChannels(port)).includes('progress:script-1'), `not on master ${port}`)
  }

  // As the seed's Celery workers do: one connection, to whichever node it was given. (A
  // cluster relays a PUBLISH from the node it was sent to, so only messages sent through one
  // node keep their order: the Node producer sends each job's through one master.)
  const seed = cluster.node(cluster.ports[5]!)
  for (let i = 1; i <= 20; i++) {
    await seed.publish('progress:plain-1', JSON.stringify({ step: i }))
    await producer.publish('plain-2', { step: i })
    await producer.progress('script-1', { progress: i * 5 })
  }
  await producer.progress('script-1', { status: 'completed', progress: 100 })
  await seed.publish('progress:plain-1', JSON.stringify({ step: 'done' }))
  await producer.publish('plain-2', { step: 'done' })
  for (const job of ['plain-1', 'plain-2']) {
    await until(() => ws.all('job_update', job).some((m) => (m.data as { step: unknown }).step === 'done'), `the last message of ${job}`)
  }
  await until(() => ws.all('job_update', 'script-1').some((m) => (m.data as { status?: string }).status === 'completed'), 'the completed update')
  // Markers published after everything, so a late duplicate would have arrived by then.
  await producer.progress('script-1', { message: 'marker' })
  await seed.publish('progress:plain-1', JSON.stringify({ step: 'marker' }))
  await producer.publish('plain-2', { step: 'marker' })
  await until(() => ws.all('job_update', 'script-1').some((m) => (m.data as { message?: string }).message === 'marker'), 'the script marker')
  for (const job of ['plain-1', 'plain-2']) {
    await until(() => ws.all('job_update', job).some((m) => (m.data as { step: unknown }).step === 'marker'), `the marker of ${job}`)
    const steps = ws.all('job_update', job).map((m) => (m.data as { step: unknown }).step)
    t.same(steps, [...Array.from({ length: 20 }, (_, i) => i + 1), 'done', 'marker'], `every message of ${job} once, in order`)
  }
  const seqs = ws.all('job_update', 'script-1').map((m) => (m.data as { seq: number }).seq)
  t.same(seqs, Array.from({ length: 22 }, (_, i) => i + 1), 'every script update once, in order')
  const status = await ws.subscribe('script-1')
  t.match(status.data, { seq: 22, status: 'completed', progress: 100, message: 'marker' }, 'the snapshot is the stored, merged state')
  // What the gateway saw of a PUBLISH-only job is recorded for other nodes, in the job's slot.
  const store = cluster.client()
  const recorded = async () => JSON.parse((await store.hget('jobwire:job:{progress:plain-1}', 'seen')) ?? 'null') as unknown
  await until(async () => JSON.stringify(await recorded()) === '{"step":"marker"}', 'the recorded payload of the plain job (every 250 ms)')
  t.same(await recorded(), { step: 'marker' }, 'recorded under the cluster key')
  ws.close()
})

t.test('the sharded subscription goes when the last watcher leaves', async (t) => {
  const ws = await gw.connect()
  await ws.subscribe('brief-1')
  const owner = await cluster.masterOf(keySlot('progress:brief-1'))
  t.ok((await shardChannels(owner)).includes('progress:brief-1'), 'listed while watched')
  ws.send({ type: 'unsubscribe_job', job_id: 'brief-1' })
  await ws.nextOfType('unsubscribed', 'brief-1')
  await until(async () => !(await shardChannels(owner)).includes('progress:brief-1'), 'SSUNSUBSCRIBE after the unsubscribe delay')
  t.pass('gone from PUBSUB SHARDCHANNELS')
  ws.close()
})

t.test('jobwire publish --redis-cluster reaches a watching socket', async (t) => {
  const ws = await gw.connect()
  await ws.subscribe('cli-1')
  const run = (args: string[]) => new Promise<{ code: number | null; out: string }>((resolve) => {
    const proc = spawn('node', [CLI, 'publish', ...args], { env: { ...process.env, _TAPJS_PROCESSINFO_COVERAGE_: '0' }, stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    proc.stdout.on('data', (c: Buffer) => (out += c.toString()))
    proc.stderr.on('data', (c: Buffer) => (out += c.toString()))
    proc.on('exit', (code) => resolve({ code, out }))
  })
  const stored = await run(['cli-1', '--progress', '40', '--redis-cluster', cluster.seeds])
  t.equal(stored.code, 0, stored.out)
  t.match(stored.out, /published cli-1 seq=1 to Redis Cluster/)
  t.match((await ws.nextOfType('job_update', 'cli-1')).data, { seq: 1, progress: 40 })
  const plain = await run(['cli-1', '--plain', '--message', 'hi', '--redis-cluster', cluster.seeds])
  t.equal(plain.code, 0, plain.out)
  t.same((await ws.nextOfType('job_update', 'cli-1')).data, { message: 'hi' })
  ws.close()
})

t.test("the gateway's slot of a channel is the server's (CLUSTER KEYSLOT)", async (t) => {
  const node = cluster.node(cluster.ports[0]!)
  const keys = ['progress:video-42', 'jobwire:job:{progress:video-42}', 'a{}b', '{}{x}', 'foo{{bar}}', 'é{ü}', 'x'.repeat(300), '']
  for (let i = 0; i < 50; i++) keys.push(`progress:job-${i}-${Math.random().toString(36).slice(2)}`)
  for (const key of keys) t.equal(keySlot(key), await node.cluster('KEYSLOT', key), JSON.stringify(key.slice(0, 40)))
  t.equal(keySlot('jobwire:job:{progress:video-42}'), keySlot('progress:video-42'), "a job's key shares its channel's slot")
})

t.test('pattern mode is refused on a cluster at startup, with the reason', async (t) => {
  t.throws(() => loadConfig({ 'redis-cluster': cluster.seeds, 'subscription-mode': 'pattern' }, {}), /pattern cannot be used with --redis-cluster: Redis Cluster has no pattern form of sharded pub\/sub/)
  t.throws(() => loadConfig({ 'redis-cluster': cluster.seeds, redis: 'redis://127.0.0.1:1' }, {}), /not both/)
  t.throws(() => loadConfig({ 'redis-cluster': '127.0.0.1' }, {}), /--redis-cluster: '127.0.0.1' is not host:port/)
  t.equal(loadConfig({}, { REDIS_CLUSTER: ` ${cluster.seeds} ` }).redisCluster, cluster.seeds, 'REDIS_CLUSTER works')
  t.equal(loadConfig({}, { JOBWIRE_REDIS_CLUSTER: cluster.seeds }).redisCluster, cluster.seeds, 'JOBWIRE_REDIS_CLUSTER works')
})
