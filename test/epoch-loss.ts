// Partial replication loss (issue 19, item 5): Redis keeps the job's key but loses its last
// writes (a replica or a restored copy at seq 8 after seq 10 "completed"), so the producer
// script counts on from 8 in the same epoch. A client on "completed" is never moved back to
// "processing" in that epoch: the gateway notices the record went back, begins a new epoch on
// it (src/broker/new-epoch.lua), and later writes show as that new history.

import t from 'tap'
import { createServer, connect as tcpConnect, type Server, type Socket } from 'node:net'
import WebSocket from 'ws'
import { JobsClient } from '../src/client/jobs-client.js'
import { isTerminalStatus, type JobPayload } from '../src/wire/protocol.js'
import { startGateway } from './fixtures/gateway.js'
import { freePort } from './fixtures/ports.js'
import { startRedis } from './fixtures/redis.js'
import { until } from './fixtures/until.js'
import type { Message } from './fixtures/ws-client.js'

const redis = await startRedis()
t.teardown(() => redis.stop())
const gw = await startGateway({ redis: redis.url })
t.teardown(() => gw.stop())
const admin = redis.client()
const publish = (job: string, body: object) => gw.gateway.broker.publishProgress(job, Buffer.from(JSON.stringify(body)))

/** Every state a watcher was shown, in order, and whether one went from final back to not
 * final within one epoch. */
function reverted(states: Array<JobPayload | null>): string | null {
  let final: JobPayload | null = null
  for (const s of states) {
    if (s === null) continue
    if (final !== null && s.epoch === final.epoch && !isTerminalStatus(s.status)) return `${JSON.stringify(final)} then ${JSON.stringify(s)}`
    if (isTerminalStatus(s.status)) final = s
    else if (final !== null && s.epoch !== final.epoch) final = null
  }
  return null
}

const shown = (messages: Message[], jobId: string) =>
  messages.filter((m) => (m.type === 'job_status' || m.type === 'job_update') && m.job_id === jobId).map((m) => m.data as JobPayload | null)

async function completedThenRestoredAt8(jobId: string): Promise<number> {
  for (let i = 1; i <= 8; i++) await publish(jobId, { status: 'processing', progress: i * 10 })
  const atEight = await admin.dumpBuffer(`jobwire:job:${jobId}`)
  await publish(jobId, { status: 'processing', progress: 90 })
  await publish(jobId, { status: 'completed', progress: 100, result: 'ok' })
  return new Promise((resolve) => setTimeout(() => {
    // The lost writes: the hash goes back to its copy at seq 8, in the same epoch.
    void admin.restore(`jobwire:job:${jobId}`, 0, atEight!, 'REPLACE').then(() => resolve(0))
  }, 100))
}

t.test('the producer writes on from the restored copy: no client goes back to processing in that epoch', async (t) => {
  const client = new JobsClient({ url: gw.wsUrl, WebSocket: WebSocket as unknown as typeof globalThis.WebSocket, EventSource: null })
  t.teardown(() => client.close())
  const views: Array<JobPayload | null> = []
  client.subscribe('el-1', { onStatus: (d) => views.push(d), onUpdate: (d) => views.push(d) })
  const raw = await gw.connect()
  await raw.subscribe('el-1')
  await until(() => client.job('el-1') !== undefined, 'the subscription')

  const before = gw.gateway.metricsSnapshot().counters.history_losses_total ?? 0
  const restored = completedThenRestoredAt8('el-1')
  await until(() => views.at(-1)?.status === 'completed', 'completed')
  const epoch = views.at(-1)!.epoch!
  await restored
  // The next write re-uses seq 9 of epoch `epoch` for another state.
  t.equal(await publish('el-1', { status: 'processing', progress: 95 }), 9, 'the script counted on from the restored copy (seq 9 again)')
  await until(() => client.job('el-1')?.data?.epoch !== epoch, 'a new epoch reaches the client', 10_000)
  t.ok((gw.gateway.metricsSnapshot().counters.history_losses_total ?? 0) > before, 'the loss is counted')
  const stored = await admin.hget('jobwire:job:el-1', 'epoch')
  t.not(Number(stored), epoch, 'the stored record is in a new epoch')
  // Later writes are that new history, everywhere.
  await publish('el-1', { status: 'processing', progress: 97 })
  await publish('el-1', { status: 'completed', progress: 100, result: 'again' })
  await until(() => client.job('el-1')?.data?.result === 'again', 'the new history ends on the client')
  await until(() => shown(raw.messages, 'el-1').at(-1)?.result === 'again', 'and on the raw socket')
  t.equal(client.job('el-1')!.data!.epoch, Number(stored))
  t.equal(reverted(views), null, 'the client library never showed processing after completed in one epoch')
  t.equal(reverted(shown(raw.messages, 'el-1')), null, 'the gateway never sent it either')
  const late = await gw.connect()
  t.match((await late.subscribe('el-1')).data, { status: 'completed', result: 'again', epoch: Number(stored) })
})

