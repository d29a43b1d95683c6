// The recorder against a fake broker: it writes each noted job's latest payload, and leaves a
// job alone for a while once another process holds its lease (the broker refused the write).

import t from 'tap'
import type { Broker, SeenPayload } from '../src/broker/broker.js'
import { Recorder } from '../src/stream/recorder.js'
import { WatchedJob } from '../src/stream/watched-jobs.js'
import { createLogger } from '../src/support/log.js'
import { Metrics } from '../src/support/metrics.js'
import { until } from './fixtures/until.js'

class FakeBroker {
  readonly state = 'ready'
  calls: string[][] = []
  refused = new Set<string>()
  async recordSeen(entries: readonly SeenPayload[]): Promise<boolean[]> {
    this.calls.push(entries.map((e) => e.jobId))
    return entries.map((e) => !this.refused.has(e.jobId))
  }
}

function setup(refusedPauseMs: number) {
  const broker = new FakeBroker()
  const recorder = new Recorder(broker as unknown as Broker, new Metrics(), createLogger('silent'), { flushMs: 20, refusedPauseMs })
  const update = (job: WatchedJob, step: number) => {
    job.see({ step }, undefined, undefined)
    recorder.note(job)
  }
  return { broker, recorder, update }
}

t.test('a job whose lease another process holds is left alone for the pause', async (t) => {
  const { broker, recorder, update } = setup(60_000)
  t.teardown(() => recorder.stop())
  const a = new WatchedJob('a', 'p:')
  const b = new WatchedJob('b', 'p:')
  broker.refused.add('a')
  update(a, 1)
  update(b, 1)
  await until(() => broker.calls.length === 1, 'the first write')
  t.same(broker.calls[0], ['a', 'b'], 'both tried')
  for (let step = 2; step <= 4; step++) {
    update(a, step)
    update(b, step)
    await until(() => broker.calls.length === step, `write ${step}`)
  }
  t.same(broker.calls.slice(1), [['b'], ['b'], ['b']], 'only b written, however often a changes')
})

t.test('after the pause the job is tried again, and written on every flush once it is granted', async (t) => {
  const { broker, recorder, update } = setup(100)
  t.teardown(() => recorder.stop())
  const a = new WatchedJob('a', 'p:')
  broker.refused.add('a')
  update(a, 1)
  await until(() => broker.calls.length === 1, 'the refused write')
  broker.refused.delete('a')
  // Noted again and again: skipped while paused, tried once the pause is over.
  await until(() => {
    update(a, 2)
    return broker.calls.length === 2
  }, 'a tried again after the pause')
  update(a, 3)
  await until(() => broker.calls.length === 3, 'the next write, at once')
  t.same(broker.calls, [['a'], ['a'], ['a']])
})
