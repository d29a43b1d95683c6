// "My jobs": GET /jobs?owner=me and subscribe_user_jobs, on both brokers, with the access rule
// of jobs (your own; admins any; with access control off, `me` is `local`).

import t from 'tap'
import { Producer } from '../src/producer/producer.js'
import { startGateway, type TestGateway } from './fixtures/gateway.js'
import { startRedis } from './fixtures/redis.js'
import { SECRET, token } from './fixtures/tokens.js'
import { until } from './fixtures/until.js'

interface Listing { owner: string; jobs: Array<{ job_id: string; data: Record<string, unknown> }> }

async function list(gw: TestGateway, owner: string, bearer?: string): Promise<{ status: number; body: Listing & { error?: string } }> {
  const res = await fetch(`${gw.http}/jobs?owner=${encodeURIComponent(owner)}`, bearer ? { headers: { authorization: `Bearer ${bearer}` } } : {})
  return { status: res.status, body: await res.json() as Listing & { error?: string } }
}

for (const kind of ['embedded', 'redis', 'redis-pattern'] as const) {
  t.test(`${kind}: a user's jobs, listed and announced`, async (t) => {
    let publish: (id: string, payload: object, owner?: string) => Promise<unknown>
    let gw: TestGateway
    if (kind === 'embedded') {
      gw = await startGateway({ 'jwt-secret': SECRET })
      publish = (id, payload, owner) => gw.gateway.broker.publishProgress(id, Buffer.from(JSON.stringify(payload)), owner ? { owner } : {})
    } else {
      const redis = await startRedis()
      t.teardown(() => redis.stop())
      gw = await startGateway({ 'jwt-secret': SECRET, redis: redis.url, ...(kind === 'redis-pattern' ? { 'subscription-mode': 'pattern' } : {}) })
      const producer = new Producer({ redis: redis.url })
      t.teardown(() => producer.close())
      publish = (id, payload, owner) => producer.progress(id, payload as Record<string, unknown>, owner ? { owner } : {})
    }
    t.teardown(() => gw.stop())
    const alice = await token('alice')
    const admin = await token('root', { role: 'admin' })

    await publish('a-1', { status: 'queued', title: 'first' }, 'alice')
    await publish('b-1', { status: 'queued' }, 'bob')
    await publish('a-1', { status: 'processing', progress: 20 })

    const mine = await list(gw, 'me', alice)
    t.equal(mine.status, 200)
    t.equal(mine.body.owner, 'alice')
    t.same(mine.body.jobs.map((j) => j.job_id), ['a-1'])
    t.match(mine.body.jobs[0]!.data, { status: 'processing', progress: 20, title: 'first', seq: 2 }, 'the merged state')
    t.equal((await list(gw, 'alice', alice)).status, 200, 'your own id works as well as me')
    t.equal((await list(gw, 'bob', alice)).status, 403, "another user's list is refused")
    t.same((await list(gw, 'bob', admin)).body.jobs.map((j) => j.job_id), ['b-1'], 'an admin may list anyone')
    t.equal((await list(gw, 'me')).status, 401, 'no token')
    t.equal((await fetch(`${gw.http}/jobs`)).status, 400, 'no owner named')

    const c = await gw.connectAs(alice)
    c.send({ type: 'subscribe_user_jobs' })
    t.same(await c.nextOfType('user_jobs'), { type: 'user_jobs', user: 'alice', job_ids: ['a-1'] })
    await publish('a-2', { status: 'queued' }, 'alice')
    t.same(await c.nextOfType('user_job'), { type: 'user_job', user: 'alice', job_id: 'a-2' }, 'a new job appears live')
    await publish('b-2', { status: 'queued' }, 'bob')
    await publish('a-2', { progress: 5 })
    await publish('a-3', { status: 'queued' }, 'alice')
    t.same(await c.nextOfType('user_job'), { type: 'user_job', user: 'alice', job_id: 'a-3' })
    t.same(c.all('user_job').map((m) => m.job_id), ['a-2', 'a-3'], "neither bob's job nor an update of a known job is announced")

    c.send({ type: 'subscribe_user_jobs', user: 'bob' })
    t.match(await c.nextOfType('error'), { code: 'forbidden', user: 'bob' })
    c.send({ type: 'subscribe_user_jobs', user: 'not a user' })
    t.match(await c.nextOfType('error'), { code: 'bad_message' })

    const root = await gw.connectAs(admin)
    root.send({ type: 'subscribe_user_jobs', user: 'bob' })
    t.same((await root.nextOfType('user_jobs')).job_ids, ['b-2', 'b-1'], "an admin watches bob's jobs, newest first")

    c.send({ type: 'unsubscribe_user_jobs' })
    t.same(await c.nextOfType('unsubscribed_user_jobs'), { type: 'unsubscribed_user_jobs', user: 'alice' })
    await publish('a-4', { status: 'queued' }, 'alice')
    await publish('b-3', { status: 'queued' }, 'bob')
    t.equal((await root.nextOfType('user_job')).job_id, 'b-3')
    t.notOk(c.all('user_job').some((m) => m.job_id === 'a-4'), 'nothing after unsubscribe_user_jobs')

    // The user's channel is held only while someone watches: after the last watcher leaves it
    // is let go (after --unsubscribe-delay-ms).
    await root.close()
    await until(() => !(gw.gateway as unknown as { userJobs: { channels: { size: number } } }).userJobs.channels.size, 'user channels released')
  })
}

t.test('with access control off, me is local, the owner of demo jobs', async (t) => {
  const gw = await startGateway({ demo: 'true' })
  t.teardown(() => gw.stop())
  const c = await gw.connect()
  c.send({ type: 'subscribe_user_jobs' })
  t.same(await c.nextOfType('user_jobs'), { type: 'user_jobs', user: 'local', job_ids: [] })
  const started = await fetch(`${gw.http}/demo/jobs?outcome=success&step_ms=20`, { method: 'POST' }).then((r) => r.json()) as { job_id: string }
  t.equal((await c.nextOfType('user_job')).job_id, started.job_id)
  const mine = await list(gw, 'me')
  t.same(mine.body.jobs.map((j) => j.job_id), [started.job_id])
  t.equal((await list(gw, 'someone')).status, 200, 'any list is readable, as every job is')
})
