// Redis subscriptions follow interest (per-job mode) or are one PSUBSCRIBE (pattern mode).

import t from 'tap'
import type { Redis } from 'ioredis'
import { startGateway } from './fixtures/gateway.js'
import { startRedis } from './fixtures/redis.js'
import { until } from './fixtures/until.js'

/** Long enough that "within the delay" holds under load, short enough to wait out. */
const UNSUBSCRIBE_DELAY_MS = 1000

async function numsub(redis: Redis, channel: string): Promise<number> {
  const reply = (await redis.call('PUBSUB', 'NUMSUB', channel)) as [string, number]
  return Number(reply[1])
}

/** Records the (p)(un)subscribe commands Redis receives. */
async function monitorSubscriptions(redis: Redis): Promise<{ commands: string[]; saw(command: string, channel: string): boolean; stop(): void }> {
  const connection = redis.duplicate()
  connection.on('error', () => undefined)
  const monitor = await connection.monitor()
  monitor.on('error', () => undefined)
  const commands: string[] = []
  monitor.on('monitor', (_time: string, args: string[]) => {
    const name = args[0]!.toLowerCase()
    if (name.endsWith('subscribe')) commands.push(`${name} ${args.slice(1).join(' ')}`)
  })
  return {
    commands,
    /** Whether a command of that name (alone or batched) named the channel. */
    saw: (command, channel) => commands.some((c) => c.split(' ')[0] === command && c.split(' ').includes(channel)),
    stop: () => { monitor.disconnect(); connection.disconnect() },
  }
}

t.test('per-job mode', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const gw = await startGateway({ redis: redis.url, 'unsubscribe-delay-ms': String(UNSUBSCRIBE_DELAY_MS) })
  t.teardown(() => gw.stop())
  const admin = redis.client()

  t.test('the first watcher subscribes the channel, the last one unsubscribes it after the delay', async (t) => {
    const a = await gw.connect()
    const b = await gw.connect()
    await a.subscribe('pj-1')
    t.equal(await numsub(admin, 'progress:pj-1'), 1)
    await b.subscribe('pj-1')
    t.equal(await numsub(admin, 'progress:pj-1'), 1, 'one Redis subscription per node, not per socket')
    await a.close()
    const released = Date.now()
    b.send({ type: 'unsubscribe_job', job_id: 'pj-1' })
    await b.nextOfType('unsubscribed')
    t.equal(await numsub(admin, 'progress:pj-1'), 1, 'still subscribed during the delay')
    await until(async () => (await numsub(admin, 'progress:pj-1')) === 0, 'the channel to be unsubscribed')
    // Timers count whole milliseconds: allow a little rounding.
    t.ok(Date.now() - released >= UNSUBSCRIBE_DELAY_MS - 5, 'unsubscribed after the delay, not before')
  })

  t.test('a quick re-subscribe within the delay does not flap', async (t) => {
    const mon = await monitorSubscriptions(admin)
    t.teardown(() => mon.stop())
    const a = await gw.connect()
    await a.subscribe('pj-2')
    a.send({ type: 'unsubscribe_job', job_id: 'pj-2' })
    await a.nextOfType('unsubscribed')
    await a.subscribe('pj-2')
    // The marker: a job watched and dropped after pj-2 was. Its release timer, of the same
    // delay, was set later, so an UNSUBSCRIBE of pj-2 would reach Redis no later than its own.
    await a.subscribe('pj-2-marker')
    a.send({ type: 'unsubscribe_job', job_id: 'pj-2-marker' })
    await a.nextOfType('unsubscribed', 'pj-2-marker')
    await until(() => mon.saw('unsubscribe', 'progress:pj-2-marker'), "the marker's UNSUBSCRIBE")
    t.equal(await numsub(admin, 'progress:pj-2'), 1)
    t.same(mon.commands.filter((c) => c.split(' ').includes('progress:pj-2')), ['subscribe progress:pj-2'], 'one SUBSCRIBE, no UNSUBSCRIBE')
  })

  t.test('subscribes arriving together share one SUBSCRIBE command', async (t) => {
    const mon = await monitorSubscriptions(admin)
    t.teardown(() => mon.stop())
    const c = await gw.connect()
    for (let i = 0; i < 50; i++) c.send({ type: 'subscribe_job', job_id: `batch-${i}` })
    for (let i = 0; i < 50; i++) await c.nextOfType('job_status', `batch-${i}`)
    // MONITOR is another connection: wait until it has shown every channel subscribed.
    await until(() => Array.from({ length: 50 }, (_, i) => `progress:batch-${i}`).every((ch) => mon.saw('subscribe', ch)), 'MONITOR to show all 50 SUBSCRIBEs')
    const subscribes = mon.commands.filter((cmd) => cmd.includes('batch-'))
    t.ok(subscribes.length <= 3, `${subscribes.length} SUBSCRIBE commands for 50 jobs`)
    t.equal(await numsub(admin, 'progress:batch-49'), 1)
  })

  t.test('a socket that closes unwatches its jobs', async (t) => {
    const gauge = () => gw.gateway.metricsSnapshot().gauges.subscriptions
    const before = gauge()
    const c = await gw.connect()
    await c.subscribe('pj-3')
    t.equal(gauge(), before! + 1)
    await c.close()
    await until(async () => (await numsub(admin, 'progress:pj-3')) === 0, 'pj-3 to be unsubscribed')
    t.equal(await numsub(admin, 'progress:pj-3'), 0)
    t.equal(gauge(), before, 'subscriptions gauge back down')
  })
})

t.test('pattern mode', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const gw = await startGateway({ redis: redis.url, 'subscription-mode': 'pattern' })
  t.teardown(() => gw.stop())
  const admin = redis.client()

  t.equal(Number(await admin.call('PUBSUB', 'NUMPAT')), 1, 'one PSUBSCRIBE for the node')
  const c = await gw.connect()
  await c.subscribe('pt-1')
  t.equal(await numsub(admin, 'progress:pt-1'), 0, 'no per-job SUBSCRIBE')
  await admin.publish('progress:pt-1', '{"progress":3}')
  t.same((await c.nextOfType('job_update', 'pt-1')).data, { progress: 3 })
  await admin.publish('progress:nobody-watches', '{"progress":1}')
  await admin.publish('progress:pt-1', '{"progress":4}')
  await c.nextOfType('job_update', 'pt-1')
  t.equal(gw.gateway.metricsSnapshot().counters.broker_messages_unwatched_total, 1, 'unwatched jobs are skipped early')
})
