// Order survives data loss: when Redis restarts empty, or a job's key expires, the producer
// begins the job again at seq 1 with a new epoch, and every reader (the gateway's snapshot and
// resync, GET /jobs, the browser client library) takes the new epoch as the new truth instead
// of holding on to the remembered seq 50 for ever.

import t from 'tap'
import { createServer, connect as tcpConnect, type Server, type Socket } from 'node:net'
import WebSocket from 'ws'
import { JobsClient } from '../src/client/jobs-client.js'
import type { JobPayload } from '../src/wire/protocol.js'
import { startGateway } from './fixtures/gateway.js'
import { freePort } from './fixtures/ports.js'
import { startRedis } from './fixtures/redis.js'
import { until } from './fixtures/until.js'

/** A TCP proxy in front of Redis that can be cut, so the gateway stays away while the test
 * writes to the new, empty Redis. */
async function startProxy(target: () => number): Promise<{ port: number; cut(): void; open(): void; close(): Promise<void> }> {
  const port = await freePort()
  const sockets = new Set<Socket>()
  let accepting = true
  const server: Server = createServer((client) => {
    if (!accepting) return client.destroy()
    const upstream = tcpConnect(target(), '127.0.0.1')
    sockets.add(client).add(upstream)
    client.pipe(upstream).pipe(client)
    const drop = () => {
      client.destroy()
      upstream.destroy()
      sockets.delete(client)
      sockets.delete(upstream)
    }
    client.on('error', drop).on('close', drop)
    upstream.on('error', drop).on('close', drop)
  })
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve))
  return {
    port,
    cut() {
      accepting = false
      for (const s of sockets) s.destroy()
    },
    open() {
      accepting = true
    },
    close: () => new Promise((resolve) => {
      for (const s of sockets) s.destroy()
      server.close(() => resolve())
    }),
  }
}

async function stream(publish: (job: string, body: object) => Promise<number>, job: string, from: number, to: number, final?: string): Promise<void> {
  for (let i = from; i <= to; i++) {
    await publish(job, i === to && final ? { status: final, progress: 100, step: i } : { status: 'processing', progress: i, step: i })
  }
}

t.test('Redis restarts empty; the producer goes on after the resync: subscribers old and new end on the new state', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const gw = await startGateway({ redis: redis.url })
  t.teardown(() => gw.stop())
  const broker = gw.gateway.broker
  const publish = (job: string, body: object) => broker.publishProgress(job, Buffer.from(JSON.stringify(body)))
  // The browser client library, over a real socket.
  const client = new JobsClient({ url: gw.wsUrl, WebSocket: WebSocket as unknown as typeof globalThis.WebSocket, EventSource: null, minReconnectDelayMs: 20, maxReconnectDelayMs: 200 })
  t.teardown(() => client.close())
  let view: JobPayload | null = null
  client.subscribe('dl-1', { onStatus: (d) => (view = d), onUpdate: (d) => (view = d) })
  let emptyStatuses = 0
  client.addEventListener('message', (e) => {
    const m = (e as CustomEvent).detail as { type: string; data: unknown }
    if (m.type === 'job_status' && m.data === null) emptyStatuses++
  })
  await until(() => client.job('dl-1') !== undefined, 'the subscription')
  await stream(publish, 'dl-1', 1, 50)
  await until(() => view?.seq === 50, 'seq 50')
  const firstEpoch = view!.epoch!

  const resyncs = gw.gateway.metricsSnapshot().counters.resyncs_total!
  await redis.kill()
  await redis.restart()
  await until(() => gw.gateway.metricsSnapshot().counters.resyncs_total! > resyncs, 'the resync after the restart', 15_000)
  await until(() => emptyStatuses > 0, 'the resync says the job has no state now (what was seen before is forgotten)')
  // The client keeps what it held rather than show nothing (issue 19: never drop a held state
  // for data: null); the new epoch below replaces it.
  t.match(view, { seq: 50 })

  await stream(publish, 'dl-1', 1, 20, 'completed')
  await until(() => view?.status === 'completed', 'the client library takes the new epoch', 10_000)
  t.match(view, { seq: 20, status: 'completed' })
  t.ok(view!.epoch! > firstEpoch, 'a new epoch')
  const late = await gw.connect()
  t.match((await late.subscribe('dl-1')).data, { seq: 20, status: 'completed' }, 'a new subscriber gets the new state')
  t.match((await (await fetch(`${gw.http}/jobs/dl-1`)).json()), { data: { seq: 20, status: 'completed' } }, 'and so does GET /jobs')
})

t.test('the producer writes to the new, empty Redis before the gateway is back: the new state wins', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const proxy = await startProxy(() => redis.port)
  t.teardown(() => proxy.close())
  const gw = await startGateway({ redis: `redis://127.0.0.1:${proxy.port}` })
  t.teardown(() => gw.stop())
  const publish = (job: string, body: object) => gw.gateway.broker.publishProgress(job, Buffer.from(JSON.stringify(body)))
  const watcher = await gw.connect()
  await watcher.subscribe('dl-2')
  await stream(publish, 'dl-2', 1, 50)
  await watcher.next((m) => (m.data as JobPayload | null)?.seq === 50)

  proxy.cut()
  await until(() => gw.gateway.broker.state !== 'ready', 'the gateway to notice')
  await redis.kill()
  await redis.restart()
  // A producer of its own, straight to the new Redis, while the gateway is still away.
  const { RedisBroker } = await import('../src/broker/redis.js')
  const { createLogger } = await import('../src/support/log.js')
  const producer = new RedisBroker(redis.url, { channelPrefix: 'progress:', keyPrefix: 'jobwire:', stateTtlSec: 100, terminalTtlSec: 10 }, createLogger('silent'))
  t.teardown(() => producer.close())
  producer.start({ message: () => undefined, state: () => undefined, restored: () => undefined })
  await until(() => producer.state === 'ready', 'the producer')
  for (let i = 1; i <= 5; i++) await producer.publishProgress('dl-2', Buffer.from(JSON.stringify({ status: 'processing', step: i })))

  proxy.open()
  const status = await watcher.next((m) => m.type === 'job_status' && (m.data as JobPayload | null)?.seq === 5, 15_000)
  t.match(status.data, { step: 5 }, 'the resync sends the new state, not the remembered seq 50')
  t.match((await (await fetch(`${gw.http}/jobs/dl-2`)).json()), { data: { seq: 5, step: 5 } }, 'GET /jobs too')
})

t.test('a key that expires begins a new epoch; readers take it', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const gw = await startGateway({ redis: redis.url })
  t.teardown(() => gw.stop())
  const publish = (job: string, body: object) => gw.gateway.broker.publishProgress(job, Buffer.from(JSON.stringify(body)))
  const watcher = await gw.connect()
  await watcher.subscribe('dl-3')
  await stream(publish, 'dl-3', 1, 10)
  const old = await watcher.next((m) => (m.data as JobPayload | null)?.seq === 10)
  await redis.client().del('jobwire:job:dl-3') // what expiry does
  await publish('dl-3', { status: 'queued', again: true })
  const fresh = await watcher.next((m) => (m.data as JobPayload | null)?.again === true)
  t.match(fresh.data, { seq: 1 })
  t.ok((fresh.data as JobPayload).epoch! > (old.data as JobPayload).epoch!, 'a new epoch')
  t.match((await (await fetch(`${gw.http}/jobs/dl-3`)).json()), { data: { seq: 1, again: true } }, 'the stored new epoch wins over the seq 10 seen before')
})
