// The Redis broker's state ladder, seen by its listener: connecting -> ready -> down ->
// replaying -> ready, with restored() once per outage and only once Redis has acknowledged the
// replayed subscriptions. A proxy in front of Redis can hold the subscriber's SUBSCRIBEs, so
// the window between "both connections are back" and "the replay is acknowledged" is opened
// on purpose instead of hoped for.

import t, { type Test } from 'tap'
import { createServer, connect, type AddressInfo, type Socket } from 'node:net'
import type { Redis } from 'ioredis'
import type { Broker, BrokerState } from '../src/broker/broker.js'
import { RedisBroker } from '../src/broker/redis.js'
import { createLogger } from '../src/support/log.js'
import { startRedis, type TestRedis } from './fixtures/redis.js'

const names = { channelPrefix: 'progress:', keyPrefix: 'jobwire:', stateTtlSec: 100, terminalTtlSec: 10 }
const log = createLogger((process.env.TEST_LOG as 'debug' | undefined) ?? 'silent')

async function until(condition: () => boolean, what: string, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

interface Recording {
  /** The state at start(), then every state the listener was told. */
  readonly states: BrokerState[]
  /** broker.state at each restored() call. */
  readonly restoredIn: BrokerState[]
  readonly messages: Array<{ channel: string; payload: string }>
  count(channel: string, payload: string): number
}

function record(broker: Broker, onRestored: () => void = () => undefined): Recording {
  const rec: Recording = {
    states: [broker.state],
    restoredIn: [],
    messages: [],
    count: (channel, payload) => rec.messages.filter((m) => m.channel === channel && m.payload === payload).length,
  }
  broker.start({
    message: (channel, payload) => rec.messages.push({ channel: channel.toString(), payload: payload.toString() }),
    state: (state) => rec.states.push(state),
    restored: () => {
      rec.restoredIn.push(broker.state)
      onRestored()
    },
  })
  return rec
}

/** A TCP proxy to Redis. hold() keeps everything a connection sends from its first SUBSCRIBE
 * (or PSUBSCRIBE) on, until release(); cut() drops every connection, as a network blip would. */
interface Proxy {
  readonly url: string
  hold(): void
  release(): void
  cut(): void
  close(): Promise<void>
}

async function startProxy(targetPort: number): Promise<Proxy> {
  interface Link { client: Socket; upstream: Socket; held: Buffer[] | null }
  const links = new Set<Link>()
  let holding = false
  const drop = (link: Link) => {
    links.delete(link)
    link.client.destroy()
    link.upstream.destroy()
  }
  const server = createServer((client) => {
    const link: Link = { client, upstream: connect(targetPort, '127.0.0.1'), held: null }
    links.add(link)
    client.on('data', (chunk: Buffer) => {
      if (link.held === null && holding && /subscribe/i.test(chunk.toString('latin1'))) link.held = []
      if (link.held !== null) link.held.push(chunk)
      else link.upstream.write(chunk)
    })
    link.upstream.on('data', (chunk: Buffer) => client.write(chunk))
    for (const socket of [client, link.upstream]) {
      socket.on('error', () => drop(link))
      socket.on('close', () => drop(link))
    }
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as AddressInfo).port
  const cut = () => {
    for (const link of [...links]) drop(link)
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    hold: () => {
      holding = true
    },
    release: () => {
      holding = false
      for (const link of links) {
        for (const chunk of link.held ?? []) link.upstream.write(chunk)
        link.held = null
      }
    },
    cut,
    close: async () => {
      cut()
      await new Promise((resolve) => server.close(resolve))
    },
  }
}

interface Setup {
  readonly redis: TestRedis
  /** Straight to Redis, never through the proxy. */
  readonly admin: Redis
  readonly broker: RedisBroker
  readonly rec: Recording
}

/** A private Redis, optionally behind a proxy, and a started broker that is ready. From
 * restored() the admin publishes `restored-<n>` on progress:before, a channel the test
 * subscribes before any outage: the replay must be live by then for it to arrive. */
async function setup(t: Test, proxy?: (redis: TestRedis) => Promise<Proxy>): Promise<Setup & { proxy: Proxy | null }> {
  const redis = await startRedis()
  const viaProxy = proxy ? await proxy(redis) : null
  const admin = redis.client()
  const broker = new RedisBroker(viaProxy?.url ?? redis.url, names, log)
  t.teardown(async () => {
    // Released first: a QUIT held by the proxy would keep close() waiting.
    viaProxy?.release()
    await broker.close()
    await viaProxy?.close()
    await redis.stop()
  })
  const rec = record(broker, () => void admin.publish('progress:before', `restored-${rec.restoredIn.length}`))
  await until(() => broker.state === 'ready', 'ready')
  await broker.subscribe(['progress:before'])
  return { redis, admin, broker, rec, proxy: viaProxy }
}

/** Every channel delivers a message exactly once: a marker published after them on the same
 * connection arrives last, so once it is in, anything missing or doubled would show. */
async function deliversOnce(t: Test, { admin, rec }: Setup, channels: readonly string[], tag: string): Promise<void> {
  for (const channel of channels) await admin.publish(channel, tag)
  await admin.publish('progress:before', `${tag}-marker`)
  await until(() => rec.count('progress:before', `${tag}-marker`) === 1, `${tag} marker`)
  for (const channel of channels) t.equal(rec.count(channel, tag), 1, `${channel} delivers once`)
}

t.test('Redis killed and restarted: connecting, ready, down, replaying, ready; restored once, after the replay is acknowledged', async (t) => {
  const s = await setup(t, (redis) => startProxy(redis.port))
  const { redis, admin, broker, rec } = s
  const proxy = s.proxy!
  proxy.hold()
  await redis.kill()
  await until(() => broker.state === 'down', 'down')
  let late = false
  const lateSubscribe = broker.subscribe(['progress:late']).then(() => (late = true))
  await redis.restart()
  await admin.ping()
  await until(() => broker.state === 'replaying', 'replaying (both connections back, the replay held by the proxy)')
  t.same(rec.restoredIn, [], 'not restored while the replayed SUBSCRIBE is unacknowledged')
  t.notOk(late, 'a subscribe made while down waits for the replay')
  t.equal(broker.reconnects, 0)
  // Sent straight away on the subscriber, which is up; the proxy holds it behind the replay.
  const duringSubscribe = broker.subscribe(['progress:during'])

  proxy.release()
  await until(() => rec.restoredIn.length === 1, 'restored')
  await until(() => rec.count('progress:before', 'restored-1') === 1, 'the message published from restored()')
  await lateSubscribe
  await duringSubscribe
  t.same(rec.states, ['connecting', 'ready', 'down', 'replaying', 'ready'])
  t.same(rec.restoredIn, ['ready'], 'restored once, in ready')
  t.equal(broker.reconnects, 1)
  await deliversOnce(t, s, ['progress:before', 'progress:late', 'progress:during'], 'after')
})

t.test('a connection lost while replaying goes back to down; the next recovery replays again, and restored fires once', async (t) => {
  const s = await setup(t, (redis) => startProxy(redis.port))
  const { broker, rec } = s
  const proxy = s.proxy!
  proxy.hold()
  proxy.cut()
  await until(() => rec.states.filter((x) => x === 'replaying').length === 1, 'the first replaying')
  proxy.cut()
  await until(() => rec.states.filter((x) => x === 'replaying').length === 2, 'the second replaying')
  t.same(rec.restoredIn, [], 'not restored: the second replay is still held')
  proxy.release()
  await until(() => rec.restoredIn.length === 1, 'restored')
  await until(() => rec.count('progress:before', 'restored-1') === 1, 'the message published from restored()')
  t.same(rec.states, ['connecting', 'ready', 'down', 'replaying', 'down', 'replaying', 'ready'])
  t.equal(broker.reconnects, 1)
  await deliversOnce(t, s, ['progress:before'], 'after')
})

t.test('outages in a row, many channels: each ends in one restored, after the replay', async (t) => {
  const s = await setup(t)
  const { redis, admin, broker, rec } = s
  // Several SUBSCRIBE batches to replay, all of which must be acknowledged; which connection
  // comes back first varies from run to run (the proxy tests above pin the order down).
  const many = Array.from({ length: 5000 }, (_, i) => `progress:many-${i}`)
  await broker.subscribe(many)
  for (let outage = 1; outage <= 2; outage++) {
    await redis.kill()
    await until(() => broker.state === 'down', `down ${outage}`)
    await redis.restart()
    await admin.ping()
    await until(() => rec.restoredIn.length === outage, `restored ${outage}`)
    await until(() => rec.count('progress:before', `restored-${outage}`) === 1, `the message published from restored() ${outage}`)
    await deliversOnce(t, s, [many[0]!, many.at(-1)!], `after-${outage}`)
  }
  t.match(rec.states.join(','), /^connecting,ready(,down(,replaying)?,ready){2}$/, `states: ${rec.states.join(', ')}`)
  t.same(rec.restoredIn, ['ready', 'ready'])
  t.equal(broker.reconnects, 2)
})

/** Redis's ids for this process's two broker connections (both named jobwire-<pid>). */
async function brokerConnections(t: Test, admin: Redis): Promise<{ subscriber: string; commands: string }> {
  const list = (await admin.call('CLIENT', 'LIST')) as string
  const clients = list.trim().split('\n')
    .map((line) => Object.fromEntries(line.split(' ').map((field) => field.split('=') as [string, string])))
    .filter((c) => c.name === `jobwire-${process.pid}`)
  const subscriber = clients.filter((c) => c.sub !== '0' || c.psub !== '0')
  const commands = clients.filter((c) => c.sub === '0' && c.psub === '0')
  t.equal(subscriber.length, 1, 'one subscriber connection')
  t.equal(commands.length, 1, 'one command connection')
  return { subscriber: subscriber[0]!.id!, commands: commands[0]!.id! }
}

t.test('only the command connection killed: ready again with one restored; the subscriber untouched', async (t) => {
  const s = await setup(t)
  const { admin, broker, rec } = s
  const before = await brokerConnections(t, admin)
  await admin.call('CLIENT', 'KILL', 'ID', before.commands)
  await until(() => rec.restoredIn.length === 1, 'restored')
  await until(() => rec.count('progress:before', 'restored-1') === 1, 'the message published from restored()')
  // Nothing to replay: the subscriber kept its subscriptions.
  t.same(rec.states, ['connecting', 'ready', 'down', 'ready'])
  t.same(rec.restoredIn, ['ready'])
  t.equal(broker.reconnects, 1)
  const after = await brokerConnections(t, admin)
  t.equal(after.subscriber, before.subscriber, 'the subscriber connection was not touched')
  t.not(after.commands, before.commands, 'the command connection is a new one')
  await deliversOnce(t, s, ['progress:before'], 'after')
})

t.test('only the subscriber connection killed: down, replaying, ready; one restored', async (t) => {
  const s = await setup(t)
  const { admin, broker, rec } = s
  const before = await brokerConnections(t, admin)
  await admin.call('CLIENT', 'KILL', 'ID', before.subscriber)
  await until(() => rec.restoredIn.length === 1, 'restored')
  await until(() => rec.count('progress:before', 'restored-1') === 1, 'the message published from restored()')
  // The command connection never left, so the subscriber's return always finds it there.
  t.same(rec.states, ['connecting', 'ready', 'down', 'replaying', 'ready'])
  t.same(rec.restoredIn, ['ready'])
  t.equal(broker.reconnects, 1)
  const after = await brokerConnections(t, admin)
  t.equal(after.commands, before.commands, 'the command connection was not touched')
  await deliversOnce(t, s, ['progress:before'], 'after')
})

t.test('close(): closed, the listener is not told, and a subscribe waiting for a replay is refused', async (t) => {
  const { redis, broker, rec } = await setup(t)
  await redis.kill()
  await until(() => broker.state === 'down', 'down')
  const waiting = broker.subscribe(['progress:never'])
  await broker.close()
  const stillWaiting = new Promise<never>((_, reject) => setTimeout(() => reject(new Error('still waiting')), 5000).unref())
  await t.rejects(Promise.race([waiting, stillWaiting]), /broker closed/)
  await t.rejects(broker.subscribe(['progress:after-close']), /broker closed/)
  t.equal(broker.state, 'closed')
  t.same(rec.states, ['connecting', 'ready', 'down'])
  t.same(rec.restoredIn, [])
})
