// A job's generation changes (its key expired and the producer began it again) while its
// watchers are re-checked against the owner: with real Redis, the gateway and the browser
// client library. Nothing published meanwhile is lost, and an owner that cannot be read is
// answered with a retryable `unavailable` that the client library acts on, never `forbidden`.

import t from 'tap'
import WebSocket from 'ws'
import type { Broker } from '../src/broker/broker.js'
import { JobsClient, type JobsClientError } from '../src/client/jobs-client.js'
import type { JobPayload } from '../src/wire/protocol.js'
import { startGateway } from './fixtures/gateway.js'
import { startRedis } from './fixtures/redis.js'
import { SECRET, token } from './fixtures/tokens.js'
import { until } from './fixtures/until.js'

t.test('generation changes lose nothing', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const gw = await startGateway({ redis: redis.url, 'jwt-secret': SECRET, 'outage-hold-ms': '600' })
  t.teardown(() => gw.stop())
  const broker = gw.gateway.broker
  const put = (job: string, body: object) => broker.publishProgress(job, Buffer.from(JSON.stringify(body)), { owner: 'alice' })
  // The owner read goes through readJobs: the test can hold it back or make it fail.
  const reads = broker as { readJobs: Broker['readJobs'] }
  const readJobs = broker.readJobs.bind(broker)
  let gate: Promise<void> | null = null
  let failing = false
  reads.readJobs = async (ids) => {
    if (gate !== null) await gate
    if (failing) throw new Error('test: broker read fails')
    return readJobs(ids)
  }
  const aliceToken = await token('alice')
  const client = new JobsClient({ url: gw.wsUrl, token: aliceToken, WebSocket: WebSocket as unknown as typeof globalThis.WebSocket, EventSource: null, minReconnectDelayMs: 20, maxReconnectDelayMs: 200 })
  t.teardown(() => client.close())

  t.test('a final state published while the watchers are checked reaches them after the job_status', async (t) => {
    await put('gc-1', { status: 'processing', progress: 10 })
    let view: JobPayload | null = null
    client.subscribe('gc-1', { onStatus: (d) => (view = d), onUpdate: (d) => (view = d) })
    await until(() => view?.progress === 10, 'the subscription')
    const before = gw.gateway.metricsSnapshot().counters.broker_messages_total!
    let open!: () => void
    gate = new Promise((resolve) => (open = resolve))
    await redis.client().del('jobwire:job:gc-1') // what expiry does
    await put('gc-1', { status: 'processing', progress: 90 }) // a new generation: its check waits on the read
    // The worker's crash handler sends its final word as a plain PUBLISH meanwhile.
    await broker.publish('progress:gc-1', JSON.stringify({ status: 'failed', error: 'worker died' }))
    await until(() => gw.gateway.metricsSnapshot().counters.broker_messages_total! >= before + 2, 'both messages reached the gateway')
    gate = null
    open()
    await until(() => view?.status === 'failed', 'the final state')
    t.match(view, { status: 'failed', error: 'worker died' })
  })

  t.test('the owner cannot be read: unavailable (never forbidden), and the client watches again', async (t) => {
    await put('gc-2', { status: 'processing', progress: 10 })
    let view: JobPayload | null = null
    const errors: string[] = []
    client.subscribe('gc-2', { onStatus: (d) => (view = d), onUpdate: (d) => (view = d), onError: (e: JobsClientError) => errors.push(e.code) })
    await until(() => view?.progress === 10, 'the subscription')
    const admin = await gw.connectAs(await token('root', { role: 'admin' }))
    await admin.subscribe('gc-2')
    failing = true
    await redis.client().del('jobwire:job:gc-2')
    await put('gc-2', { status: 'processing', progress: 20 })
    await until(() => errors.length > 0, 'the answer to the owner', 10_000)
    t.same(errors, ['unavailable'], 'the owner is told unavailable, not forbidden')
    t.match((await admin.next((m) => m.type === 'job_status' && (m.data as JobPayload | null)?.progress === 20)).data, { progress: 20 },
      'a watcher who needs no owner gets a job_status of the new state')
    failing = false
    await until(() => view?.progress === 20, 'the client subscribed again and has the new state')
    await put('gc-2', { status: 'completed', progress: 100 })
    await until(() => view?.status === 'completed', 'updates flow to it again')
    t.same(errors, ['unavailable'], 'nothing else was refused')
  })
})
