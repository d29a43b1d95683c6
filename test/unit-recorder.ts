// The recorder against a fake broker: it writes each noted job's latest payload at the
// trailing edge of its throttle, a final one at once; a write refused by another process's
// lease or that failed is kept (the latest payload only) and tried again until it lands or the
// job is no longer watched; a final plain PUBLISH on a job with a stored state goes through
// the producer script with if_seq; a non-final one is counted, not stored.

import t from 'tap'
import type { Broker, JobRecord, ProgressOptions, SeenOutcome, SeenPayload } from '../src/broker/broker.js'
import { SeqMismatch } from '../src/producer/merge.js'
import { Recorder } from '../src/stream/recorder.js'
import { WatchedJob } from '../src/stream/watched-jobs.js'
import { createLogger } from '../src/support/log.js'
import { Metrics } from '../src/support/metrics.js'
import { pause, until } from './fixtures/until.js'

class FakeBroker {
  readonly state = 'ready'
  calls: SeenPayload[][] = []
  outcome = new Map<string, SeenOutcome | 'fail'>()
  stored = new Map<string, string>()
  writes: Array<{ jobId: string; payload: string; options: ProgressOptions | undefined }> = []
  async recordSeen(entries: readonly SeenPayload[]): Promise<SeenOutcome[]> {
    this.calls.push([...entries])
    if (entries.some((e) => this.outcome.get(e.jobId) === 'fail')) throw new Error('connection lost')
    return entries.map((e) => (this.outcome.get(e.jobId) ?? 'written') as SeenOutcome)
  }
  async readJobs(ids: readonly string[]): Promise<JobRecord[]> {
    return ids.map((id) => ({ state: this.stored.has(id) ? Buffer.from(this.stored.get(id)!) : null, owner: null, seen: null }))
  }
  async publishProgress(jobId: string, payload: Buffer, options?: ProgressOptions): Promise<number> {
    const state = JSON.parse(this.stored.get(jobId)!) as { seq: number; epoch: number }
    if (options?.ifSeq !== undefined && options.ifSeq !== state.seq) throw new SeqMismatch(`if_seq ${options.ifSeq} does not match the job's seq ${state.seq}`)
    this.writes.push({ jobId, payload: payload.toString(), options })
    this.stored.set(jobId, JSON.stringify({ ...state, ...JSON.parse(payload.toString()), seq: state.seq + 1 }))
    return state.seq + 1
  }
}

function setup(flushMs = 20, retryMaxMs = 40) {
  const broker = new FakeBroker()
  const unwatched = new Set<WatchedJob>()
  const metrics = new Metrics()
  const recorder = new Recorder(broker as unknown as Broker, metrics, createLogger('silent'), { flushMs, retryMaxMs }, (job) => !unwatched.has(job))
  const update = (job: WatchedJob, payload: Record<string, unknown>) => {
    job.see(payload, undefined, undefined)
    recorder.note(job)
  }
  const written = (jobId: string) => broker.calls.flat().filter((e) => e.jobId === jobId).map((e) => JSON.parse(e.json) as Record<string, unknown>)
  return { broker, recorder, update, unwatched, metrics, written }
}

t.test('a burst is written once, its latest payload, at the trailing edge', async (t) => {
  const { broker, recorder, update, written } = setup()
  t.teardown(() => recorder.stop())
  const a = new WatchedJob('a', 'p:')
  for (let step = 1; step <= 10; step++) update(a, { step })
  await until(() => broker.calls.length === 1, 'the write')
  await pause(60)
  t.same(written('a'), [{ step: 10 }], 'one write, the latest')
})

t.test('a final state is written at once, not at the next flush', async (t) => {
  const { broker, recorder, update, written } = setup(60_000)
  t.teardown(() => recorder.stop())
  const a = new WatchedJob('a', 'p:')
  update(a, { status: 'processing', step: 1 })
  update(a, { status: 'failed' })
  await until(() => broker.calls.length === 1, 'the final state written without waiting a minute')
  t.same(written('a'), [{ status: 'failed' }])
})

t.test('a write refused by another process is kept, the latest only, and tried until it lands', async (t) => {
  const { broker, recorder, update, written } = setup()
  t.teardown(() => recorder.stop())
  const a = new WatchedJob('a', 'p:')
  broker.outcome.set('a', 'refused')
  update(a, { step: 1 })
  await until(() => broker.calls.length >= 2, 'tried again without a new update')
  update(a, { step: 2 })
  await until(() => written('a').some((p) => p.step === 2), 'the newer payload tried')
  broker.outcome.delete('a') // the holder's lease lapsed
  const before = broker.calls.length
  await until(() => broker.calls.length > before, 'tried once more')
  await pause(150)
  const after = written('a')
  t.same(after.at(-1), { step: 2 }, 'the latest payload lands')
  t.equal(after.filter((p) => p.step === 1).length <= 2, true, 'the older one is not tried once the newer is known')
  const settled = broker.calls.length
  await pause(150)
  t.equal(broker.calls.length, settled, 'and nothing more once written')
})

