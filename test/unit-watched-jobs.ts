// WatchedJobs against a fake broker: reference counting, delayed unsubscribe with re-check,
// batching, and failure handling.

import t from 'tap'
import type { Broker } from '../src/broker/broker.js'
import { createLogger } from '../src/support/log.js'
import { WatchedJobs } from '../src/stream/watched-jobs.js'
import { until } from './fixtures/until.js'

const DELAY = 30

class FakeBroker {
  calls: string[] = []
  failNext = false
  gate: Promise<void> = Promise.resolve()
  async subscribe(channels: readonly string[]) {
    this.calls.push(`sub ${channels.join(',')}`)
    await this.gate
    if (this.failNext) {
      this.failNext = false
      throw new Error('boom')
    }
  }
  async unsubscribe(channels: readonly string[]) {
    this.calls.push(`unsub ${channels.join(',')}`)
  }
}

function setup(delay = DELAY) {
  const broker = new FakeBroker()
  const jobs = new WatchedJobs(broker as unknown as Broker, { mode: 'per-job', channelPrefix: 'p:', unsubscribeDelayMs: delay }, createLogger('silent'))
  return { broker, jobs }
}

/** Whether an UNSUBSCRIBE (alone or batched) has been sent for the channel. */
const unsubscribed = (broker: FakeBroker, channel: string) =>
  broker.calls.some((c) => c.startsWith('unsub ') && c.slice(6).split(',').includes(channel))

/**
 * The positive marker for "no UNSUBSCRIBE": a job acquired and released after the release
 * under test, with the same delay. Timers of one duration fire in the order they were set, so
 * an UNSUBSCRIBE wrongly scheduled earlier is sent no later than the marker's.
 */
async function releaseMarker(broker: FakeBroker, jobs: WatchedJobs): Promise<void> {
  const marker = jobs.acquire('marker')
  await jobs.whenLive(marker)
  jobs.release(marker)
  await until(() => unsubscribed(broker, 'p:marker'), 'the marker job\'s UNSUBSCRIBE')
}

/** Resolves from a 1 ms timer set now: it fires before any timer of the delay set earlier
 * (timers run in expiry order, with promise callbacks between them), however late it runs. */
const withinTheDelay = () => new Promise((r) => setTimeout(r, 1))

t.test('first acquire subscribes once; refs keep it; last release unsubscribes after the delay', async (t) => {
  const { broker, jobs } = setup()
  const a = jobs.acquire('a')
  jobs.acquire('a')
  await jobs.whenLive(a)
  t.same(broker.calls, ['sub p:a'])
  jobs.release(a)
  await releaseMarker(broker, jobs)
  t.same(broker.calls, ['sub p:a', 'sub p:marker', 'unsub p:marker'], 'still one ref: a stays subscribed')
  const released = performance.now()
  jobs.release(a)
  t.equal(jobs.size, 1, 'kept during the delay')
  await until(() => unsubscribed(broker, 'p:a'), 'the UNSUBSCRIBE of a')
  // Timers count whole milliseconds: allow 1 ms of rounding.
  t.ok(performance.now() - released >= DELAY - 1, 'not before the delay')
  t.same(broker.calls, ['sub p:a', 'sub p:marker', 'unsub p:marker', 'unsub p:a'])
  t.equal(jobs.size, 0)
})

t.test('re-acquire within the delay cancels the unsubscribe', async (t) => {
  const { broker, jobs } = setup()
  const a = jobs.acquire('a')
  await jobs.whenLive(a)
  jobs.release(a)
  await withinTheDelay()
  t.equal(jobs.acquire('a'), a, 'the same watched job')
  await releaseMarker(broker, jobs)
  t.same(broker.calls, ['sub p:a', 'sub p:marker', 'unsub p:marker'], 'a was neither unsubscribed nor subscribed again')
  t.equal(jobs.holders(a), 1)
})

t.test('acquires in one turn share one SUBSCRIBE', async (t) => {
  const { broker, jobs } = setup()
  const all = ['a', 'b', 'c'].map((id) => jobs.acquire(id))
  await Promise.all(all.map((j) => jobs.whenLive(j)))
  t.same(broker.calls, ['sub p:a,p:b,p:c'])
})

t.test('a failed SUBSCRIBE rejects the waiters; a later restore marks the job live', async (t) => {
  const { broker, jobs } = setup()
  broker.failNext = true
  const a = jobs.acquire('a')
  await t.rejects(jobs.whenLive(a), /boom/)
  t.equal(jobs.isLive(a), false)
  const waiting = jobs.whenLive(a)
  jobs.markAllLive()
  await waiting
  t.equal(jobs.isLive(a), true)
})

t.test('broker down: jobs are not live until restored', async (t) => {
  const { jobs } = setup()
  const a = jobs.acquire('a')
  await jobs.whenLive(a)
  jobs.markAllDown()
  let resolved = false
  void jobs.whenLive(a).then(() => (resolved = true))
  // Marker: another job subscribed (and made live) after a's waiter was registered.
  const b = jobs.acquire('b')
  await jobs.whenLive(b)
  t.equal(resolved, false, 'a is not live while the broker is down')
  t.equal(jobs.isLive(a), false)
  jobs.markAllLive()
  await until(() => resolved, 'a to be live again')
  t.equal(jobs.isLive(a), true)
})

t.test('a job acquired but not yet subscribed is not marked live by a restore', async (t) => {
  const { broker, jobs } = setup()
  let open!: () => void
  broker.gate = new Promise((r) => (open = r))
  jobs.acquire('early')
  await until(() => broker.calls.length === 1, 'the first SUBSCRIBE to be in flight (gated)')
  t.same(broker.calls, ['sub p:early'])
  const late = jobs.acquire('late') // queued for the next flush
  jobs.markAllLive()
  t.equal(jobs.isLive(late), false, 'its SUBSCRIBE was not part of the replay')
  open()
  await jobs.whenLive(late)
  t.equal(jobs.isLive(late), true)
})

t.test('release without acquire is logged, not fatal', async (t) => {
  const { jobs } = setup()
  const a = jobs.acquire('a')
  jobs.release(a)
  jobs.release(a)
  t.equal(jobs.holders(a), 0)
})


t.test("a frame at a stored read's very seq: the same state is fine, another one is a re-used seq (lost writes)", async (t) => {
  // Found by the property test: Redis restored an older copy, the producer wrote on and re-used
  // the seq a socket had been answered with; the frame went out as if fine and the client,
  // holding that seq already, kept the older state for good.
  const { WatchedJob } = await import('../src/stream/watched-jobs.js')
  const job = new WatchedJob('rs-1', 'p:')
  const read = { seq: 4, epoch: 9, status: 'processing', w: 9 }
  job.noteStored(read)
  t.equal(job.againstRead(9, 4, 'processing', { ...read }), 'fine', 'the state the read found, arriving after it')
  t.equal(job.againstRead(9, 4, 'processing', { seq: 4, epoch: 9, status: 'processing', w: 10 }), 'loss', 'another state under the same (epoch, seq)')
  t.equal(job.againstRead(9, 5, 'processing', { seq: 5, epoch: 9, status: 'processing' }), 'fine', 'the next seq')
  t.equal(job.againstRead(8, 4, 'processing', { seq: 4, epoch: 8 }), 'fine', 'another epoch is not compared')
})
