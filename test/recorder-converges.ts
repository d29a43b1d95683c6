// PUBLISH-only jobs converge: two gateways' recorders on one real redis-server. The record of
// a job's latest payload lands even when the gateway holding the job's lease stops watching
// it, when a write fails (the script erroring, Redis paused), and a final state is recorded
// at once. Before, a refused or failed write was dropped until the job's next update, and a
// final state has none.

import t, { type Test } from 'tap'
import type { BrokerListener } from '../src/broker/broker.js'
import { RedisBroker } from '../src/broker/redis.js'
import { Recorder } from '../src/stream/recorder.js'
import { WatchedJob } from '../src/stream/watched-jobs.js'
import { createLogger } from '../src/support/log.js'
import { Metrics } from '../src/support/metrics.js'
import { startRedis, type TestRedis } from './fixtures/redis.js'
import { pause, until } from './fixtures/until.js'

const names = { channelPrefix: 'progress:', keyPrefix: 'jobwire:', stateTtlSec: 100, terminalTtlSec: 10 }
const quiet: BrokerListener = { message() {}, state() {}, restored() {} }

/** One gateway's recorder, as gateway.ts builds it (the default timing), watching `jobs`. */
async function gateway(t: Test, redis: TestRedis) {
  const broker = new RedisBroker(redis.url, names, createLogger('silent'))
  broker.start(quiet)
  await until(() => broker.state === 'ready', 'ready')
  const watching = new Set<string>()
  const recorder = new Recorder(broker, new Metrics(), createLogger('silent'), undefined, (job) => watching.has(job.id))
  t.teardown(async () => {
    recorder.stop()
    await broker.close()
  })
  const jobs = new Map<string, WatchedJob>()
  return {
    watch(id: string) {
      watching.add(id)
      jobs.set(id, new WatchedJob(id, names.channelPrefix))
    },
    unwatch: (id: string) => watching.delete(id),
    /** The channel carried this payload (a plain PUBLISH), as the bridge tells the recorder. */
    saw(id: string, payload: Record<string, unknown>) {
      const job = jobs.get(id)!
      job.see(payload, undefined, undefined)
      recorder.note(job)
    },
  }
}

t.test('the lease holder stops watching: the other gateway\'s record still lands', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const client = redis.client()
  const a = await gateway(t, redis)
  const b = await gateway(t, redis)
  a.watch('rc-1')
  b.watch('rc-1')
  a.saw('rc-1', { status: 'processing', step: 1 })
  await until(async () => (await client.get('jobwire:rec:rc-1')) !== null, 'a holds the lease')
  b.saw('rc-1', { status: 'processing', step: 1 })
  // a stops watching (its last socket left, its channel unsubscribed): the final state
  // reaches b alone, whose write a's lease refuses until it lapses.
  a.unwatch('rc-1')
  b.saw('rc-1', { status: 'completed', step: 2 })
  await until(async () => (await client.hget('jobwire:job:rc-1', 'seen')) === JSON.stringify({ status: 'completed', step: 2 }),
    'the final state recorded by b once a\'s lease lapsed', 20_000)
})

t.test('a write that fails (the script erroring on a key of another type) is tried again until it lands', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const client = redis.client()
  const a = await gateway(t, redis)
  a.watch('rc-2')
  await client.set('jobwire:job:rc-2', 'not a hash') // record-seen.lua fails with WRONGTYPE
  a.saw('rc-2', { status: 'failed', error: 'boom' })
  await pause(300)
  t.equal(await client.get('jobwire:job:rc-2'), 'not a hash', 'the write failed')
  await client.del('jobwire:job:rc-2')
  await until(async () => (await client.hget('jobwire:job:rc-2', 'seen')) === JSON.stringify({ status: 'failed', error: 'boom' }), 'the record lands')
})

// A regression guard rather than a failing case: the old recorder passed it too (the write
// waits in the connection's queue while Redis is stopped).
t.test('Redis paused while a final state is recorded: it lands once Redis answers', async (t) => {
  const redis = await startRedis()
  t.teardown(async () => {
    redis.resume()
    await redis.stop()
  })
  const client = redis.client()
  const a = await gateway(t, redis)
  a.watch('rc-3')
  redis.pause()
  a.saw('rc-3', { status: 'cancelled' })
  await pause(300)
  redis.resume()
  await until(async () => (await client.hget('jobwire:job:rc-3', 'seen')) === JSON.stringify({ status: 'cancelled' }), 'the record lands')
})

// A regression guard as well (the old recorder passed it): a burst is recorded by its latest
// payload, and a final state after it. "At once" is unit-recorder.ts's to show.
t.test('a final state is recorded at once, a burst by its latest payload within the throttle', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const client = redis.client()
  const a = await gateway(t, redis)
  a.watch('rc-4')
  for (let step = 1; step <= 20; step++) a.saw('rc-4', { status: 'processing', step })
  await until(async () => (await client.hget('jobwire:job:rc-4', 'seen')) === JSON.stringify({ status: 'processing', step: 20 }), 'the latest of the burst recorded')
  a.saw('rc-4', { status: 'completed', step: 21 })
  await until(async () => (await client.hget('jobwire:job:rc-4', 'seen')) === JSON.stringify({ status: 'completed', step: 21 }), 'the final state recorded')
})
