// A gateway on a real Redis Cluster (3 masters, 3 replicas): a plain PUBLISH job and a
// producer-script job stream to one socket, each message once; the script's job is on
// sharded pub/sub (PUBSUB SHARDCHANNELS on the master that owns it) while it is watched, and
// only then; "my jobs" (GET /jobs?owner=me, subscribe_user_jobs) works as on one Redis, with
// the owner's index kept as a second step whose failure leaves the update standing;
// `jobwire publish --redis-cluster` reaches the socket; pattern mode is refused.

import t from 'tap'
import { spawn } from 'node:child_process'
import { keySlot } from '../src/broker/slots.js'
import { OwnerIndexError, Producer } from '../src/producer/producer.js'
import { loadConfig } from '../src/support/config.js'
import { clusterGatewayForFile, type TestCluster } from './fixtures/cluster.js'
import { startGateway, type TestGateway } from './fixtures/gateway.js'
import { CLI } from './fixtures/process.js'
import { SECRET, token } from './fixtures/tokens.js'
import { until } from './fixtures/until.js'

let cluster: TestCluster
let gw: TestGateway
let producer: Producer
clusterGatewayForFile((setup) => ({ cluster, gw, producer } = setup))

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

t.test("a user's jobs on a cluster: GET /jobs?owner=me lists them, subscribe_user_jobs announces new ones", async (t) => {
  const secured = await startGateway({ 'redis-cluster': cluster.seeds, 'jwt-secret': SECRET })
  t.teardown(() => secured.stop())
  const alice = await token('alice')
  const listed = async () => {
    const res = await fetch(`${secured.http}/jobs?owner=me`, { headers: { authorization: `Bearer ${alice}` } })
    t.equal(res.status, 200)
    return (await res.json()) as { owner: string; jobs: Array<{ job_id: string; data: Record<string, unknown> }> }
  }
  // The owner's set and the job live in different slots (served by different masters here).
  t.not(await cluster.masterOf(keySlot('jobwire:owner:alice')), await cluster.masterOf(keySlot('jobwire:job:{progress:mine-1}')), 'index and job on different masters')

  await producer.progress('mine-1', { status: 'queued', title: 'first' }, { owner: 'alice' })
  await producer.progress('theirs-1', { status: 'queued' }, { owner: 'bob' })
  await producer.progress('mine-1', { status: 'processing', progress: 20 })
  const mine = await listed()
  t.equal(mine.owner, 'alice')
  t.same(mine.jobs.map((j) => j.job_id), ['mine-1'], "alice's job, not bob's")
  t.match(mine.jobs[0]!.data, { seq: 2, status: 'processing', progress: 20, title: 'first' }, 'with its merged state')

  const c = await secured.connectAs(alice)
  c.send({ type: 'subscribe_user_jobs' })
  t.same(await c.nextOfType('user_jobs'), { type: 'user_jobs', user: 'alice', job_ids: ['mine-1'] })
  await producer.progress('mine-2', { status: 'queued' }, { owner: 'alice' })
  t.same(await c.nextOfType('user_job'), { type: 'user_job', user: 'alice', job_id: 'mine-2' }, 'a new job appears live')
  await producer.progress('theirs-2', { status: 'queued' }, { owner: 'bob' })
  await producer.progress('mine-2', { progress: 5 })
  await producer.progress('mine-3', { status: 'queued' }, { owner: 'alice' })
  t.same(await c.nextOfType('user_job'), { type: 'user_job', user: 'alice', job_id: 'mine-3' })
  t.same(c.all('user_job').map((m) => m.job_id), ['mine-2', 'mine-3'], "neither bob's job nor an update of a known job is announced")

  // An admin gives mine-3 to bob: it leaves alice's set and enters bob's.
  await producer.progress('mine-3', { progress: 1 }, { owner: 'bob', replaceOwner: true })
  const store = cluster.client()
  t.same(await store.zrevrange('jobwire:owner:alice', 0, -1), ['mine-2', 'mine-1'], "alice's set, most recently updated first")
  t.same(await store.zrevrange('jobwire:owner:bob', 0, -1), ['mine-3', 'theirs-2', 'theirs-1'], "bob's set")
  t.same((await listed()).jobs.map((j) => j.job_id), ['mine-2', 'mine-1'])
  const ttl = await store.ttl('jobwire:owner:alice')
  t.ok(ttl > 3600 && ttl <= 86_400, `the set lives as long as the longest state TTL (${ttl}s)`)
  c.close()
})

t.test('when only the owner index step fails, the update stands and the next update lists the job', async (t) => {
  const store = cluster.client()
  // A key of the wrong type makes the second step fail (WRONGTYPE) after the first went through.
  await store.set('jobwire:owner:broken', 'not a sorted set')
  const err = await producer.progress('half-1', { status: 'queued' }, { owner: 'broken' }).then(() => null, (e: unknown) => e)
  t.type(err, OwnerIndexError)
  t.match(err, { jobId: 'half-1', seq: 1, owner: 'broken', message: /was updated \(seq 1\).*WRONGTYPE/ })
  t.match(await store.hgetall('jobwire:job:{progress:half-1}'), { seq: '1', owner: 'broken' }, 'the update was stored')
  t.equal(await gw.gateway.broker.publishProgress('half-2', Buffer.from('{"status":"queued"}'), { owner: 'broken' }), 1,
    "the gateway's producer path answers the update's seq (and logs the index failure)")
  await store.del('jobwire:owner:broken')
  t.equal(await producer.progress('half-1', { progress: 10 }), 2)
  t.same(await store.zrevrange('jobwire:owner:broken', 0, -1), ['half-1'], "the job's next update lists it")
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
  const stored = await run(['cli-1', '--progress', '40', '--owner', 'carol', '--redis-cluster', cluster.seeds])
  t.equal(stored.code, 0, stored.out)
  t.match(stored.out, /published cli-1 seq=1 to Redis Cluster/)
  t.match((await ws.nextOfType('job_update', 'cli-1')).data, { seq: 1, progress: 40 })
  t.same(await cluster.client().zrevrange('jobwire:owner:carol', 0, -1), ['cli-1'], "listed under its owner, in the owner's slot")
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
