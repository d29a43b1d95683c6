// The Redis Cluster broker as its listener sees it. One shard's failover, or one slot's
// migration, restores only that shard's channels (channelsRestored, with dataLost after a
// failover only) while the broker stays ready; a subscribe made while a shard is away resolves
// once it is back; every message arrives once; the whole cluster out of reach is an outage as
// with a single Redis: down, then ready and restored() once.

import t, { type Test } from 'tap'
import type { BrokerState } from '../src/broker/broker.js'
import { ClusterBroker } from '../src/broker/cluster.js'
import { parseClusterSeeds } from '../src/broker/cluster-seeds.js'
import { keySlot } from '../src/broker/slots.js'
import { createLogger } from '../src/support/log.js'
import { startCluster, type TestCluster } from './fixtures/cluster.js'
import { until } from './fixtures/until.js'

const names = { channelPrefix: 'progress:', keyPrefix: 'jobwire:', stateTtlSec: 100, terminalTtlSec: 10 }
const log = createLogger((process.env.TEST_LOG as 'debug' | undefined) ?? 'silent')

let cluster: TestCluster
let broker: ClusterBroker
const states: BrokerState[] = []
const restored: boolean[] = []
const channelsRestored: Array<{ channels: string[]; dataLost: boolean }> = []
const messages: Array<{ channel: string; payload: string }> = []
/** One job id per master at the start, by master port. */
const jobOn = new Map<number, string[]>()

t.before(async () => {
  cluster = await startCluster()
  broker = new ClusterBroker(parseClusterSeeds(cluster.seeds), names, log)
  states.push(broker.state)
  broker.start({
    message: (channel, payload) => messages.push({ channel: channel.toString(), payload: payload.toString() }),
    state: (state) => states.push(state),
    restored: (dataLost) => restored.push(dataLost),
    channelsRestored: (channels, dataLost) => channelsRestored.push({ channels: [...channels].sort(), dataLost }),
  })
  await until(() => broker.state === 'ready', 'ready')
  const slots = await cluster.slots()
  for (let i = 0; [...jobOn.values()].reduce((n, ids) => n + ids.length, 0) < 6 && i < 10_000; i++) {
    const slot = keySlot(`progress:cb-${i}`)
    const master = slots.find(([from, to]) => slot >= from && slot <= to)![2]
    const ids = jobOn.get(master) ?? []
    if (ids.length < 2) jobOn.set(master, [...ids, `cb-${i}`])
  }
})
t.teardown(async () => {
  await broker?.close()
  await cluster?.stop()
})

const count = (channel: string, payload: string) => messages.filter((m) => m.channel === channel && m.payload === payload).length

/** Each job's script update and a plain PUBLISH (sent to one node, as a seed worker does)
 * arrive exactly once: a marker sent after them on both paths arrives last. */
async function deliversOnce(t: Test, jobs: readonly string[], tag: string): Promise<void> {
  const plain = cluster.node((await cluster.masters())[0]!)
  for (const job of jobs) {
    await broker.publishProgress(job, Buffer.from(JSON.stringify({ message: tag })))
    await plain.publish(`progress:${job}`, `plain-${tag}`)
  }
  await broker.publishProgress(jobs[0]!, Buffer.from(JSON.stringify({ message: `${tag}-marker` })))
  await plain.publish(`progress:${jobs[0]}`, `plain-${tag}-marker`)
  await until(() => messages.some((m) => m.payload.includes(`"${tag}-marker"`)) && count(`progress:${jobs[0]}`, `plain-${tag}-marker`) === 1, `${tag} markers`)
  for (const job of jobs) {
    t.equal(messages.filter((m) => m.channel === `progress:${job}` && m.payload.includes(`"message":"${tag}"`)).length, 1, `${job}: the script's update once`)
    t.equal(count(`progress:${job}`, `plain-${tag}`), 1, `${job}: the plain PUBLISH once`)
  }
}

t.test('every channel delivers once, through sharded pub/sub on its master and a classic subscription', async (t) => {
  const jobs = [...jobOn.values()].map((ids) => ids[0]!)
  await broker.subscribe(jobs.map((j) => `progress:${j}`))
  await deliversOnce(t, jobs, 'start')
  for (const [port, ids] of jobOn) {
    const [, subscribers] = (await cluster.node(port).call('PUBSUB', 'SHARDNUMSUB', `progress:${ids[0]}`)) as [string, number]
    t.equal(subscribers, 1, `${ids[0]}: SSUBSCRIBEd on its master ${port}`)
  }
})

/** The node holding the broker's classic subscriptions (the one connection for plain PUBLISH). */
async function classicNode(channel: string): Promise<number> {
  for (const port of cluster.livePorts()) {
    const [, subscribers] = (await cluster.node(port).call('PUBSUB', 'NUMSUB', channel)) as [string, number]
    if (Number(subscribers) > 0) return port
  }
  throw new Error(`nobody holds a classic subscription to ${channel}`)
}

