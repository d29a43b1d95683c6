// Celery jobs, against the real thing: Debian's python3-celery running examples/celery/tasks.py
// in a worker (solo pool) on this test's own redis-server, as broker and result backend (db 1,
// so the gateway must be told: --celery-redis). Tasks report progress with update_state,
// succeed, fail and are revoked; the gateway streams them as celery:<task_id> with no change to
// the worker.

import t from 'tap'
import { randomUUID } from 'node:crypto'
import { startCelery, type CeleryRequest } from './fixtures/celery.js'
import { startGateway } from './fixtures/gateway.js'
import { startRedis } from './fixtures/redis.js'
import { SECRET, token } from './fixtures/tokens.js'
import { pause, until } from './fixtures/until.js'
import type { Message, TestClient } from './fixtures/ws-client.js'

type Data = Record<string, unknown>

const redis = await startRedis()
t.teardown(() => redis.stop())
const backendUrl = `${redis.url}/1`
const app = await startCelery(t, backendUrl)
const celery = (request: CeleryRequest) => app.send(request)

/** Queues a transcode task under a fresh id and returns the jobwire job id. */
async function queue(kwargs: Data, taskId: string = randomUUID(), countdown?: number): Promise<string> {
  await celery({ op: 'delay', task_id: taskId, kwargs, ...(countdown === undefined ? {} : { countdown }) })
  return `celery:${taskId}`
}

/** The embedded broker and no Redis of its own: Celery's is the only Redis it knows. */
const gw = await startGateway({ 'celery-redis': backendUrl })
t.teardown(() => gw.stop())

const frames = (c: TestClient, jobId: string) =>
  c.messages.filter((m) => (m.type === 'job_status' || m.type === 'job_update') && m.job_id === jobId) as Array<Message & { data: Data | null }>
const until_ = (c: TestClient, jobId: string, match: (d: Data) => boolean, timeoutMs = 20_000) =>
  c.next((m) => (m.type === 'job_update' || m.type === 'job_status') && m.job_id === jobId && m.data !== null && match(m.data as Data), timeoutMs)
  .then((m) => m.data as Data)

t.test('a task watched before it starts streams every state, then completes with its result', async (t) => {
  const jobId = `celery:${randomUUID()}`
  const c = await gw.connect()
  t.same(await c.subscribe(jobId), { type: 'job_status', job_id: jobId, data: null, reason: 'subscribed' }, 'nothing stored yet')
  await queue({ parts: 4, seconds_per_part: 0.15 }, jobId.slice('celery:'.length))
  const done = await until_(c, jobId, (d) => d.status === 'completed')
  t.match(done, { status: 'completed', progress: 100, source: 'celery', source_status: 'SUCCESS', task: 'tasks.transcode',
    result: { url: `/videos/${jobId.slice(7)}.mp4`, parts: 4 } })
  const updates = frames(c, jobId).filter((m) => m.type === 'job_update').map((m) => m.data!)
  t.match(updates[0], { status: 'processing', source_status: 'STARTED' }, 'task_track_started: STARTED is processing')
  t.same(updates.filter((d) => d.source_status === 'PROGRESS').map((d) => d.progress), [25, 50, 75, 100], 'progress is 100 x current / total')
  t.match(updates.find((d) => d.progress === 50), { message: 'part 2 of 4', meta: { current: 2, total: 4, message: 'part 2 of 4' } },
    'the meta travels under meta, its message on top')
  const seqs = updates.map((d) => d.seq as number)
  t.same(seqs, seqs.map((_, i) => i + 1), 'seq counts the payloads: 1, 2, 3... no gaps for the client to chase')
  t.equal(new Set(updates.map((d) => d.epoch)).size, 1, 'one epoch while watched')
  t.notOk(JSON.stringify(updates).includes('hostname'), 'nothing of the worker (host, pid) or the kwargs reaches browsers')

  t.test('a subscriber that arrives after the end gets the final state', async (t) => {
    const late = await gw.connect()
    t.match((await late.subscribe(jobId)).data, { status: 'completed', progress: 100, result: { parts: 4 } })
    const res = await fetch(`${gw.http}/jobs/${jobId}`)
    t.equal(res.status, 200)
    t.match(await res.json(), { job_id: jobId, data: { status: 'completed', source: 'celery' } }, 'GET /jobs/<id> (polling) too')
    const sse = await fetch(`${gw.http}/jobs/${jobId}/events`)
    const reader = sse.body!.getReader()
    let text = ''
    while (!text.includes('event: job_status')) text += new TextDecoder().decode((await reader.read()).value)
    while (!text.includes('\n\n', text.indexOf('event: job_status'))) text += new TextDecoder().decode((await reader.read()).value)
    t.match(text, /"status":"completed"/, 'and SSE')
    await reader.cancel()
  })
})

t.test('a failing task ends failed with the exception, its last progress kept, no traceback', async (t) => {
  const c = await gw.connect()
  const jobId = `celery:${randomUUID()}`
  await c.subscribe(jobId)
  await queue({ parts: 3, seconds_per_part: 0.1, fail_at: 2 }, jobId.slice(7))
  const failed = await until_(c, jobId, (d) => d.status === 'failed')
  t.match(failed, { status: 'failed', source_status: 'FAILURE', error: 'ValueError: could not transcode part 2' })
  t.equal(Math.round(failed.progress as number), 33, 'the progress it had reached')
  t.equal(failed.traceback, undefined, 'tracebacks stay on the server unless --celery-tracebacks')
})

