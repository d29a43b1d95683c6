// Owners are re-checked on every source (issue 18, item 3). A queue hands a job id to another
// job once the first is gone: BullMQ after the job is removed, Celery when a task id is sent
// again. Whoever watched the first job must not see the second one unless the second is theirs
// too: they are dropped with `forbidden`, as jobwire's own jobs already are when their owner
// changes. And a job_status that is refused for a job the socket is subscribed to ends that
// subscription: a refusal that leaves the stream running refuses nothing.
//
// Against the real things: npm's bullmq with a real Worker, and Debian's Celery running
// examples/celery/tasks.py (result_extended = True, so the meta carries the task's kwargs and
// with them its owner, --celery-owner-field user_id).
//
// "Alice saw nothing of bob's job" is proved with the marker technique: bob (or an admin) first
// sees the job's last frame, then alice's ping is answered; everything the gateway published to
// alice before that pong has reached her by then.

import t, { type Test } from 'tap'
import { randomUUID } from 'node:crypto'
import { Queue, Worker, type Job } from 'bullmq'
import { Redis } from 'ioredis'
import { startCelery } from './fixtures/celery.js'
import { startGateway } from './fixtures/gateway.js'
import { startRedis } from './fixtures/redis.js'
import { SECRET, token } from './fixtures/tokens.js'
import { pause, until } from './fixtures/until.js'
import type { Message, TestClient } from './fixtures/ws-client.js'

type Data = Record<string, unknown>

const redis = await startRedis()
t.teardown(() => redis.stop())
const celeryDb = `${redis.url}/1`
const backend = new Redis(celeryDb)
backend.on('error', () => undefined)
t.teardown(() => backend.disconnect())

const gw = await startGateway({
  redis: redis.url,
  'celery-redis': celeryDb,
  'jwt-secret': SECRET,
  'celery-owner-field': 'user_id',
  'bullmq-owner-field': 'userId',
})
t.teardown(() => gw.stop())

const until_ = (c: TestClient, jobId: string, match: (d: Data) => boolean, timeoutMs = 20_000) =>
  c.next((m) => (m.type === 'job_update' || m.type === 'job_status') && m.job_id === jobId && m.data !== null && match(m.data as Data), timeoutMs)
  .then((m) => m.data as Data)

/** Subscribes and waits for a state that matches, which may be the subscribe's own answer (a
 * job that ended before the subscribe was answered). */
async function subscribeUntil(t: Test, c: TestClient, jobId: string, source: string, match: (d: Data) => boolean, what: string): Promise<Data> {
  const first = (await c.subscribe(jobId)).data as Data
  t.match(first, { source }, what)
  return match(first) ? first : until_(c, jobId, match)
}

/** Everything the gateway published to `c` before now has reached it once this resolves. */
async function settle(c: TestClient, id: string): Promise<void> {
  c.send({ type: 'ping', id })
  await c.next((m) => m.type === 'pong' && m.id === id, 10_000)
}

/** The frames of `jobId` that carried a state, from message index `from` on. */
const statesSince = (c: TestClient, jobId: string, from: number) =>
  c.messages.slice(from).filter((m) => (m.type === 'job_update' || m.type === 'job_status') && m.job_id === jobId && m.data !== null) as Array<Message & { data: Data }>
const forbiddenSince = (c: TestClient, jobId: string, from: number) =>
  c.messages.slice(from).filter((m) => m.type === 'error' && m.code === 'forbidden' && m.job_id === jobId)

/** Waits for the forbidden that ends alice's watch; a timeout is a failed assertion, not a throw. */
async function toldForbidden(t: Test, c: TestClient, jobId: string, from: number, what: string): Promise<void> {
  const told = await until(() => forbiddenSince(c, jobId, from).length > 0, what, 5000).then(() => true, () => false)
  t.ok(told, what)
}

t.test('BullMQ: a job id re-used for bob after alice\'s job was removed', async (t) => {
  interface Script { userId: string; steps: unknown[]; stepMs: number; result: unknown }
  const connection = new Redis(redis.url, { maxRetriesPerRequest: null })
  connection.on('error', () => undefined)
  const queue = new Queue<Script>('reports', { connection })
  const worker = new Worker<Script>('reports', async (job: Job<Script>) => {
    for (const step of job.data.steps) {
      await pause(job.data.stepMs)
      await job.updateProgress(step as number | object)
    }
    return job.data.result
  }, { connection })
  worker.on('error', () => undefined)
  t.teardown(async () => {
    await worker.close(true)
    await queue.close()
    connection.disconnect()
  })
  const jobId = 'bullmq:reports:daily'

  await queue.add('alice-report', { userId: 'alice', steps: [50], stepMs: 50, result: { report: 'alice-report' } }, { jobId: 'daily' })
  const alice = await gw.connectAs(await token('alice'))
  t.match(await subscribeUntil(t, alice, jobId, 'bullmq', (d) => d.status === 'completed', 'alice owns her job (data.userId)'),
    { status: 'completed', result: { report: 'alice-report' } }, 'and sees it complete')

  t.equal(await queue.remove('daily'), 1, 'alice\'s job is removed')
  const mark = alice.messages.length
  // The same id, now bob's: added, waiting, active, progress, completed.
  await queue.add('bob-report', {
    userId: 'bob',
    steps: [{ percent: 30, message: 'bob-secret step 1' }, { percent: 60, message: 'bob-secret step 2' }],
    stepMs: 300,
    result: { report: 'bob-secret' },
  }, { jobId: 'daily' })
  const bob = await gw.connectAs(await token('bob'))
  t.match(await subscribeUntil(t, bob, jobId, 'bullmq', (d) => d.status === 'completed', 'bob owns the new job'),
    { status: 'completed', result: { report: 'bob-secret' } }, 'bob sees his job through')
  await settle(alice, 'after-bob')

  const leaked = statesSince(alice, jobId, mark)
  t.same(leaked.map((m) => `${m.type} ${m.data.status} ${m.data.source_status}`), [], 'alice receives no state of bob\'s job (added, active, progress, completed)')
  t.notOk(JSON.stringify(alice.messages).includes('bob-secret'), 'neither his progress messages nor his result')
  t.notOk(JSON.stringify(alice.messages.slice(mark)).includes('bob-report'), 'nor his job\'s name')
  await toldForbidden(t, alice, jobId, mark, 'alice is told forbidden for the re-used id')
  const forbiddenAt = alice.messages.findIndex((m, i) => i >= mark && m.type === 'error' && m.code === 'forbidden' && m.job_id === jobId)
  t.same(forbiddenAt < 0 ? [] : alice.messages.slice(forbiddenAt).filter((m) => m.type === 'job_update' && m.job_id === jobId), [],
    'and no job_update of the job after it')
})