t.test("a shard's failover restores only its channels, with dataLost, while the broker stays ready", async (t) => {
  const classic = await classicNode(`progress:${[...jobOn.values()][0]![0]}`)
  // A master other than the classic subscriber's node: only its shard is touched.
  const [killed, [job, late]] = [...jobOn].find(([port]) => port !== classic)! as [number, string[]]
  const others = [...jobOn].filter(([port]) => port !== killed).map(([, ids]) => ids[0]!)
  const before = channelsRestored.length
  await cluster.kill(killed)
  let lateDone = false
  const lateSubscribe = broker.subscribe([`progress:${late}`]).then(() => (lateDone = true))
  await until(() => channelsRestored.length > before, 'channelsRestored', 60_000)
  t.same(channelsRestored.slice(before), [{ channels: [`progress:${job}`], dataLost: true }], "only the failed shard's channel, whose new master may lack the last writes")
  t.same(states, ['connecting', 'ready'], 'never down: the other shards kept working')
  t.same(restored, [], 'no whole-broker restore')
  await lateSubscribe
  t.ok(lateDone, 'a subscribe made while the shard was away resolved once it was back')
  await cluster.waitForOk(keySlot(`progress:${job}`))
  await deliversOnce(t, [job!, late!, ...others], 'after-failover')
  // Back as a replica of the master that took over.
  await cluster.restart(killed)
  await cluster.waitForOk()
  await cluster.waitForReplicas()
})

t.test("the classic subscriber's node lost: every channel restored, dataLost only where a master went", async (t) => {
  const subscribed = [...jobOn.values()].flat()
  await broker.subscribe(subscribed.map((job) => `progress:${job}`))
  const killed = await classicNode(`progress:${subscribed[0]}`)
  const killedMaster = (await cluster.masters()).includes(killed)
  const slots = await cluster.slots()
  const onKilled = (job: string) => {
    const slot = keySlot(`progress:${job}`)
    return slots.find(([from, to]) => slot >= from && slot <= to)![2] === killed
  }
  const before = channelsRestored.length
  await cluster.kill(killed)
  const restoredSince = () => channelsRestored.slice(before).flatMap((r) => r.channels.map((channel) => ({ channel, dataLost: r.dataLost })))
  await until(() => subscribed.every((job) => restoredSince().some((r) => r.channel === `progress:${job}` && r.dataLost === onKilled(job))), 'every channel restored', 60_000)
  t.pass(`every channel restored (the classic node was ${killedMaster ? 'a master' : 'a replica'})`)
  t.same(states, ['connecting', 'ready'], 'never down')
  for (const job of subscribed) await cluster.waitForOk(keySlot(`progress:${job}`))
  await deliversOnce(t, subscribed, 'after-classic')
  await cluster.restart(killed)
  await cluster.waitForOk()
  await cluster.waitForReplicas()
})

t.test('a migrated slot restores only its channel, without dataLost', async (t) => {
  const job = [...jobOn.values()][1]![0]!
  const slot = keySlot(`progress:${job}`)
  const from = await cluster.masterOf(slot)
  const to = (await cluster.masters()).find((port) => port !== from)!
  const before = channelsRestored.length
  await cluster.migrateSlot(slot, to)
  await until(() => channelsRestored.length === before + 1, 'channelsRestored after the migration', 30_000)
  t.same(channelsRestored.at(-1), { channels: [`progress:${job}`], dataLost: false }, 'moved by a live server: nothing lost')
  t.same(states, ['connecting', 'ready'])
  await deliversOnce(t, [job], 'after-migration')
  const [, subscribers] = (await cluster.node(to).call('PUBSUB', 'SHARDNUMSUB', `progress:${job}`)) as [string, number]
  t.equal(subscribers, 1, 'SSUBSCRIBEd on the new master')
})

t.test('unsubscribe drops both subscriptions of a channel', async (t) => {
  const job = [...jobOn.values()][2]![0]!
  const channel = `progress:${job}`
  const master = await cluster.masterOf(keySlot(channel))
  await broker.unsubscribe([channel])
  const [, sharded] = (await cluster.node(master).call('PUBSUB', 'SHARDNUMSUB', channel)) as [string, number]
  t.equal(sharded, 0, 'no SSUBSCRIBE left')
  let classic = 0
  for (const port of cluster.livePorts()) {
    const [, subscribers] = (await cluster.node(port).call('PUBSUB', 'NUMSUB', channel)) as [string, number]
    classic += Number(subscribers)
  }
  t.equal(classic, 0, 'no classic SUBSCRIBE left on any node')
  await broker.subscribe([channel])
})

t.test('the whole cluster out of reach: down, then ready and restored once, with dataLost (empty restarts)', async (t) => {
  const jobs = [...jobOn.values()].map((ids) => ids[0]!)
  for (const port of cluster.ports) await cluster.kill(port)
  await until(() => broker.state === 'down', 'down', 30_000)
  for (const port of cluster.ports) await cluster.restart(port)
  await cluster.waitForOk()
  await until(() => restored.length === 1, 'restored', 60_000)
  t.same(restored, [true], 'restored once, with dataLost: every server is another process, empty')
  t.match(states.join(','), /^connecting,ready,down(,replaying)?(,down(,replaying)?)*,ready$/, `states: ${states.join(', ')}`)
  t.equal(broker.state, 'ready')
  await deliversOnce(t, jobs, 'after-restart')
})
