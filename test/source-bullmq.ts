// BullMQ jobs, against the real thing: npm's bullmq (on the project's ioredis) with a real Worker
// calling updateProgress with numbers and objects, completing and failing, on this test's own
// redis-server. The gateway shares that Redis and needs no option to stream its jobs as
// bullmq:<queue>:<job id>; examples/bullmq/worker.mjs runs unchanged too.

import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { Queue, Worker, type Job } from 'bullmq'
import { Redis } from 'ioredis'
import { projectPath } from '../src/support/paths.js'
import { startGateway } from './fixtures/gateway.js'
import { freePort } from './fixtures/ports.js'
import { reap, serveProcess } from './fixtures/process.js'
import { startRedis } from './fixtures/redis.js'
import { SECRET, token } from './fixtures/tokens.js'
import { pause, until } from './fixtures/until.js'
import { connect as connectTo, type Message, type TestClient } from './fixtures/ws-client.js'

type Data = Record<string, unknown>

const redis = await startRedis()
t.teardown(() => redis.stop())
const admin = redis.client()

/** What the test's worker does with a job: report each step, then fail or return. */
interface Script {
  steps?: unknown[]
  stepMs?: number
  /** Silent this long after the steps, then report `after`. */
  quietMs?: number
  after?: unknown
  fail?: string
  result?: unknown
  userId?: string
}

const connection = new Redis(redis.url, { maxRetriesPerRequest: null })
connection.on('error', () => undefined)
const queue = new Queue<Script>('clips', { connection })
const worker = new Worker<Script>('clips', async (job: Job<Script>) => {
  for (const step of job.data.steps ?? []) {
    await pause(job.data.stepMs ?? 20)
    await job.updateProgress(step as number | object)
  }
  if (job.data.quietMs !== undefined) {
    await pause(job.data.quietMs)
    await job.updateProgress(job.data.after as number | object)
  }
  if (job.data.fail !== undefined) throw new Error(job.data.fail)
  return job.data.result
}, { connection })
worker.on('error', () => undefined) // a Redis restart below: the worker reconnects by itself
t.teardown(async () => {
  await worker.close(true)
  await queue.close()
  connection.disconnect()
})

// Zero configuration: the queues' Redis is the gateway's Redis.
const gw = await startGateway({ redis: redis.url })
t.teardown(() => gw.stop())

/** A client of the shared gateway, closed when the test ends: a queue stays watched while any of
 * its jobs is. */
async function connect(t: Test): Promise<TestClient> {
  const c = await gw.connect()
  t.teardown(() => c.close())
  return c
}

const updates = (c: TestClient, jobId: string) =>
  c.messages.filter((m) => m.type === 'job_update' && m.job_id === jobId).map((m) => (m as Message & { data: Data }).data)
const until_ = (c: TestClient, jobId: string, match: (d: Data) => boolean, timeoutMs = 15_000) =>
  c.next((m) => (m.type === 'job_update' || m.type === 'job_status') && m.job_id === jobId && m.data !== null && match(m.data as Data), timeoutMs)
  .then((m) => m.data as Data)

t.test('a job watched before it is added streams every state, numbers and objects alike', async (t) => {
  const c = await connect(t)
  t.same(await c.subscribe('bullmq:clips:first'), { type: 'job_status', job_id: 'bullmq:clips:first', data: null, reason: 'subscribed' })
  await queue.add('transcode', { steps: [10, { percent: 50, stage: 'encode', message: 'encoding' }, { current: 3, total: 4 }], result: { url: '/v/first.mp4' } }, { jobId: 'first' })
  const done = await until_(c, 'bullmq:clips:first', (d) => d.status === 'completed')
  t.match(done, { status: 'completed', progress: 100, source: 'bullmq', source_status: 'completed', name: 'transcode', result: { url: '/v/first.mp4' } })
  const seen = updates(c, 'bullmq:clips:first')
  t.same(seen.map((d) => d.status), ['queued', 'queued', 'processing', 'processing', 'processing', 'processing', 'completed'], 'added, waiting, active, three progress reports, completed')
  t.same(seen.filter((d) => d.source_status === 'progress').map((d) => d.progress), [10, 50, 75], 'a number, an object\'s percent, 100 x current / total')
  t.match(seen[4], { message: 'encoding', meta: { percent: 50, stage: 'encode' } }, 'the progress object travels under meta, its message on top')
  t.same(seen.map((d) => d.seq), seen.map((_, i) => i + 1), 'seq counts the payloads: no gaps for the client to chase')

  t.test('a subscriber that arrives after the end gets the final state, from the job hash', async (t) => {
    const late = await connect(t)
    t.match((await late.subscribe('bullmq:clips:first')).data, { status: 'completed', progress: 100, name: 'transcode', result: { url: '/v/first.mp4' }, meta: { current: 3 } })
    const res = await fetch(`${gw.http}/jobs/bullmq:clips:first`)
    t.match(await res.json(), { data: { status: 'completed', source: 'bullmq' } }, 'and GET /jobs/<id>')
  })
})