t.test('a failed write (Redis unreachable, the script failing) is kept and tried until it lands', async (t) => {
  const { broker, recorder, update, written } = setup()
  t.teardown(() => recorder.stop())
  const a = new WatchedJob('a', 'p:')
  broker.outcome.set('a', 'fail')
  update(a, { status: 'completed', result: 1 })
  await until(() => broker.calls.length >= 3, 'tried again and again')
  broker.outcome.delete('a')
  const before = broker.calls.length
  await until(() => broker.calls.length > before, 'the write after recovery')
  t.same(written('a').at(-1), { status: 'completed', result: 1 })
})

t.test('a job no longer watched is let go', async (t) => {
  const { broker, recorder, update, unwatched } = setup()
  t.teardown(() => recorder.stop())
  const a = new WatchedJob('a', 'p:')
  broker.outcome.set('a', 'refused')
  update(a, { step: 1 })
  await until(() => broker.calls.length >= 1, 'the first try')
  unwatched.add(a)
  await pause(200)
  const calls = broker.calls.length
  await pause(200)
  t.equal(broker.calls.length, calls, 'no more tries')
})

t.test('a final plain PUBLISH on a job with a stored state: stored through the script, with if_seq', async (t) => {
  const { broker, recorder, update, metrics } = setup()
  t.teardown(() => recorder.stop())
  const a = new WatchedJob('a', 'p:')
  a.generation = 7 // known from a stored state
  broker.stored.set('a', JSON.stringify({ seq: 3, epoch: 7, status: 'processing', progress: 90 }))
  update(a, { progress: 91 })
  t.equal(metrics.unsequencedPayloads, 1, 'a non-final one is counted')
  update(a, { status: 'failed' })
  await until(() => broker.writes.length === 1, 'the final state stored')
  t.same(broker.writes[0], { jobId: 'a', payload: '{"status":"failed"}', options: { ifSeq: 3 } })
  update(a, { status: 'failed' }) // the same again (another PUBLISH of it): already there
  await pause(100)
  t.equal(broker.writes.length, 1, 'nothing more to store')
  t.equal(broker.calls.length, 0, 'no seen record for a job with a stored state')
  t.equal(metrics.finalsRecorded, 1)
})

t.test('the seq moved under it: read again; already final there means done', async (t) => {
  const { broker, recorder, update } = setup()
  t.teardown(() => recorder.stop())
  const a = new WatchedJob('a', 'p:')
  a.generation = 7
  broker.stored.set('a', JSON.stringify({ seq: 3, epoch: 7, status: 'processing' }))
  const read = broker.readJobs.bind(broker)
  let reads = 0
  // Another gateway stores the same final state between this one's read and its write.
  broker.readJobs = async (ids) => {
    const records = await read(ids)
    if (reads++ === 0) broker.stored.set('a', JSON.stringify({ seq: 4, epoch: 7, status: 'cancelled' }))
    return records
  }
  update(a, { status: 'cancelled' })
  await until(() => reads === 2, 'read again')
  await pause(50)
  t.equal(broker.writes.length, 0, 'not applied twice')
})

t.test('another gateway records each payload (the lease holder): this one backs off, it does not write every flush', async (t) => {
  const { broker, recorder, update } = setup(20, 160)
  t.teardown(() => recorder.stop())
  const a = new WatchedJob('a', 'p:')
  broker.outcome.set('a', 'recorded')
  for (let step = 1; step <= 40; step++) {
    update(a, { step })
    await pause(20)
  }
  // 40 flushes' worth of updates; backing off 20, 40, 80, 160, 160... ms makes it a handful.
  t.ok(broker.calls.length <= 12, `${broker.calls.length} tries for 40 updates`)
  t.ok(broker.calls.length >= 2, 'but it does try')
})

t.test('a final plain PUBLISH seen before the job had a stored state is not stored over a generation begun since', async (t) => {
  // Found by the property test: plain "failed", then a producer's restart, then the recorder's
  // write came back "stored" and the old final was merged into the new generation.
  const { broker, recorder, update, metrics } = setup()
  t.teardown(() => recorder.stop())
  const a = new WatchedJob('a', 'p:')
  broker.outcome.set('a', 'stored') // a producer began the job meanwhile
  broker.stored.set('a', JSON.stringify({ seq: 1, epoch: 9, status: 'processing' }))
  update(a, { status: 'failed' })
  await until(() => broker.calls.length >= 1, 'the record tried')
  await pause(100)
  t.equal(broker.writes.length, 0, 'the new generation is left alone')
  t.equal(metrics.unsequencedPayloads, 1, 'counted as a payload without seq beside the script')
})