t.test('Celery: a task id sent again with kwargs.user_id = bob', async (t) => {
  const app = await startCelery(t, celeryDb)
  const delay = (taskId: string, kwargs: Data) => app.send({ op: 'delay', task_id: taskId, kwargs })
  const taskId = randomUUID()
  const jobId = `celery:${taskId}`
  const meta = async () => JSON.parse((await backend.get(`celery-task-meta-${taskId}`)) ?? 'null') as Data | null
  const ownerIs = (user: string) => async () => ((await meta())?.kwargs as Data | undefined)?.user_id === user

  // Alice's task fails. (Celery never overwrites a SUCCESS: its backend reads the stored state
  // first. A failed, revoked or forgotten task's id is what gets sent again.)
  await delay(taskId, { parts: 2, seconds_per_part: 0.3, fail_at: 2, user_id: 'alice' })
  await until(ownerIs('alice'), 'alice\'s task to have started (its meta names her)', 20_000)
  const alice = await gw.connectAs(await token('alice'))
  t.match(await subscribeUntil(t, alice, jobId, 'celery', (d) => d.status === 'failed', 'alice owns her task (kwargs.user_id)'),
    { status: 'failed', error: 'ValueError: could not transcode part 2' })

  const mark = alice.messages.length
  await delay(taskId, { parts: 4, seconds_per_part: 0.4, user_id: 'bob' })
  await until(ownerIs('bob'), 'bob\'s task to have started under the same id', 20_000)
  t.match((await meta())?.kwargs, { user_id: 'bob' }, 'result_extended: the meta carries the kwargs, so the owner')
  const bob = await gw.connectAs(await token('bob'))
  t.match(await subscribeUntil(t, bob, jobId, 'celery', (d) => d.status === 'completed', 'bob owns the task now'),
    { status: 'completed', result: { parts: 4 } }, 'bob sees his task through')
  await settle(alice, 'after-bob')

  const leaked = statesSince(alice, jobId, mark)
  t.same(leaked.map((m) => `${m.type} ${m.data.status} ${m.data.source_status}`), [], 'alice receives no state of bob\'s task (STARTED, PROGRESS, SUCCESS)')
  t.notOk(JSON.stringify(alice.messages.slice(mark)).includes('of 4'), 'neither his progress')
  await toldForbidden(t, alice, jobId, mark, 'alice is told forbidden for the re-used task id')
})

t.test('a refused job_status ends the subscription it was asked about', async (t) => {
  const connection = new Redis(redis.url, { maxRetriesPerRequest: null })
  connection.on('error', () => undefined)
  const queue = new Queue<Data>('exports', { connection }) // no worker: the job waits
  t.teardown(async () => {
    await queue.close()
    connection.disconnect()
  })
  const job = await queue.add('export', { userId: 'alice' }, { jobId: 'x1' })
  const jobId = 'bullmq:exports:x1'
  const alice = await gw.connectAs(await token('alice'))
  t.match((await alice.subscribe(jobId)).data, { status: 'queued', source: 'bullmq' })
  const root = await gw.connectAs(await token('root', { role: 'admin' }))
  await root.subscribe(jobId)

  // The owner changes under the same id, with no event on the queue's stream (updateData).
  await job.updateData({ userId: 'bob' })
  const mark = alice.messages.length
  alice.send({ type: 'job_status', job_id: jobId })
  t.match(await alice.next((m) => (m.type === 'error' || m.type === 'job_status') && m.job_id === jobId, 10_000),
    { type: 'error', code: 'forbidden', job_id: jobId }, 'job_status is refused: the job is bob\'s now')

  await job.updateProgress({ percent: 40, message: 'bob-secret progress' })
  t.match(await until_(root, jobId, (d) => d.progress === 40), { message: 'bob-secret progress' }, 'the update went out (an admin sees it)')
  await settle(alice, 'after-update')
  t.same(alice.messages.slice(mark).filter((m) => m.type === 'job_update' && m.job_id === jobId), [],
    'alice\'s subscription ended with the refusal: the next update does not reach her')
  t.notOk(JSON.stringify(alice.messages).includes('bob-secret'), 'nothing of bob\'s progress reached alice')
})
