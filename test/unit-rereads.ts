// The re-read after a subscribe answered from a record or from nothing is coalesced per job
// and moved on by each subscribe, but not for ever: a watcher that unsubscribes and subscribes
// again faster than the delay used to put off everyone's re-read indefinitely (found in an
// attacker's pass); now it runs at most twice the delay after it was first due.

import t from 'tap'
import { Rereads } from '../src/stream/rereads.js'
import type { WatchedJob } from '../src/stream/watched-jobs.js'

t.test('a re-read moved on by every subscribe still runs within twice its delay', async (t) => {
  const job = { id: 'rr-1', seenCount: 0, reauthorizing: false } as unknown as WatchedJob
  const reads: number[] = []
  const sent: unknown[] = []
  const rereads = new Rereads(
    { get: () => job },
    { read: async () => { reads.push(Date.now()); return { data: { status: 'completed' }, owner: null } } },
    { status: (_job: WatchedJob, data: unknown) => void sent.push(data) },
    100,
  )
  t.teardown(() => rereads.stop())
  const start = Date.now()
  // A subscribe every 20 ms for 600 ms: before the bound, the read never ran meanwhile.
  while (Date.now() - start < 600 && reads.length === 0) {
    rereads.schedule(job, null)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  t.equal(reads.length, 1, 'the read ran while subscribes kept coming')
  t.comment(`ran ${reads[0]! - start} ms after the first subscribe (bound: twice the 100 ms delay)`)
  await new Promise((resolve) => setTimeout(resolve, 20))
  t.same(sent, [{ status: 'completed' }], 'and the newer state went out')
})
