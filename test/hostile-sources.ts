// Nothing a producer sends ends a process (issue 18, item 4), on any path: jobwire's channels
// and stored states, Celery's results, BullMQ's event streams and job hashes, users' job
// channels, the owner index and the recorder's keys. Every path gets the same hostile corpus
// (fixtures/hostile-corpus.ts) while sockets watch the jobs it lands on; afterwards the gateway
// is still running and a bystander watching another job still gets its updates. A Celery or
// BullMQ result that cannot be shown (NaN, too deep, over the payload limit) becomes a visible
// state: the job's status kept, with an `error` saying why, rather than silence.
//
// The gateway runs as a process (dist/src/cli.js serve), one per path, so that a crash is an
// exit the test sees, and one path's crash does not hide what the others do.

import t, { type Test } from 'tap'
import { Redis } from 'ioredis'
import { Producer } from '../src/producer/producer.js'
import { around, CORPUS, WHOLE } from './fixtures/hostile-corpus.js'
import { freePort } from './fixtures/ports.js'
import { reap, serveProcess, type Served } from './fixtures/process.js'
import { startRedis } from './fixtures/redis.js'
import { SECRET, token } from './fixtures/tokens.js'
import { pause, until } from './fixtures/until.js'
import { connect, type Message, type TestClient } from './fixtures/ws-client.js'

type Data = Record<string, unknown>

const redis = await startRedis()
t.teardown(() => redis.stop())
const producer = new Producer({ redis: redis.url })
t.teardown(() => producer.close())
const adminToken = await token('root', { role: 'admin' })

interface Gw {
  readonly served: Served
  readonly http: string
  readonly db: Redis
  /** A JSON and a msgpack socket of an admin (who may watch any job, whoever owns it). */
  readonly watcher: TestClient
  readonly msgpack: TestClient
  connectAs(tok: string, protocol?: string): Promise<TestClient>
  /** Asserts the process is alive and a bystander's job still streams. */
  checkAlive(t: Test): Promise<void>
}

/** A gateway process of its own, with a bystander already watching another job. */
async function gateway(t: Test, name: string): Promise<Gw> {
  const port = await freePort()
  const served = serveProcess([
    '--port', String(port), '--host', '127.0.0.1', '--workers', '1', '--redis', redis.url,
    '--jwt-secret', SECRET, '--celery-owner-field', 'user_id', '--bullmq-owner-field', 'userId',
    '--max-messages-per-sec', '0', '--max-subscriptions', '10000', '--connect-rate-per-ip', '0',
    '--outage-hold-ms', '3000', '--broker-timeout-ms', '3000', '--log-level', 'warn',
  ])
  t.teardown(() => reap(served))
  const http = `http://127.0.0.1:${port}`
  await until(async () => (await fetch(`${http}/readyz`).then((r) => r.status, () => 0)) === 200, 'the gateway to be ready', 20_000, 50)
    .catch((err: Error) => { throw new Error(`${err.message}:\n${served.lines.slice(-5).join('\n').slice(0, 2000)}`) })
  const sockets: TestClient[] = []
  t.teardown(() => Promise.all(sockets.map((c) => c.close())))
  const connectAs = async (tok: string, protocol?: string) => {
    const c = await connect(`ws://127.0.0.1:${port}/ws/jobs?token=${encodeURIComponent(tok)}`, protocol)
    sockets.push(c)
    return c
  }
  const db = redis.client()
  const bystanderJob = `bystander-${name}`
  await producer.progress(bystanderJob, { status: 'processing', step: 0 }, { owner: 'bystander' })
  const bystander = await connectAs(await token('bystander'))
  await bystander.subscribe(bystanderJob)
  const watcher = await connectAs(adminToken)
  const msgpack = await connectAs(adminToken, 'jobwire.msgpack')
  let checks = 0
  return {
    served, http, db, watcher, msgpack, connectAs,
    async checkAlive(t) {
      await pause(200) // whatever the last write set off has run
      const exited = served.proc.exitCode !== null || served.proc.signalCode !== null
      t.notOk(exited, `the gateway process is still running${exited ? ` (exited: ${served.proc.exitCode ?? served.proc.signalCode})` : ''}`)
      if (exited) {
        const last = served.lines.filter((l) => /"level":"(error|fatal)"|Error/.test(l)).slice(-3)
        for (const l of last) t.comment(l.slice(0, 600))
        return
      }
      const health = await fetch(`${http}/healthz`).then((r) => r.status, () => 0)
      t.equal(health, 200, '/healthz answers')
      const step = `after-${++checks}`
      await producer.progress(bystanderJob, { status: 'processing', step })
      const got = await bystander.next((m) => m.type === 'job_update' && m.job_id === bystanderJob && (m.data as Data).step === step, 5000).then(() => true, () => false)
      t.ok(got, 'a bystander watching another job still gets its updates')
    },
  }
}

