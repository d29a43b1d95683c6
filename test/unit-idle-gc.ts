// The idle collector: once the process is quiet and V8's heap has grown by the threshold, it
// collects once and V8 gives the memory back; it does not collect again until the heap grows
// again, and a threshold of 0 turns it off.

import t from 'tap'
import { getHeapStatistics } from 'node:v8'
import { IdleCollector } from '../src/support/idle-gc.js'
import { createLogger } from '../src/support/log.js'
import { pause, until } from './fixtures/until.js'

const MB = 2 ** 20
const committed = () => getHeapStatistics().total_physical_size

/** About `mb` MB of objects, garbage once dropped. */
function objects(mb: number): object[] {
  const made: object[] = []
  for (let i = 0; i < mb * 8000; i++) made.push({ i, s: `item ${i}`, a: [i, i] })
  return made
}

/** Grows the heap by about `mb` MB of objects that are garbage once this returns. */
function burst(mb: number): void {
  objects(mb)
}

t.test('collects once after a burst, then waits for the heap to grow again', async (t) => {
  const freed: number[] = []
  const before = committed()
  const collector = new IdleCollector({ thresholdMb: 8, log: createLogger('silent'), checkMs: 100, onCollect: (bytes) => freed.push(bytes) })
  t.teardown(() => collector.stop())
  burst(40)
  const grown = committed()
  t.ok(grown - before >= 8 * MB, `the burst grew the heap past the threshold (${((grown - before) / MB).toFixed(1)} MB)`)
  await until(() => freed.length > 0, 'the idle collection')
  t.ok(committed() < grown, `the heap shrank (${(grown / MB).toFixed(1)} -> ${(committed() / MB).toFixed(1)} MB)`)
  // Ten quiet checks without growth: no second collection.
  await pause(1000)
  t.equal(freed.length, 1, 'one collection for one burst')
  // Growth that stays (V8 may fit a second burst of garbage into the pages it kept).
  const held = objects(40)
  await until(() => freed.length > 1, 'a collection once the heap grew again')
  t.ok(held.length > 0)
})

t.test('a threshold of 0 never collects', async (t) => {
  let collected = 0
  const collector = new IdleCollector({ thresholdMb: 0, log: createLogger('silent'), checkMs: 100, onCollect: () => collected++ })
  t.teardown(() => collector.stop())
  burst(40)
  await pause(1000)
  t.equal(collected, 0)
})
