// SnapshotReader against a fake broker whose reads land only when the test says: which reads
// share one trip to the broker. Watchers of a live job join a read of it already on its way;
// a one-off read never does (it must see what was stored before it was asked for), and
// nobody joins a read that left before the job's channel was live.

import t from 'tap'
import type { Broker, JobRecord } from '../src/broker/broker.js'
import { SnapshotReader, type Snapshot } from '../src/stream/snapshot.js'
import { WatchedJobs } from '../src/stream/watched-jobs.js'
import { createLogger } from '../src/support/log.js'
import { Metrics } from '../src/support/metrics.js'
import { until } from './fixtures/until.js'

interface PendingRead {
  readonly ids: readonly string[]
  land(progress: number): void
}

class FakeBroker {
  reads: PendingRead[] = []
  gate: Promise<void> = Promise.resolve()
  async subscribe(): Promise<void> {
    await this.gate
  }
  async unsubscribe(): Promise<void> {}
  readJobs(ids: readonly string[]): Promise<JobRecord[]> {
    return new Promise((resolve) => {
      this.reads.push({ ids, land: (progress) => resolve(ids.map(() => ({ state: Buffer.from(`{"seq":1,"progress":${progress}}`), owner: null, seen: null }))) })
    })
  }
}

function setup() {
  const broker = new FakeBroker()
  const log = createLogger('silent')
  const watched = new WatchedJobs(broker as unknown as Broker, { mode: 'per-job', channelPrefix: 'p:', unsubscribeDelayMs: 10 }, log)
  const reader = new SnapshotReader(broker as unknown as Broker, watched, new Metrics(), log, 5000, 5000)
  return { broker, watched, reader }
}

/** Queued reads are sent at the end of the turn they were asked in; a watcher's read is asked
 * for a few promise steps after readLive() (once the channel is live), so two turns. */
const turn = () => new Promise((r) => setImmediate(() => setImmediate(r)))
const progressOf = (s: Snapshot) => s.data?.progress

t.test('watchers of a live job join the read on its way; the next one after it lands reads again', async (t) => {
  const { broker, watched, reader } = setup()
  const job = watched.acquire('a')
  await watched.whenLive(job)
  const first = reader.readLive(job)
  await turn()
  t.equal(broker.reads.length, 1, 'the first watcher\'s read left')
  const second = reader.readLive(job)
  await turn()
  t.equal(broker.reads.length, 1, 'a watcher arriving a turn later joined it')
  broker.reads[0]!.land(40)
  t.same([progressOf(await first), progressOf(await second)], [40, 40])
  const third = reader.readLive(job)
  await turn()
  t.equal(broker.reads.length, 2, 'once landed, a new watcher reads again')
  broker.reads[1]!.land(50)
  t.equal(progressOf(await third), 50)
})

t.test('a one-off read does not join a read on its way', async (t) => {
  const { broker, watched, reader } = setup()
  const job = watched.acquire('a')
  await watched.whenLive(job)
  const watcher = reader.readLive(job)
  await turn()
  const oneOff = reader.read('a')
  await turn()
  t.equal(broker.reads.length, 2, 'the one-off read left on its own')
  broker.reads[1]!.land(60)
  broker.reads[0]!.land(50)
  t.equal(progressOf(await oneOff), 60)
  t.equal(progressOf(await watcher), 50)
})

t.test('a read that left before the job\'s channel was live is not joined', async (t) => {
  const { broker, watched, reader } = setup()
  let open!: () => void
  broker.gate = new Promise((r) => (open = r))
  const early = reader.read('b')
  await turn()
  t.equal(broker.reads.length, 1)
  const job = watched.acquire('b')
  const watcher = reader.readLive(job)
  open()
  await watched.whenLive(job)
  await turn()
  t.equal(broker.reads.length, 2, 'the watcher read once the channel was live')
  t.same(broker.reads[1]!.ids, ['b'])
  broker.reads[0]!.land(10)
  broker.reads[1]!.land(20)
  t.equal(progressOf(await early), 10)
  t.equal(progressOf(await watcher), 20, 'the watcher has the read made after its channel went live')
})

t.test('a read that left during an earlier watch of the job, or before an outage, is not joined', async (t) => {
  const { broker, watched, reader } = setup()
  const first = watched.acquire('c')
  await watched.whenLive(first)
  const early = reader.readLive(first)
  await turn()
  watched.release(first)
  // The release takes effect after unsubscribeDelayMs: the next acquire is a new watch.
  await until(() => watched.get('c') === undefined, 'the first watch released')
  const second = watched.acquire('c')
  t.not(second, first, 'a new watch of the job')
  await watched.whenLive(second)
  const late = reader.readLive(second)
  await turn()
  t.equal(broker.reads.length, 2, 'the new watch read for itself')
  watched.markAllDown()
  watched.markAllLive()
  const afterOutage = reader.readLive(second)
  await turn()
  t.equal(broker.reads.length, 3, 'after an outage, a new read')
  broker.reads.forEach((read, i) => read.land(i))
  t.same([progressOf(await early), progressOf(await late), progressOf(await afterOutage)], [0, 1, 2])
})
