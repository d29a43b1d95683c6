// Final means final, on the writer's side: a final state sent by plain PUBLISH on a job whose
// state the producer script stores is recorded (exactly once, however many gateways watch the
// job) and wins over the older stored state; a non-final one is counted, not stored; the
// producer paths refuse to take a final state back to running within its epoch, and
// `restart` (Node, HTTP producer API, CLI) starts a new generation that keeps the owner.

import t from 'tap'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { FinalState } from '../src/producer/merge.js'
import { Producer } from '../src/producer/producer.js'
import { projectPath } from '../src/support/paths.js'
import { startGateway } from './fixtures/gateway.js'
import { startRedis } from './fixtures/redis.js'
import { pause, until } from './fixtures/until.js'

interface State { seq?: number; epoch?: number; status?: string; progress?: number; result?: unknown }

async function getJob(http: string, jobId: string): Promise<State | null> {
  const res = await fetch(`${http}/jobs/${jobId}`)
  return res.status === 200 ? ((await res.json()) as { data: State }).data : null
}

t.test('a final plain PUBLISH after script writes: GET /jobs and a new subscriber see it', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const gw = await startGateway({ redis: redis.url })
  t.teardown(() => gw.stop())
  const producer = new Producer({ redis: redis.url })
  t.teardown(() => producer.close())
  const publisher = redis.client()

  const watcher = await gw.connect()
  await watcher.subscribe('ff-1')
  await producer.progress('ff-1', { status: 'processing', progress: 90 })
  await watcher.next((m) => m.type === 'job_update' && (m.data as State).seq === 1)
  // The worker's crash handler: a plain PUBLISH, no seq.
  await publisher.publish('progress:ff-1', JSON.stringify({ status: 'failed' }))
  await until(async () => (await getJob(gw.http, 'ff-1'))?.status === 'failed', 'GET /jobs/ff-1 says failed')
  const got = (await getJob(gw.http, 'ff-1'))!
  t.match(got, { seq: 2, status: 'failed', progress: 90 }, 'stored through the script: merged, sequenced')
  const late = await gw.connect()
  t.match((await late.subscribe('ff-1')).data, { seq: 2, status: 'failed' }, 'a new subscriber sees failed')
  t.match(JSON.parse((await publisher.hget('jobwire:job:ff-1', 'state'))!), { seq: 2, status: 'failed' })
  await t.rejects(producer.progress('ff-1', { status: 'processing', progress: 91 }), FinalState, 'and it is final')
})

t.test('two gateways watch the job: the final plain PUBLISH is stored once (seq + 1 only)', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const a = await startGateway({ redis: redis.url })
  t.teardown(() => a.stop())
  const b = await startGateway({ redis: redis.url })
  t.teardown(() => b.stop())
  const producer = new Producer({ redis: redis.url })
  t.teardown(() => producer.close())
  const publisher = redis.client()
  const watchers = [await a.connect(), await b.connect()]
  for (const w of watchers) await w.subscribe('ff-2')
  await producer.progress('ff-2', { status: 'processing', progress: 90 })
  for (const w of watchers) await w.next((m) => m.type === 'job_update' && (m.data as State).seq === 1)
  await publisher.publish('progress:ff-2', JSON.stringify({ status: 'completed', result: { url: '/out' } }))
  for (const w of watchers) {
    const update = await w.next((m) => m.type === 'job_update' && (m.data as State).seq === 2)
    t.match(update.data, { seq: 2, status: 'completed', result: { url: '/out' } }, 'the sequenced final state goes out')
  }
  // Both gateways had their chance to apply it; give a second one time to try (and fail).
  await pause(1000)
  t.equal(await publisher.hget('jobwire:job:ff-2', 'seq'), '2', 'applied exactly once')
  for (const w of watchers) t.equal(w.all('job_update', 'ff-2').filter((m) => (m.data as State).seq !== undefined && (m.data as State).seq! > 2).length, 0, 'no second application')
})

t.test('a non-final plain PUBLISH on a job with a stored state is counted, not stored', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const gw = await startGateway({ redis: redis.url })
  t.teardown(() => gw.stop())
  const producer = new Producer({ redis: redis.url })
  t.teardown(() => producer.close())
  const publisher = redis.client()
  const watcher = await gw.connect()
  await watcher.subscribe('ff-3')
  await producer.progress('ff-3', { status: 'processing', progress: 10 })
  await watcher.next((m) => m.type === 'job_update' && (m.data as State).seq === 1)
  await publisher.publish('progress:ff-3', JSON.stringify({ progress: 11 }))
  await watcher.next((m) => m.type === 'job_update' && (m.data as State).progress === 11)
  const counted = async () => /jobwire_producer_unsequenced_total 1\b/.test(await (await fetch(`${gw.http}/metrics`)).text())
  await until(counted, 'counted in jobwire_producer_unsequenced_total')
  t.equal(await publisher.hget('jobwire:job:ff-3', 'seq'), '1', 'not stored')
})