t.test('a failing job ends failed with its reason and the progress it reached', async (t) => {
  const c = await connect(t)
  await c.subscribe('bullmq:clips:broken')
  await queue.add('transcode', { steps: [30], fail: 'boom at 30%' }, { jobId: 'broken' })
  t.match(await until_(c, 'bullmq:clips:broken', (d) => d.status === 'failed'), { status: 'failed', error: 'boom at 30%', progress: 30 })
  const late = await connect(t)
  t.match((await late.subscribe('bullmq:clips:broken')).data, { status: 'failed', error: 'boom at 30%', progress: 30 }, 'the hash says the same')
})

t.test('a subscriber arriving mid-job starts from the hash, then streams', async (t) => {
  const job = await queue.add('transcode', { steps: [20, 40, 60, 80], stepMs: 150 })
  const jobId = `bullmq:clips:${job.id}`
  await until(async () => (await admin.hget(`bull:clips:${job.id}`, 'progress')) === '40', 'the job to reach 40%')
  const c = await connect(t)
  const status = (await c.subscribe(jobId)).data as Data
  t.match(status, { status: 'processing', source_status: 'active' })
  t.ok((status.progress as number) >= 40, 'at least where the job was')
  const done = await until_(c, jobId, (d) => d.status === 'completed')
  t.ok((done.seq as number) > (status.seq as number), 'updates after the snapshot are newer than it')
})

const loopConnections = async () => (await admin.client('LIST') as string).split('\n').filter((l) => / name=jobwire-bullmq-stream-\d+ /.test(l))
/** A stream connection blocked in XREAD (flags b): it is reading some queue's stream. */
const reading = (line: string) => /\bflags=\w*b/.test(line)

t.test('many watchers of one job: one stream reader on the node, reading no stream after the last leaves', async (t) => {
  const job = await queue.add('transcode', { steps: [50], stepMs: 200 })
  const jobId = `bullmq:clips:${job.id}`
  const clients = await Promise.all(Array.from({ length: 40 }, () => connect(t)))
  await Promise.all(clients.map((c) => c.subscribe(jobId)))
  t.equal((await loopConnections()).length, 1, 'one XREAD connection for 40 sockets')
  const finals = await Promise.all(clients.map((c) => until_(c, jobId, (d) => d.status === 'completed')))
  t.ok(finals.every((d) => d.seq === finals[0]!.seq), 'the same final payload for all')
  await Promise.all(clients.map((c) => c.close()))
  // Its round blocked on the queue ends within the block time (5 s); no other round follows.
  await until(async () => !(await loopConnections()).some(reading), 'the reader to stop reading once nobody watches the queue', 8000)
})

t.test('the loop\'s connection drops mid-job: it resumes from the last id it read, nothing is missed', async (t) => {
  const steps = [10, 20, 30, 40, 50, 60, 70, 80, 90]
  const job = await queue.add('transcode', { steps, stepMs: 60 })
  const jobId = `bullmq:clips:${job.id}`
  const c = await connect(t)
  await c.subscribe(jobId)
  await until_(c, jobId, (d) => d.progress === 20)
  const [line] = await loopConnections()
  await admin.client('KILL', 'ID', /\bid=(\d+)/.exec(line!)![1]!)
  await until_(c, jobId, (d) => d.status === 'completed')
  const reported = updates(c, jobId).filter((d) => d.source_status === 'progress').map((d) => d.progress)
  t.same(reported.filter((p) => (p as number) >= 20), steps.slice(1), 'every report after the drop arrived, in order')
})

