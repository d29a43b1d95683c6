// Redis killed and restarted mid-stream: subscriptions come back by themselves, and every
// subscriber gets a fresh job_status, so clients converge on the true state.

import t from 'tap'
import { Producer } from '../src/producer/producer.js'
import { startGateway } from './fixtures/gateway.js'
import { startRedis } from './fixtures/redis.js'
import type { Message, TestClient } from './fixtures/ws-client.js'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** The state a client holds for a job, by the client library's rule: a job_status replaces it;
 * a job_update of another epoch is the new truth, of the same epoch only if its seq is higher
 * (Redis restarts empty here, so the producer begins again at seq 1 with a new epoch). */
function latest(client: TestClient, jobId: string): Record<string, unknown> | null {
  let best: Record<string, unknown> | null = null
  for (const m of client.messages as Message[]) {
    if ((m.type !== 'job_status' && m.type !== 'job_update') || m.job_id !== jobId) continue
    const data = m.data as Record<string, unknown> | null
    if (m.type === 'job_status' || best === null || data!.epoch !== best.epoch || (data!.seq as number) > (best.seq as number)) best = data
  }
  return best
}

for (const mode of ['per-job', 'pattern'] as const) {
  t.test(`${mode} mode`, async (t) => {
    const redis = await startRedis()
    t.teardown(() => redis.stop())
    // Readiness holds through a broker outage for --outage-hold-ms (node/readiness.ts): short
    // here, so the outage outlasts it.
    const gw = await startGateway({ redis: redis.url, 'subscription-mode': mode, 'broker-timeout-ms': '3000', 'outage-hold-ms': '200' })
    t.teardown(() => gw.stop())
    let producer = new Producer({ redis: redis.url })

    const a = await gw.connect()
    const b = await gw.connect('jobwire.msgpack')
    const c = await gw.connect()
    await a.subscribe('rr-1')
    await b.subscribe('rr-1')
    await c.subscribe('rr-2')
    await producer.progress('rr-1', { progress: 10 })
    await producer.progress('rr-2', { progress: 20 })
    await a.nextOfType('job_update', 'rr-1')
    await b.nextOfType('job_update', 'rr-1')
    await c.nextOfType('job_update', 'rr-2')
    await producer.close()

    await redis.kill()
    for (let i = 0; i < 100 && (await fetch(`${gw.http}/readyz`)).status !== 503; i++) await sleep(20)
    t.equal((await fetch(`${gw.http}/readyz`)).status, 503, 'not ready once Redis has been down longer than the hold')
    t.equal(gw.gateway.metricsSnapshot().gauges.broker_up, 0)
    await sleep(300)
    const statusesBefore = [a, b, c].map((x) => x.all('job_status').length)

    await redis.restart() // empty: the true state is whatever producers write from now on
    producer = new Producer({ redis: redis.url })
    t.teardown(() => producer.close())
    await producer.progress('rr-1', { progress: 77, status: 'processing' })
    await producer.progress('rr-2', { progress: 88, status: 'processing' })

    for (const [client, job, before] of [[a, 'rr-1', statusesBefore[0]], [b, 'rr-1', statusesBefore[1]], [c, 'rr-2', statusesBefore[2]]] as const) {
      await client.next((m) => m.type === 'job_status' && m.job_id === job, 15_000)
      t.ok(client.all('job_status', job).length > before!, `a fresh job_status for ${job}`)
    }
    // Whatever the order of the fresh job_status and the update, each ends at the written state.
    for (const [client, job, progress] of [[a, 'rr-1', 77], [b, 'rr-1', 77], [c, 'rr-2', 88]] as const) {
      for (const deadline = Date.now() + 5000; latest(client, job)?.progress !== progress && Date.now() < deadline;) await sleep(20)
    }
    t.match(latest(a, 'rr-1'), { progress: 77 }, 'A converged')
    t.match(latest(b, 'rr-1'), { progress: 77 }, 'B (msgpack) converged')
    t.match(latest(c, 'rr-2'), { progress: 88 }, 'C converged')

    await producer.progress('rr-1', { progress: 90 })
    t.match((await a.next((m) => m.type === 'job_update' && (m.data as { progress: number }).progress === 90)).data, { progress: 90 }, 'streaming resumed')
    t.equal((await fetch(`${gw.http}/readyz`)).status, 200)
    const counters = gw.gateway.metricsSnapshot().counters
    t.equal(counters.broker_reconnects_total, 1)
    t.ok(counters.resyncs_total! >= 1)
  })
}

for (const mode of ['per-job', 'pattern'] as const) {
  t.test(`${mode} mode: only the command connection drops (Redis timeout, CLIENT KILL)`, async (t) => {
    const redis = await startRedis()
    t.teardown(() => redis.stop())
    const gw = await startGateway({ redis: redis.url, 'subscription-mode': mode, 'broker-timeout-ms': '3000' })
    t.teardown(() => gw.stop())
    const admin = redis.client()
    const a = await gw.connect()
    await a.subscribe('cmd-1')
    // Kills every normal (non pub/sub) client but the caller: the gateway's command connection.
    await admin.call('CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes')
    for (let i = 0; i < 100 && (await fetch(`${gw.http}/readyz`)).status === 200; i++) await sleep(5)
    for (let i = 0; i < 200 && (await fetch(`${gw.http}/readyz`)).status !== 200; i++) await sleep(25)
    t.equal((await fetch(`${gw.http}/readyz`)).status, 200, 'ready again')
    const b = await gw.connect()
    t.match(await b.subscribe('cmd-2'), { type: 'job_status', job_id: 'cmd-2' }, 'new subscribes are served')
    const producer = new Producer({ redis: redis.url })
    t.teardown(() => producer.close())
    await producer.progress('cmd-1', { progress: 5 })
    t.match((await a.nextOfType('job_update', 'cmd-1')).data, { progress: 5 }, 'the old subscription streams')
    await producer.progress('cmd-2', { progress: 6 })
    t.match((await b.nextOfType('job_update', 'cmd-2')).data, { progress: 6 })
  })
}