t.test('restart starts a new generation (new epoch, state replaced, owner kept): Node, HTTP, CLI', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const gw = await startGateway({ redis: redis.url })
  t.teardown(() => gw.stop())
  const producer = new Producer({ redis: redis.url })
  t.teardown(() => producer.close())
  const client = redis.client()
  const stateOf = async (id: string) => JSON.parse((await client.hget(`jobwire:job:${id}`, 'state'))!) as State

  await producer.progress('ff-4', { status: 'completed', result: { n: 1 } }, { owner: 'u1' })
  const first = await stateOf('ff-4')
  await t.rejects(producer.progress('ff-4', { status: 'processing' }), /job ff-4 is completed: a final state is final; pass restart to start a new generation/)
  await producer.progress('ff-4', { status: 'processing', progress: 0 }, { restart: true })
  const second = await stateOf('ff-4')
  t.not(second.epoch, first.epoch, 'a new epoch')
  t.same({ ...second, seq: 0, epoch: 0, ts: 0 }, { seq: 0, epoch: 0, ts: 0, status: 'processing', progress: 0 }, 'the state replaced')
  t.equal(await client.hget('jobwire:job:ff-4', 'owner'), 'u1', 'the owner kept')

  const post = (query: string, body: unknown) => fetch(`${gw.http}/jobs/ff-5/progress${query}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  t.equal((await post('', { status: 'cancelled' })).status, 200)
  const refused = await post('', { status: 'queued' })
  t.equal(refused.status, 409, 'HTTP: refused')
  t.match(await refused.json(), { error: 'final_state', message: /a final state is final/ })
  t.equal((await post('?restart=1', { status: 'queued' })).status, 200, 'HTTP: ?restart=1')
  t.match(await stateOf('ff-5'), { seq: 2, status: 'queued' }, 'the refused write wrote nothing')
  const mismatch = await post('?if_seq=1', { progress: 5 })
  t.equal(mismatch.status, 409, 'HTTP: if_seq that does not match')
  t.match(await mismatch.json(), { error: 'seq_mismatch' })
  t.equal((await post('?if_seq=2', { progress: 5 })).status, 200, 'HTTP: if_seq that matches')
  const dup = await fetch(`${gw.http}/jobs/ff-5/progress`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"progress":1,"progress":2}' })
  t.equal(dup.status, 400, 'HTTP: a key given twice')

  const run = promisify(execFile)
  const cli = projectPath('dist', 'src', 'cli.js')
  await run('node', [cli, 'publish', 'ff-6', '--status', 'failed', '--redis', redis.url])
  const err = await run('node', [cli, 'publish', 'ff-6', '--status', 'processing', '--redis', redis.url]).then(() => null, (e: { stderr: string }) => e)
  t.match(err?.stderr, /a final state is final; pass restart/, 'CLI: refused')
  const { stdout } = await run('node', [cli, 'publish', 'ff-6', '--status', 'processing', '--restart', '--redis', redis.url])
  t.match(stdout, /published ff-6 seq=2/, 'CLI: --restart')
  t.match(await stateOf('ff-6'), { status: 'processing' })
})

t.test('the Python helper: final is final, restart=True, if_seq=', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const run = promisify(execFile)
  const { stdout } = await run('/usr/bin/python3', ['-c', `
import sys, redis
sys.path.insert(0, ${JSON.stringify(projectPath('clients', 'python'))})
from jobwire import JobwireProducer, FinalStateError, SeqMismatchError, JobwireError
p = JobwireProducer(redis.Redis.from_url(sys.argv[1]))
print(p.publish("ff-py", {"status": "completed", "result": {"n": 1}}, owner="u1"))
try:
    p.publish("ff-py", {"status": "processing"})
except FinalStateError as e:
    print("final:", isinstance(e, JobwireError), e)
print(p.publish("ff-py", {"status": "queued"}, restart=True))
try:
    p.publish("ff-py", {"progress": 1}, if_seq=1)
except SeqMismatchError as e:
    print("mismatch:", e)
print(p.publish("ff-py", {"progress": 1, "message": None}, if_seq=2))
`, redis.url], { timeout: 20_000 })
  t.same(stdout.trim().split('\n'), [
    '1',
    'final: True job ff-py is completed: a final state is final; pass restart to start a new generation',
    '2',
    "mismatch: if_seq 1 does not match the job's seq 2",
    '3',
  ])
  const client = redis.client()
  const state = JSON.parse((await client.hget('jobwire:job:ff-py', 'state'))!) as State
  t.same({ ...state, seq: 0, epoch: 0, ts: 0 }, { seq: 0, epoch: 0, ts: 0, status: 'queued', progress: 1 }, 'restarted: the old result gone')
  t.equal(await client.hget('jobwire:job:ff-py', 'owner'), 'u1', 'the owner kept')
})

t.test('the embedded broker: a final plain PUBLISH is stored the same way', async (t) => {
  const gw = await startGateway()
  t.teardown(() => gw.stop())
  const watcher = await gw.connect()
  await watcher.subscribe('ff-e')
  const post = await fetch(`${gw.http}/jobs/ff-e/progress`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"status":"processing","progress":90}' })
  t.equal(post.status, 200)
  await watcher.next((m) => m.type === 'job_update' && (m.data as State).seq === 1)
  await gw.gateway.broker.publish('progress:ff-e', '{"status":"failed"}')
  await until(async () => (await getJob(gw.http, 'ff-e'))?.status === 'failed', 'GET /jobs/ff-e says failed')
  t.match(await getJob(gw.http, 'ff-e'), { seq: 2, status: 'failed', progress: 90 })
})