/** The first state frame of `jobId` matching, or null within the time. */
const stateOf = (c: TestClient, jobId: string, match: (d: Data) => boolean, timeoutMs = 1500) =>
  c.next((m) => (m.type === 'job_update' || m.type === 'job_status') && m.job_id === jobId && m.data !== null && match(m.data as Data), timeoutMs)
  .then((m) => m.data as Data, () => null)

/** Any answer to a subscribe (job_status or error), or null. */
const answerTo = (c: TestClient, jobId: string, timeoutMs = 6000) =>
  c.next((m) => (m.type === 'job_status' || m.type === 'error') && m.job_id === jobId, timeoutMs).then((m) => m as Message, () => null)

const isVisible = (d: Data | null, status: string) => d !== null && d.status === status && typeof d.error === 'string' && d.error !== ''

/** Asserts the status was kept and the error says why; once per entry. */
function assertVisible(t: Test, d: Data | null, status: string, what: string): void {
  t.ok(isVisible(d, status), `${what}: shown as ${status} with an error saying why${d === null ? ' (nothing arrived)' : ` (got ${JSON.stringify(d).slice(0, 160)})`}`)
}

/** Feeds a path; a step that throws (the gateway gone, say) ends the feeding, not the check. */
async function feeding(t: Test, steps: () => Promise<void>): Promise<void> {
  try {
    await steps()
  } catch (err) {
    t.fail(`feeding the corpus stopped: ${(err as Error).message.slice(0, 300)}`)
  }
}

