// The idle collector: once the process is quiet and V8's heap has grown by the threshold, it
// collects, then compacts in a second collection, and V8 gives the memory back; it does not
// collect again until the heap grows again, and a threshold of 0 turns it off.

import t from 'tap'
import { getHeapSpaceStatistics, getHeapStatistics } from 'node:v8'
import { IdleCollector } from '../src/support/idle-gc.js'
import { createLogger } from '../src/support/log.js'
import { pause, until } from './fixtures/until.js'

const MB = 2 ** 20
const committed = () => getHeapStatistics().total_physical_size
const oldSpace = () => getHeapSpaceStatistics().find((space) => space.space_name === 'old_space')!

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
  // Ten quiet checks without growth: nothing after the compacting follow-up.
  await pause(1000)
  t.equal(freed.length, 2, 'a collection and its compacting follow-up for one burst')
  // Growth that stays (V8 may fit a second burst of garbage into the pages it kept).
  const held = objects(40)
  await until(() => freed.length > 2, 'a collection once the heap grew again')
  t.ok(held.length > 0)
})

t.test('the follow-up gives back the pages the first collection left sparse', async (t) => {
  let collections = 0
  const collector = new IdleCollector({ thresholdMb: 8, log: createLogger('silent'), checkMs: 100, onCollect: () => collections++ })
  t.teardown(() => collector.stop())
  // One object in ten survives the burst, spread over every page the burst filled.
  const survivors: object[] = []
  const all = objects(40)
  for (let i = 0; i < all.length; i += 10) survivors.push(all[i]!)
  all.length = 0
  await until(() => collections >= 2, 'the collection and its follow-up')
  // V8 sweeps and gives pages back concurrently, after the collection itself.
  await pause(500)
  const old = oldSpace()
  // After the first collection alone, about half of it is in use (the test runner's own objects
  // are dense); 0.97 with the follow-up.
  t.ok(old.space_used_size / old.space_size > 0.75,
    `old space ${(old.space_used_size / MB).toFixed(1)} MB in use of ${(old.space_size / MB).toFixed(1)} MB`)
  t.ok(survivors.length > 0)
})

t.test('a threshold of 0 never collects', async (t) => {
  let collected = 0
  const collector = new IdleCollector({ thresholdMb: 0, log: createLogger('silent'), checkMs: 100, onCollect: () => collected++ })
  t.teardown(() => collector.stop())
  burst(40)
  await pause(1000)
  t.equal(collected, 0)
})