t.test('a loop that comes back to a stream trimmed past where it read resynchronises its watchers', async (t) => {
  const c = await connect(t)
  await c.subscribe('bullmq:clips:trim')
  await admin.xadd('bull:clips:events', '*', 'event', 'active', 'jobId', 'trim', 'prev', 'waiting')
  await until_(c, 'bullmq:clips:trim', (d) => d.status === 'processing')
  const statuses = c.all('job_status', 'bullmq:clips:trim').length
  const [line] = await loopConnections()
  await admin.client('KILL', 'ID', /\bid=(\d+)/.exec(line!)![1]!)
  // While the loop is away (it reconnects after 50 ms at the earliest), BullMQ's trimming
  // drops an event it never read.
  await admin.multi()
    .xadd('bull:clips:events', '*', 'event', 'progress', 'jobId', 'trim', 'data', '10')
    .xadd('bull:clips:events', '*', 'event', 'progress', 'jobId', 'trim', 'data', '20')
    .xtrim('bull:clips:events', 'MAXLEN', 1)
    .exec()
  await until(() => c.all('job_status', 'bullmq:clips:trim').length > statuses, 'a fresh job_status')
  await until(() => updates(c, 'bullmq:clips:trim').some((d) => d.progress === 20), 'what the stream still holds')
  t.match(c.all('job_status', 'bullmq:clips:trim').at(-1)!.data, { status: 'processing' }, 'watchers resynchronised')
})

t.test('BullMQ\'s own stalled event flags the job; the next event clears it', async (t) => {
  const c = await connect(t)
  await c.subscribe('bullmq:clips:ghost')
  await admin.xadd('bull:clips:events', '*', 'event', 'active', 'jobId', 'ghost', 'prev', 'waiting')
  await admin.xadd('bull:clips:events', '*', 'event', 'stalled', 'jobId', 'ghost')
  t.match(await until_(c, 'bullmq:clips:ghost', (d) => d.stalled === true), { status: 'queued', source_status: 'stalled', stalled: true })
  await admin.xadd('bull:clips:events', '*', 'event', 'active', 'jobId', 'ghost', 'prev', 'waiting')
  const next = await until_(c, 'bullmq:clips:ghost', (d) => d.source_status === 'active' && d.seq === 3)
  t.equal(next.stalled, undefined, 'cleared')
})

t.test('--stall-after: a processing job that goes quiet is flagged to its watchers, and cleared by its next update', async (t) => {
  const stalling = await startGateway({ redis: redis.url, 'stall-after': '1' })
  t.teardown(() => stalling.stop())
  const job = await queue.add('transcode', { steps: [20], quietMs: 1800, after: 60 })
  const jobId = `bullmq:clips:${job.id}`
  const c = await stalling.connect()
  // On a loaded machine the subscribe can come late: its snapshot may already hold progress 20,
  // or even the flag. So wait for the flag itself, whichever job_status carries it.
  const snapshot = await c.subscribe(jobId)
  // The gateway's flag travels beside data (issue 19), not in it.
  const flagged = snapshot.stalled === true ? snapshot
    : await c.next((m) => m.type === 'job_status' && m.job_id === jobId && m.stalled === true, 10_000)
  t.match(flagged, { stalled: true, data: { status: 'processing', progress: 20 } }, 'a job_status with the last state, stalled')
  const late = await stalling.connect()
  t.match(await late.subscribe(jobId), { stalled: true, data: { progress: 20 } }, 'a snapshot while stalled says so')
  const resumed = await until_(c, jobId, (d) => d.progress === 60)
  t.equal(resumed.stalled, undefined, 'the next update clears it')
  t.equal(c.all('job_status', jobId).filter((m) => m.stalled === true).length, 1, 'flagged once, by one timer')
})

t.test('pattern mode: source jobs are still watched through their source', async (t) => {
  const patterned = await startGateway({ redis: redis.url, 'subscription-mode': 'pattern' })
  t.teardown(() => patterned.stop())
  const c = await patterned.connect()
  const job = await queue.add('transcode', { steps: [50], stepMs: 100 })
  await c.subscribe(`bullmq:clips:${job.id}`)
  t.match(await until_(c, `bullmq:clips:${job.id}`, (d) => d.status === 'completed'), { status: 'completed', progress: 100 })
})