t.test('Celery results: SET + PUBLISH of celery-task-meta-<id>, as Celery writes them', async (t) => {
  const gw = await gateway(t, 'celery')
  await feeding(t, async () => {
    const write = (taskId: string, meta: Buffer) => gw.db.multi().set(`celery-task-meta-${taskId}`, meta).publish(`celery-task-meta-${taskId}`, meta).exec()
    const metaWith = (taskId: string, status: string, value: Buffer) =>
      around(`{"status": "${status}", "result": `, value, `, "traceback": null, "children": [], "date_done": "2026-12-07T10:00:00.000000", "task_id": "${taskId}", "name": "tasks.transcode", "args": [], "kwargs": {"user_id": "alice"}}`)
    let k = 0
    for (const entry of CORPUS) {
      const id = `hc-${++k}`
      await gw.watcher.subscribe(`celery:${id}`)
      await gw.msgpack.subscribe(`celery:${id}`)
      await write(id, metaWith(id, 'PROGRESS', entry.text))
      await write(id, metaWith(id, 'SUCCESS', entry.text))
      if (entry.unshowable) {
        assertVisible(t, await stateOf(gw.watcher, `celery:${id}`, (d) => d.status === 'completed'), 'completed', `a SUCCESS whose result is ${entry.name}, to its watcher`)
        const late = await gw.connectAs(adminToken)
        late.send({ type: 'subscribe_job', job_id: `celery:${id}` })
        const answer = await answerTo(late, `celery:${id}`)
        assertVisible(t, answer?.type === 'job_status' ? answer.data as Data | null : null, 'completed', `the same, to a subscriber that arrives after it`)
      }
      // The whole meta hostile, and a failure whose exception message is.
      await write(`${id}-whole`, entry.text)
      await write(`${id}-exc`, around('{"status": "FAILURE", "result": {"exc_type": "ValueError", "exc_message": [', entry.text, '], "exc_module": "builtins"}, "task_id": "x"}'))
    }
    // Wrong types where Celery's meta has types.
    const wrong = ['{"status": 5}', '{"status": null, "result": 1}', '{"status": ["SUCCESS"]}', '{"status": "SUCCESS"}', '{"status": "__proto__", "result": {}}',
      '{"status": "constructor"}', '{"status": "PROGRESS", "result": [1, 2]}', '{"status": "PROGRESS", "result": {"current": 1e308, "total": 1e-308}}',
      '{"status": "RETRY", "result": {"exc_type": {"a": 1}}}', '{"status": "FAILURE", "result": {"exc_type": "E", "exc_message": {"a": [1]}}}',
      '{"status": "SUCCESS", "result": 1, "kwargs": [1, 2]}', '{"status": "SUCCESS", "result": 1, "kwargs": {"user_id": {"$ne": null}}}', '{"status": "SUCCESS", "result": 1, "traceback": {"a": 1}}']
    for (const [i, meta] of wrong.entries()) {
      await gw.watcher.subscribe(`celery:hc-wrong-${i}`)
      await write(`hc-wrong-${i}`, Buffer.from(meta))
    }
    // A key of the wrong Redis type.
    await gw.db.hset('celery-task-meta-hc-hash', 'status', 'SUCCESS')
    gw.watcher.send({ type: 'subscribe_job', job_id: 'celery:hc-hash' })
    t.ok(await answerTo(gw.watcher, 'celery:hc-hash'), 'a task whose key is a hash is answered')
  })
  await gw.checkAlive(t)
})

t.test('BullMQ event streams: XADD on bull:<queue>:events with hostile fields', async (t) => {
  const gw = await gateway(t, 'bullmq-stream')
  await feeding(t, async () => {
    const xadd = (queue: string, ...fields: Array<string | Buffer>) => gw.db.xadd(`bull:${queue}:events`, '*', ...fields)
    let k = 0
    for (const entry of CORPUS) {
      const id = `e${++k}`
      const jobId = `bullmq:hs:${id}`
      await gw.watcher.subscribe(jobId)
      await gw.msgpack.subscribe(jobId)
      await xadd('hs', 'event', 'added', 'jobId', id, 'name', entry.text)
      await xadd('hs', 'event', 'active', 'jobId', id, 'prev', 'waiting')
      await xadd('hs', 'event', 'progress', 'jobId', id, 'data', entry.text)
      await xadd('hs', 'event', 'completed', 'jobId', id, 'returnvalue', entry.text, 'prev', 'active')
      if (entry.unshowable) assertVisible(t, await stateOf(gw.watcher, jobId, (d) => d.status === 'completed'), 'completed', `a completed event whose returnvalue is ${entry.name}`)
      await gw.watcher.subscribe(`bullmq:hs:f${k}`)
      await xadd('hs', 'event', 'failed', 'jobId', `f${k}`, 'failedReason', entry.text, 'prev', 'active')
      await xadd('hs', 'event', entry.text, 'jobId', id)
      await xadd('hs', 'jobId', entry.text, 'event', 'progress', 'data', '50')
    }
    await xadd('hs', 'no-event-no-job', 'x')
    await xadd('hs', 'event', 'progress', 'jobId', 'e1', 'jobId', 'e2', 'data', '{"percent": 10}', 'event', 'completed')
    // A stream key of the wrong type while one of its queue's jobs is watched.
    await gw.db.set('bull:hw:events', 'not a stream')
    gw.watcher.send({ type: 'subscribe_job', job_id: 'bullmq:hw:1' })
    t.ok(await answerTo(gw.watcher, 'bullmq:hw:1'), 'a queue whose event stream is a string is answered')
  })
  await gw.checkAlive(t)
})

