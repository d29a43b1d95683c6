// WatchedJobs against a fake broker: reference counting, delayed unsubscribe with re-check,
// batching, and failure handling.

import t from 'tap'
import type { Broker } from '../src/broker/broker.js'
import { createLogger } from '../src/support/log.js'
import { WatchedJobs } from '../src/stream/watched-jobs.js'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

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

function setup(delay = 30) {
  const broker = new FakeBroker()
  const jobs = new WatchedJobs(broker as unknown as Broker, { mode: 'per-job', channelPrefix: 'p:', unsubscribeDelayMs: delay }, createLogger('silent'))
  return { broker, jobs }
}

t.test('first acquire subscribes once; refs keep it; last release unsubscribes after the delay', async (t) => {
  const { broker, jobs } = setup()
  const a = jobs.acquire('a')
  jobs.acquire('a')
  await jobs.whenLive(a)
  t.same(broker.calls, ['sub p:a'])
  jobs.release(a)
  await sleep(60)
  t.same(broker.calls, ['sub p:a'], 'still one ref')
  jobs.release(a)
  t.equal(jobs.size, 1, 'kept during the delay')
  await sleep(60)
  t.same(broker.calls, ['sub p:a', 'unsub p:a'])
  t.equal(jobs.size, 0)
})

t.test('re-acquire within the delay cancels the unsubscribe', async (t) => {
  const { broker, jobs } = setup()
  const a = jobs.acquire('a')
  await jobs.whenLive(a)
  jobs.release(a)
  await sleep(10)
  t.equal(jobs.acquire('a'), a, 'the same watched job')
  await sleep(60)
  t.same(broker.calls, ['sub p:a'])
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
  await sleep(10)
  t.equal(resolved, false)
  jobs.markAllLive()
  await sleep(0)
  t.equal(resolved, true)
})

t.test('a job acquired but not yet subscribed is not marked live by a restore', async (t) => {
  const { broker, jobs } = setup()
  let open!: () => void
  broker.gate = new Promise((r) => (open = r))
  jobs.acquire('early')
  await sleep(5) // first SUBSCRIBE in flight, gated
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