t.test('many watchers across --workers 2: each gateway process reads the queue itself', async (t) => {
  const port = await freePort()
  const served = serveProcess(['--port', String(port), '--workers', '2', '--redis', redis.url])
  t.teardown(() => reap(served))
  await served.waitFor(/jobwire listening/, 20_000) // the primary says so once both workers listen
  const job = await queue.add('transcode', { steps: [25, 50], stepMs: 400 })
  const jobId = `bullmq:clips:${job.id}`
  // SO_REUSEPORT spreads connections by their source port: 30 land on both processes.
  const clients = await Promise.all(Array.from({ length: 30 }, () => connectTo(`ws://127.0.0.1:${port}/ws/jobs`)))
  t.teardown(() => Promise.all(clients.map((c) => c.close())))
  await Promise.all(clients.map((c) => c.subscribe(jobId)))
  const pids = new Set((await loopConnections()).map((l) => / name=jobwire-bullmq-stream-(\d+) /.exec(l)![1]))
  t.ok(pids.size >= 2, `a loop in each worker process (${pids.size})`)
  const finals = await Promise.all(clients.map((c) => until_(c, jobId, (d) => d.status === 'completed')))
  t.ok(finals.every((d) => d.status === 'completed' && d.progress === 100), 'every watcher ends on the result')
})

t.test('with tokens: the owner from data.userId, a jobs claim, an admin; nobody else', async (t) => {
  const secured = await startGateway({ redis: redis.url, 'jwt-secret': SECRET, 'bullmq-owner-field': 'userId' })
  t.teardown(() => secured.stop())
  const job = await queue.add('transcode', { steps: [50], stepMs: 300, userId: 'alice' })
  const jobId = `bullmq:clips:${job.id}`
  const alice = await secured.connectAs(await token('alice'))
  t.match((await alice.subscribe(jobId)).data, { source: 'bullmq' }, 'alice owns it (data.userId), even before it starts')
  const claimed = await secured.connectAs(await token('support', { jobs: ['bullmq:clips:*'] }))
  t.match((await claimed.subscribe(jobId)).data, { source: 'bullmq' }, 'a bullmq:clips:* claim covers it')
  const root = await secured.connectAs(await token('root', { role: 'admin' }))
  t.match((await root.subscribe(jobId)).data, { source: 'bullmq' }, 'an admin may')
  const bob = await secured.connectAs(await token('bob'))
  bob.send({ type: 'subscribe_job', job_id: jobId })
  t.match(await bob.nextOfType('error'), { code: 'forbidden', job_id: jobId }, 'bob may not')
  const missing = await secured.connectAs(await token('bob'))
  missing.send({ type: 'subscribe_job', job_id: 'bullmq:clips:nope' })
  t.match(await missing.nextOfType('error'), { code: 'forbidden' }, 'the same answer for a job that does not exist')
  t.match(await until_(alice, jobId, (d) => d.status === 'completed'), { status: 'completed' })
})