t.test('a subscriber right after the restore gets the final state, not the restored one; then the new epoch', async (t) => {
  const watcher = await gw.connect()
  await watcher.subscribe('el-2')
  const restored = completedThenRestoredAt8('el-2')
  await watcher.next((m) => m.type === 'job_update' && (m.data as JobPayload).status === 'completed')
  await restored
  const late = await gw.connect()
  const status = await late.subscribe('el-2')
  t.match(status.data, { status: 'completed', seq: 10 }, 'what the channel delivered before the read wins over the record that went back')
  const epoch = (status.data as JobPayload).epoch
  // The record begins a new epoch, published to everyone: a visibly new history.
  const moved = await watcher.next((m) => m.type === 'job_update' && (m.data as JobPayload).epoch !== epoch, 10_000)
  t.match(moved.data, { seq: 8, status: 'processing' })
  t.equal(reverted(shown(watcher.messages, 'el-2')), null)
  t.equal(reverted(shown(late.messages, 'el-2')), null)
  t.equal(await publish('el-2', { status: 'completed', progress: 100 }), 9)
  await late.next((m) => m.type === 'job_update' && (m.data as JobPayload).status === 'completed' && (m.data as JobPayload).epoch === (moved.data as JobPayload).epoch)
})

/** A TCP proxy in front of Redis that can be cut (as in data-loss.ts), so the gateway is away
 * while Redis is replaced by one holding an older copy. */
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

t.test('a failover to a replica at seq 8: the resync does not take the client back, a new epoch begins', async (t) => {
  const replica = await startRedis()
  t.teardown(() => replica.stop())
  const proxy = await startProxy(() => replica.port)
  t.teardown(() => proxy.close())
  const failing = await startGateway({ redis: `redis://127.0.0.1:${proxy.port}` })
  t.teardown(() => failing.stop())
  const direct = replica.client()
  const write = (body: object) => failing.gateway.broker.publishProgress('el-3', Buffer.from(JSON.stringify(body)))
  const watcher = await failing.connect()
  await watcher.subscribe('el-3')
  for (let i = 1; i <= 8; i++) await write({ status: 'processing', progress: i * 10 })
  const atEight = await direct.dumpBuffer('jobwire:job:el-3')
  await write({ status: 'processing', progress: 90 })
  await write({ status: 'completed', progress: 100 })
  const done = await watcher.next((m) => m.type === 'job_update' && (m.data as JobPayload).status === 'completed')
  const epoch = (done.data as JobPayload).epoch

  // The master goes; the replica that takes over lacked the last two writes.
  proxy.cut()
  await until(() => failing.gateway.broker.state !== 'ready', 'the gateway to notice')
  await replica.kill()
  await replica.restart()
  await replica.client().restore('jobwire:job:el-3', 0, atEight!, 'REPLACE')
  const resyncs = failing.gateway.metricsSnapshot().counters.resyncs_total!
  proxy.open()
  await until(() => failing.gateway.metricsSnapshot().counters.resyncs_total! > resyncs, 'the resync', 15_000)
  const resync = await watcher.next((m) => m.type === 'job_status' && m.reason === 'resync', 10_000)
  t.match(resync.data, { status: 'completed', seq: 10 }, 'the resync shows what was delivered, not the copy that went back')
  const moved = await watcher.next((m) => m.type === 'job_update' && (m.data as JobPayload).epoch !== epoch, 10_000)
  t.match(moved.data, { seq: 8, status: 'processing' }, 'the record goes on as a new epoch')
  t.equal(reverted(shown(watcher.messages, 'el-3')), null)
})

