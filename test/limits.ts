// Connection tracking and limits: caps per user and per address (1013 with a retry hint),
// connect rate per address, message rate per socket; node-wide with several workers.

import t, { type Test } from 'tap'
import { startGateway } from './fixtures/gateway.js'
import { freePort } from './fixtures/ports.js'
import { reap, serveProcess } from './fixtures/process.js'
import { startRedis } from './fixtures/redis.js'
import { SECRET, token } from './fixtures/tokens.js'
import { pause, until } from './fixtures/until.js'
import { connect, type TestClient } from './fixtures/ws-client.js'

/** Resolves once the socket has shown which way admission went: refused sockets are told why
 * and closed on open (without reading anything), admitted ones answer a ping. Returns whether
 * it was admitted. */
async function settled(client: TestClient): Promise<boolean> {
  const id = `settle-${Math.random()}`
  if (client.closeCode === undefined) client.send({ type: 'ping', id })
  const answered = () => client.messages.some((m) => m.type === 'pong' && m.id === id)
  await until(() => answered() || client.closeCode !== undefined, 'the socket to be answered or closed')
  return answered()
}

/** A connection refused by a cap: told why with a retry hint, then closed with 1013. */
async function expectCapped(t: Test, client: TestClient, reason: RegExp): Promise<void> {
  const error = await client.nextOfType('error')
  t.match(error, { code: 'rate_limited', message: reason })
  t.ok((error.retry_after_ms as number) >= 1000, 'a retry hint')
  t.equal(await client.closed, 1013)
  t.match(client.closeReason, /^retry-after-ms=\d+$/)
}

t.test('per-user connection cap', async (t) => {
  const gw = await startGateway({ 'jwt-secret': SECRET, 'max-connections-per-user': '2' })
  t.teardown(() => gw.stop())
  const alice = await token('alice')
  const a1 = await gw.connectAs(alice)
  await gw.connectAs(alice)
  await expectCapped(t, await gw.connectAs(alice), /at most 2 connections per user/)
  const bob = await gw.connectAs(await token('bob'))
  bob.send({ type: 'ping' })
  t.match(await bob.nextOfType('pong'), {}, 'other users are not affected')
  await a1.close()
  await until(() => gw.gateway.metricsSnapshot().gauges.connections === 2, "the gateway to count alice's closed socket out")
  const again = await gw.connectAs(alice)
  again.send({ type: 'ping' })
  t.match(await again.nextOfType('pong'), {}, 'a closed connection frees its slot')
  t.equal(gw.gateway.metricsSnapshot().gauges.connections, 3, 'refused sockets are not counted as connections')
  t.same(gw.gateway.metricsSnapshot().labelled.upgrades_rejected_total, { per_user: 1 }, 'counted under its own cause')
})

t.test('per-address connection cap', async (t) => {
  const gw = await startGateway({ 'max-connections-per-ip': '3' })
  t.teardown(() => gw.stop())
  for (let i = 0; i < 3; i++) await gw.connect()
  await expectCapped(t, await gw.connect(), /at most 3 connections per address/)
  const other = await gw.connect(undefined, { localAddress: '127.0.0.2' })
  other.send({ type: 'ping' })
  t.match(await other.nextOfType('pong'), {}, 'another address is not affected')
  t.same(gw.gateway.metricsSnapshot().labelled.upgrades_rejected_total, { per_address: 1 }, 'counted under its own cause')
})

t.test('connection rate per address', async (t) => {
  // One new connection per second: the burst of 2 cannot be refilled while the 4 connect,
  // even on a loaded machine.
  const gw = await startGateway({ 'connect-rate-per-ip': '1' })
  t.teardown(() => gw.stop())
  const clients = await Promise.all(Array.from({ length: 4 }, () => gw.connect()))
  const admitted = await Promise.all(clients.map(settled))
  const refused = clients.filter((c) => c.closeCode === 1013)
  t.equal(admitted.filter(Boolean).length, 2, 'a burst of twice the rate (2) gets in')
  t.equal(refused.length, 2, 'the rest are told to retry')
  t.match(refused[0]!.all('error')[0], { code: 'rate_limited', message: /new connections per second/ })
  t.same(gw.gateway.metricsSnapshot().labelled.upgrades_rejected_total, { connect_rate: 2 }, 'counted under its own cause')
  const other = await gw.connect(undefined, { localAddress: '127.0.0.3' })
  other.send({ type: 'ping' })
  t.match(await other.nextOfType('pong'), {})
})