t.test('examples/bullmq runs unchanged: its worker\'s jobs stream as bullmq:videos:<id>', async (t) => {
  const env = { ...process.env, REDIS_URL: redis.url, _TAPJS_PROCESSINFO_COVERAGE_: '0' }
  const example = spawn('node', [projectPath('examples', 'bullmq', 'worker.mjs')], { env, stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(async () => {
    if (example.exitCode !== null) return
    const exited = new Promise((resolve) => example.once('exit', resolve))
    example.kill('SIGKILL') // SIGTERM would wait for its job to finish
    await exited
  })
  let out = ''
  example.stdout!.on('data', (chunk: Buffer) => (out += chunk.toString()))
  await until(() => out.includes('worker ready'), 'the example worker', 15_000)
  const added = spawn('node', [projectPath('examples', 'bullmq', 'add-job.mjs')], { env, stdio: ['ignore', 'pipe', 'inherit'] })
  let printed = ''
  added.stdout!.on('data', (chunk: Buffer) => (printed += chunk.toString()))
  await new Promise((resolve) => added.once('exit', resolve))
  const jobId = /added (bullmq:videos:\S+)/.exec(printed)?.[1]
  t.ok(jobId, `add-job.mjs names the job: ${printed.trim()}`)
  t.match(printed, `watch it: http://127.0.0.1:8080/?watch=${jobId}`)
  const c = await connect(t)
  await c.subscribe(jobId!)
  const d = await until_(c, jobId!, (d) => typeof d.progress === 'number' && d.progress >= 10)
  t.match(d, { status: 'processing', message: /^part \d+ of 10$/, source: 'bullmq' })
})

t.test('Redis restarts: watchers get the truth (gone), and the id\'s next job is a new generation', async (t) => {
  const c = await connect(t)
  const before = (await c.subscribe('bullmq:clips:first')).data as Data
  t.match(before, { status: 'completed' })
  const statuses = c.all('job_status', 'bullmq:clips:first').length
  await redis.kill()
  await pause(300)
  await redis.restart()
  await c.next((m) => m.type === 'job_status' && m.job_id === 'bullmq:clips:first' && c.all('job_status', 'bullmq:clips:first').length > statuses, 20_000)
  t.equal(c.all('job_status', 'bullmq:clips:first').at(-1)!.data, null, 'the job is gone with the data')
  await until(async () => (await fetch(`${gw.http}/readyz`)).status === 200, 'the gateway to be ready again')
  await queue.add('transcode', { steps: [5], result: 'again' }, { jobId: 'first' })
  const again = await until_(c, 'bullmq:clips:first', (d) => d.status === 'completed' && d.result === 'again', 20_000)
  t.not(again.epoch, before.epoch, 'a new generation of the id')
})

t.test('a Redis user without CLIENT ID and CLIENT UNBLOCK (an ACL): every queue is still read, a new one within a second', async (t) => {
  await admin.call('ACL', 'SETUSER', 'jobwire-acl', 'on', '>acl-secret-1', '~*', '&*', '+@all', '-client|id', '-client|unblock')
  const url = new URL(redis.url)
  url.username = 'jobwire-acl'
  url.password = 'acl-secret-1'
  const limited = await startGateway({ redis: redis.url, 'bullmq-redis': url.toString() })
  t.teardown(() => limited.stop())
  const c = await limited.connect()
  t.teardown(() => c.close())
  await c.subscribe('bullmq:clips:acl-1')
  await queue.add('transcode', { steps: [40] }, { jobId: 'acl-1' })
  t.match(await until_(c, 'bullmq:clips:acl-1', (d) => d.status === 'completed'), { progress: 100 }, 'the first queue streams')
  // A second queue cannot wake the blocked read: it joins when the (shortened, 1 s) block ends,
  // within the client's 5 s wait for its job_status.
  const other = new Queue('acl-other', { connection })
  t.teardown(() => other.close())
  await c.subscribe('bullmq:acl-other:r1')
  await other.add('report', {}, { jobId: 'r1' })
  t.match(await until_(c, 'bullmq:acl-other:r1', (d) => d.status === 'queued'), { source_status: /added|waiting/ }, 'the second queue streams too')
})

t.test("keys of another type where a queue's keys should be: no job, and nobody else's reads or events fail", async (t) => {
  // Anyone who may write to the queues' Redis (or a queue name that meets BullMQ's own keys:
  // bullmq:<queue>:id is its counter, a string) can put them there.
  await admin.set('bull:broken:events', 'not a stream')
  await queue.add('transcode', { steps: [20] }, { jobId: 'beside-broken' })
  const c = await connect(t)
  // Read in the same turn as the string key: one batch, one MULTI.
  const [idKey, mine] = await Promise.all([fetch(`${gw.http}/jobs/bullmq:clips:id`), fetch(`${gw.http}/jobs/bullmq:clips:beside-broken`)])
  t.equal(idKey.status, 404, 'a key that is not a job hash reads as no job')
  t.equal(mine.status, 200, 'the job read beside it is answered')
  t.same((await c.subscribe('bullmq:broken:1')).data, null, 'a queue whose events key is not a stream: watched, nothing to show')
  await c.subscribe('bullmq:clips:later')
  await queue.add('transcode', { steps: [30] }, { jobId: 'later' })
  t.match(await until_(c, 'bullmq:clips:later', (d) => d.status === 'completed'), { progress: 100 }, 'the other queues\' events still stream')
})