t.test('BullMQ job hashes: hostile fields in bull:<queue>:<id>, read for a snapshot', async (t) => {
  const gw = await gateway(t, 'bullmq-hash')
  await feeding(t, async () => {
    let k = 0
    for (const entry of CORPUS) {
      const id = `h${++k}`
      const jobId = `bullmq:hh:${id}`
      const now = String(Date.now())
      await gw.db.hset(`bull:hh:${id}`, 'name', 'report', 'data', '{"userId": "alice"}', 'progress', entry.text, 'returnvalue', entry.text,
        'timestamp', now, 'processedOn', now, 'finishedOn', now)
      gw.watcher.send({ type: 'subscribe_job', job_id: jobId })
      const answer = await answerTo(gw.watcher, jobId)
      if (entry.unshowable) assertVisible(t, answer?.type === 'job_status' ? answer.data as Data | null : null, 'completed', `a finished job whose returnvalue is ${entry.name}, read from its hash`)
      // Every other field hostile too: name, data (where the owner is read), progress, failedReason, timestamps.
      await gw.db.hset(`bull:hh:d${k}`, 'name', entry.text, 'data', entry.text, 'progress', entry.text, 'failedReason', entry.text,
        'timestamp', entry.text, 'processedOn', entry.text, 'finishedOn', entry.text, 'ats', entry.text, 'atm', entry.text)
      gw.watcher.send({ type: 'subscribe_job', job_id: `bullmq:hh:d${k}` })
      await answerTo(gw.watcher, `bullmq:hh:d${k}`)
      const alice = await gw.connectAs(await token('alice'))
      alice.send({ type: 'subscribe_job', job_id: `bullmq:hh:d${k}` })
      await answerTo(alice, `bullmq:hh:d${k}`)
      await alice.close()
    }
    // A job key of the wrong Redis type.
    await gw.db.set('bull:hh:string', 'not a hash')
    gw.watcher.send({ type: 'subscribe_job', job_id: 'bullmq:hh:string' })
    t.ok(await answerTo(gw.watcher, 'bullmq:hh:string'), 'a job whose key is a string is answered')
    const res = await fetch(`${gw.http}/jobs/bullmq:hh:d1`, { headers: { authorization: `Bearer ${adminToken}` } })
    await res.arrayBuffer()
    t.ok(res.status < 500 || res.status === 503, `GET /jobs/<id> of a hostile hash answers (${res.status})`)
  })
  await gw.checkAlive(t)
})

t.test('jobwire channels and stored states: PUBLISH on progress:<id>, and hostile states', async (t) => {
  const gw = await gateway(t, 'jobwire')
  await feeding(t, async () => {
    await gw.watcher.subscribe('hj-live')
    await gw.msgpack.subscribe('hj-live')
    let step = 0
    for (const [name, bytes] of WHOLE) {
      await gw.db.publish('progress:hj-live', bytes)
      await gw.db.publish('progress:hj-live', JSON.stringify({ status: 'processing', step: ++step }))
      const ok = await stateOf(gw.watcher, 'hj-live', (d) => d.step === step)
      t.ok(ok, `the watcher goes on after ${name}`)
      // The same as a job's stored state (what the producer script would have written), read for a snapshot.
      await gw.db.hset(`jobwire:job:hj-s${step}`, 'state', bytes, 'owner', 'alice', 'seq', '1')
      gw.watcher.send({ type: 'subscribe_job', job_id: `hj-s${step}` })
      await answerTo(gw.watcher, `hj-s${step}`)
      // And as its owner.
      await gw.db.hset(`jobwire:job:hj-o${step}`, 'state', '{"status":"queued","seq":1}', 'owner', bytes)
      gw.watcher.send({ type: 'subscribe_job', job_id: `hj-o${step}` })
      await answerTo(gw.watcher, `hj-o${step}`)
    }
    // A state key of the wrong Redis type.
    await gw.db.set('jobwire:job:hj-string', 'not a hash')
    gw.watcher.send({ type: 'subscribe_job', job_id: 'hj-string' })
    t.ok(await answerTo(gw.watcher, 'hj-string'), 'a job whose state key is a string is answered')
  })
  await gw.checkAlive(t)
})