t.test('a gateway that only read the final state (it was not watching when it was written) tells a restored copy too', async (t) => {
  const fresh = await startGateway({ redis: redis.url })
  t.teardown(() => fresh.stop())
  for (let i = 1; i <= 8; i++) await publish('el-4', { status: 'processing', progress: i * 10 })
  const atEight = await admin.dumpBuffer('jobwire:job:el-4')
  await publish('el-4', { status: 'processing', progress: 90 })
  await publish('el-4', { status: 'completed', progress: 100 })
  const c = await fresh.connect()
  const status = await c.subscribe('el-4')
  t.match(status.data, { seq: 10, status: 'completed' }, 'read from the record')
  const epoch = (status.data as JobPayload).epoch
  await admin.restore('jobwire:job:el-4', 0, atEight!, 'REPLACE')
  // seq 9 again: below the seq 10 this gateway read; the record is read again, and it went back.
  t.equal(await publish('el-4', { status: 'processing', progress: 95 }), 9)
  const moved = await c.next((m) => (m.type === 'job_update' || m.type === 'job_status') && (m.data as JobPayload | null)?.epoch !== epoch, 10_000)
  t.match(moved.data, { seq: 9, status: 'processing' }, 'the new history, visibly new')
  t.equal(reverted(shown(c.messages, 'el-4')), null)
})

t.test("a client's since that the record is behind begins a new epoch (the gateway that saw the newer state is gone)", async (t) => {
  for (let i = 1; i <= 8; i++) await publish('el-5', { status: 'processing', progress: i * 10 })
  const atEight = await admin.dumpBuffer('jobwire:job:el-5')
  await publish('el-5', { status: 'processing', progress: 90 })
  await publish('el-5', { status: 'completed', progress: 100 })
  const held = JSON.parse((await admin.hget('jobwire:job:el-5', 'state'))!) as JobPayload
  await admin.restore('jobwire:job:el-5', 0, atEight!, 'REPLACE')
  const fresh = await startGateway({ redis: redis.url })
  t.teardown(() => fresh.stop())
  const c = await fresh.connect()
  c.send({ type: 'subscribe_job', job_id: 'el-5', since: { epoch: held.epoch, seq: held.seq } })
  const status = await c.nextOfType('job_status', 'el-5')
  t.match(status, { relation: 'behind', data: { seq: 8 } }, 'the server is behind the client, and says so')
  const moved = await c.next((m) => m.type === 'job_update' && (m.data as JobPayload).epoch !== held.epoch, 10_000)
  t.match(moved.data, { seq: 8, status: 'processing' }, 'the record begins a new epoch')
  t.not(Number(await admin.hget('jobwire:job:el-5', 'epoch')), held.epoch)
})

t.test("a client's since is a claim: at most one new epoch per job a minute, however often it is sent", async (t) => {
  for (let i = 1; i <= 3; i++) await publish('el-6', { status: 'processing', progress: i * 10 })
  const fresh = await startGateway({ redis: redis.url, 'max-messages-per-sec': '0' })
  t.teardown(() => fresh.stop())
  const watcher = await fresh.connect()
  await watcher.subscribe('el-6')
  const liar = await fresh.connect()
  // A reader that claims, again and again, to hold one seq more than the record (the attack:
  // before the bound, each claim began a new epoch: a write and a frame to every watcher).
  for (let i = 0; i < 40; i++) {
    const record = JSON.parse((await admin.hget('jobwire:job:el-6', 'state'))!) as JobPayload
    liar.send({ type: 'job_status', job_id: 'el-6', since: { epoch: record.epoch, seq: record.seq! + 1 } })
    await liar.nextOfType('job_status', 'el-6')
  }
  await new Promise((resolve) => setTimeout(resolve, 300))
  const counters = fresh.gateway.metricsSnapshot().counters
  t.equal(counters.history_loss_claims_total, 1, 'one claim acted on')
  t.equal(counters.history_losses_total, 0, 'and not counted as a loss the gateway saw')
  t.ok(watcher.all('job_update', 'el-6').length + watcher.all('job_status', 'el-6').length <= 3, 'the watcher got at most the one new epoch, not forty')
})