t.test('a task revoked while it waits for its countdown is cancelled', async (t) => {
  const c = await gw.connect()
  const jobId = `celery:${randomUUID()}`
  await c.subscribe(jobId)
  await queue({ parts: 2, seconds_per_part: 0.1 }, jobId.slice(7), 1.5)
  await celery({ op: 'revoke', task_id: jobId.slice(7) })
  t.match(await until_(c, jobId, (d) => d.status === 'cancelled'), { status: 'cancelled', source_status: 'REVOKED', error: /TaskRevokedError/ })
  t.notOk(c.all('job_update', jobId).some((m) => (m.data as Data).status === 'processing'), 'it never ran')
})

t.test('many watchers of one task: one SUBSCRIBE on the node, everyone ends on the result', async (t) => {
  const jobId = `celery:${randomUUID()}`
  const clients = await Promise.all(Array.from({ length: 40 }, () => gw.connect()))
  await Promise.all(clients.map((c) => c.subscribe(jobId)))
  const [, numsub] = await redis.client().call('PUBSUB', 'NUMSUB', `celery-task-meta-${jobId.slice(7)}`) as [string, number]
  t.equal(numsub, 1, 'one subscription for 40 sockets')
  await queue({ parts: 2, seconds_per_part: 0.1 }, jobId.slice(7))
  const finals = await Promise.all(clients.map((c) => until_(c, jobId, (d) => d.status === 'completed')))
  t.ok(finals.every((d) => d.seq === finals[0]!.seq), 'the same final payload for all')
  await Promise.all(clients.map((c) => c.close()))
  await until(async () => {
    const [, n] = await redis.client().call('PUBSUB', 'NUMSUB', `celery-task-meta-${jobId.slice(7)}`) as [string, number]
    return n === 0
  }, 'the UNSUBSCRIBE after the last watcher left')
})

t.test('with tokens: the owner (a kwarg, result_extended), a jobs claim, an admin; nobody else', async (t) => {
  const secured = await startGateway({ redis: redis.url, 'celery-redis': backendUrl, 'jwt-secret': SECRET, 'celery-owner-field': 'user_id' })
  t.teardown(() => secured.stop())
  const admin = await secured.connectAs(await token('root', { role: 'admin' }))
  const jobId = await queue({ parts: 3, seconds_per_part: 0.3, user_id: 'alice' })
  await admin.subscribe(jobId)
  await until_(admin, jobId, (d) => d.status === 'processing')
  const alice = await secured.connectAs(await token('alice'))
  t.match((await alice.subscribe(jobId)).data, { status: 'processing', source: 'celery' }, 'alice owns it')
  const claimed = await secured.connectAs(await token('support', { jobs: ['celery:*'] }))
  t.match((await claimed.subscribe(jobId)).data, { source: 'celery' }, 'a celery:* claim covers it')
  const bob = await secured.connectAs(await token('bob'))
  bob.send({ type: 'subscribe_job', job_id: jobId })
  t.match(await bob.nextOfType('error'), { code: 'forbidden', job_id: jobId }, 'bob may not')
  const res = await fetch(`${secured.http}/jobs/${jobId}`, { headers: { authorization: `Bearer ${await token('bob')}` } })
  t.equal(res.status, 403)
  await res.arrayBuffer()
  t.match(await until_(alice, jobId, (d) => d.status === 'completed'), { result: { parts: 3 } })
})

t.test('a gateway with no Redis for Celery answers celery: ids at once, saying what to configure', async (t) => {
  const bare = await startGateway()
  t.teardown(() => bare.stop())
  const c = await bare.connect()
  t.match((await c.subscribe('celery:abc')).data, { status: 'failed', source: 'celery', source_status: 'unsupported', error: /--celery-redis/ })
  t.match((await c.subscribe('bullmq:videos:1')).data, { status: 'failed', source: 'bullmq', error: /--bullmq-redis/ })
  t.match((await c.subscribe('bullmq:videos')).data, { status: 'failed', error: 'a BullMQ job id is bullmq:<queue>:<job id>' })
  const res = await fetch(`${bare.http}/jobs/celery:abc`)
  t.match(await res.json(), { data: { status: 'failed', error: /--celery-redis/ } }, 'polling gets the same answer')
})

t.test('Redis restarts mid-task: the watcher is resynchronised and ends on the result', async (t) => {
  const c = await gw.connect()
  const jobId = `celery:${randomUUID()}`
  await c.subscribe(jobId)
  // Celery 5.2 fails a task whose update_state meets a Redis that is down (the read before the
  // write is not retried), so the outage falls between two reports, as most outages would.
  await queue({ parts: 3, seconds_per_part: 2 }, jobId.slice(7))
  const before = await until_(c, jobId, (d) => d.source_status === 'PROGRESS')
  const statuses = c.all('job_status', jobId).length
  await redis.kill()
  await pause(300)
  await redis.restart() // empty: the worker's next update_state writes the task's state again
  const done = await until_(c, jobId, (d) => d.status === 'completed', 30_000)
  t.match(done, { status: 'completed', result: { parts: 3 } }, 'the task finished and the watcher saw it')
  t.ok(c.all('job_status', jobId).length > statuses, 'a fresh job_status after the outage')
  t.not(done.epoch, before.epoch, 'another Redis server: a new generation')
})