t.test('message rate per socket: rate_limited, then 1008 for sustained abuse; calm clients unaffected', async (t) => {
  const gw = await startGateway({ 'max-messages-per-sec': '5', 'max-subscriptions': '5' })
  t.teardown(() => gw.stop())
  const calm = await gw.connect()
  await calm.subscribe('calm-1')
  const flood = await gw.connect()
  // The burst and one more in one write: a round trip in between could refill a token (one
  // per 200 ms) on a loaded machine.
  for (let i = 0; i < 15; i++) flood.send({ type: 'ping', id: i })
  flood.send({ type: 'ping', id: 'over' })
  const limited = await flood.nextOfType('error')
  t.same(flood.all('pong').map((m) => m.id), Array.from({ length: 15 }, (_, i) => i), 'the burst (2 x rate + max subscriptions) is allowed')
  t.match(limited, { code: 'rate_limited' })
  t.ok((limited.retry_after_ms as number) > 0)
  t.equal(flood.all('error').length, 1, 'only the one past the burst was refused')
  for (let i = 0; i < 50; i++) flood.send({ type: 'subscribe_job', job_id: `f-${i}` })
  t.equal(await flood.closed, 1008)
  t.match(flood.closeReason, /rate limit exceeded repeatedly/)
  await gw.gateway.broker.publishProgress('calm-1', Buffer.from('{"progress":1}'))
  t.match((await calm.nextOfType('job_update')).data, { progress: 1 })

  const patient = await gw.connect()
  for (let i = 0; i < 16; i++) patient.send({ type: 'ping' })
  await patient.nextOfType('error')
  // The pause itself is the scenario (two tokens' worth at 5/s): load only lengthens it.
  await pause(400)
  patient.send({ type: 'ping', id: 'later' })
  t.match(await patient.next((m) => m.type === 'pong' && m.id === 'later'), {}, 'after a pause it may send again')
})

t.test('with workers, caps hold for the whole node and admin/metrics see every worker', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const port = await freePort()
  const served = serveProcess(['--port', String(port), '--workers', '2', '--redis', redis.url, '--jwt-secret', SECRET,
    '--admin-key', 'admin-key-0123456789abc', '--max-connections-per-user', '4', '--max-connections-per-ip', '0', '--connect-rate-per-ip', '0'])
  t.teardown(() => reap(served))
  await served.waitFor(/jobwire listening/, 20_000)
  const alice = await token('alice')
  const url = `ws://127.0.0.1:${port}/ws/jobs?token=${alice}`
  // Spread over workers: the kernel picks a worker per connection; 8 attempts make it
  // overwhelmingly likely that both workers saw some.
  const clients = await Promise.all(Array.from({ length: 8 }, () => connect(url)))
  const admitted = await Promise.all(clients.map(settled))
  const open = clients.filter((c) => c.closeCode === undefined)
  t.equal(admitted.filter(Boolean).length, 4, 'exactly the cap, node-wide')
  t.equal(open.length, 4, 'the others were closed')
  const list = await fetch(`http://127.0.0.1:${port}/admin/connections?user=alice`, { headers: { authorization: 'Bearer admin-key-0123456789abc' } })
  const body = await list.json() as { connections: number }
  t.equal(body.connections, 4, 'the admin list covers both workers')
  const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()
  t.match(metrics, /^jobwire_workers 2$/m)
  t.match(metrics, /^jobwire_connections 4$/m)
  for (const c of open) await c.close()
  await until(async () => {
    const res = await fetch(`http://127.0.0.1:${port}/admin/connections?user=alice`, { headers: { authorization: 'Bearer admin-key-0123456789abc' } })
    return ((await res.json()) as { connections: number }).connections === 0
  }, "the node to count alice's closed sockets out")
  const again = await connect(url)
  again.send({ type: 'ping' })
  t.match(await again.nextOfType('pong'), {}, 'closes on any worker free node-wide slots')
  await again.close()
  served.kill('SIGTERM')
  t.equal((await served.exited).code, 0)
})