t.test('users\' job channels and the owner index', async (t) => {
  const gw = await gateway(t, 'user-jobs')
  await feeding(t, async () => {
    const alice = await token('alice')
    const mine = await gw.connectAs(alice)
    mine.send({ type: 'subscribe_user_jobs' })
    await mine.nextOfType('user_jobs')
    let k = 0
    for (const [, bytes] of WHOLE) {
      await gw.db.publish('jobwire:user-jobs:alice', bytes)
      // The index: a hostile member, and a job listed there whose stored state is hostile.
      await gw.db.zadd('jobwire:owner:alice', Date.now(), bytes)
      await gw.db.hset(`jobwire:job:hu-${++k}`, 'state', bytes, 'owner', 'alice')
      await gw.db.zadd('jobwire:owner:alice', Date.now(), `hu-${k}`)
    }
    await gw.db.zadd('jobwire:owner:alice', Date.now(), 'x'.repeat(300 * 1024))
    await gw.db.publish('jobwire:user-jobs:alice', 'hu-marker')
    t.ok(await mine.next((m) => m.type === 'user_job' && m.job_id === 'hu-marker', 5000).then(() => true, () => false), 'a valid announcement after the corpus still arrives')
    const res = await fetch(`${gw.http}/jobs?owner=me`, { headers: { authorization: `Bearer ${alice}` } })
    const body = await res.text()
    t.equal(res.status, 200, 'GET /jobs?owner=me over the poisoned index answers 200')
    t.notOk(/__proto__|polluted/.test(body), 'and lists none of the hostile states')
    const again = await gw.connectAs(alice)
    again.send({ type: 'subscribe_user_jobs' })
    t.ok(await again.next((m) => m.type === 'user_jobs' || m.type === 'error', 5000).then(() => true, () => false), 'subscribe_user_jobs over it is answered')
    // An index key of the wrong Redis type.
    await gw.db.set('jobwire:owner:dave', 'not a sorted set')
    const dave = await fetch(`${gw.http}/jobs?owner=me`, { headers: { authorization: `Bearer ${await token('dave')}` } })
    await dave.arrayBuffer()
    t.ok(dave.status > 0, `an index of the wrong type is answered (${dave.status})`)
  })
  await gw.checkAlive(t)
})

t.test('the recorder: hostile recorded states and leases', async (t) => {
  const gw = await gateway(t, 'recorder')
  await feeding(t, async () => {
    let k = 0
    for (const [, bytes] of WHOLE) {
      // What a recorder wrote for a PUBLISH-only job (its `seen` field), hostile, read for a snapshot and polled.
      await gw.db.hset(`jobwire:job:hr-${++k}`, 'seen', bytes)
      gw.watcher.send({ type: 'subscribe_job', job_id: `hr-${k}` })
      await answerTo(gw.watcher, `hr-${k}`)
      const res = await fetch(`${gw.http}/jobs/hr-${k}`, { headers: { authorization: `Bearer ${adminToken}` } })
      await res.arrayBuffer()
      // A hostile lease holder on a watched PUBLISH-only job, then hostile and valid publishes for the recorder to record.
      await gw.db.set(`jobwire:rec:hl-${k}`, bytes)
      await gw.watcher.subscribe(`hl-${k}`)
      await gw.db.publish(`progress:hl-${k}`, bytes)
      await gw.db.publish(`progress:hl-${k}`, '{"status":"processing","progress":5}')
    }
    // Lease and state keys of the wrong Redis types under a job the recorder records.
    await gw.db.hset('jobwire:rec:hr-wrong', 'a', '1')
    await gw.watcher.subscribe('hr-wrong')
    await gw.db.publish('progress:hr-wrong', '{"status":"processing"}')
    await pause(600) // the recorder flushes every 250 ms
  })
  await gw.checkAlive(t)
})
