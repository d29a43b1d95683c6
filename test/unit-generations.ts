// A job's generation changes while its watchers are checked again (generations.ts), against a
// fake uWS app, fake connections and a broker stub whose reads the test controls: nothing
// newer than the job_status is lost, a job_status always follows for those who stay, and an
// owner that cannot be read answers a retryable `unavailable`, never `forbidden`.

import t from 'tap'
import type { TemplatedApp } from 'uWebSockets.js'
import type { Principal } from '../src/access/auth.js'
import type { Connection } from '../src/access/connections.js'
import type { Broker, JobRecord } from '../src/broker/broker.js'
import { createBridge } from '../src/stream/bridge.js'
import { Fanout } from '../src/stream/fanout.js'
import { createReauthorizer } from '../src/stream/generations.js'
import { SnapshotReader } from '../src/stream/snapshot.js'
import { WatchedJobs } from '../src/stream/watched-jobs.js'
import { createLogger } from '../src/support/log.js'
import { Metrics } from '../src/support/metrics.js'
import { until } from './fixtures/until.js'

const principal = (userId: string, extra: Partial<Principal> = {}): Principal => ({ userId, admin: false, producer: false, jobs: [], expiresAt: null, ...extra })

class FakeConnection implements Connection {
  readonly transport = 'websocket' as const
  readonly ip = '127.0.0.1'
  readonly encoding = 'json' as const
  readonly connectedAt = Date.now()
  readonly revoked: string[] = []
  private watching = true
  constructor(readonly id: number, readonly principal: Principal) {}
  subscriptions(): string[] {
    return this.watching ? ['g1'] : []
  }
  watches(jobId: string): boolean {
    return this.watching && jobId === 'g1'
  }
  revoke(_jobId: string, reason: 'forbidden' | 'unavailable' = 'forbidden'): void {
    this.revoked.push(reason)
    this.watching = false
  }
  expire(): void {}
  disconnect(): void {}
  shutdown(): void {}
}

/** The broker's answer to the next read: a record, or an error. Reads wait for `gate`. */
function setup(holdMs = 2000) {
  const frames: Array<{ type: string; data: Record<string, unknown> | null }> = []
  const app = {
    numSubscribers: (topic: string) => (topic === 'j:g1' ? 1 : 0),
    publish: (_topic: string, frame: string | Buffer) => {
      frames.push(JSON.parse(frame.toString()))
      return true
    },
  } as unknown as TemplatedApp
  let answer: () => JobRecord = () => ({ state: null, owner: null, seen: null })
  let gate: Promise<void> = Promise.resolve()
  let reads = 0
  const broker = {
    subscribe: async () => {},
    unsubscribe: async () => {},
    readJobs: async (ids: string[]) => {
      reads++
      await gate
      return ids.map(() => answer())
    },
  } as unknown as Broker
  const log = createLogger('silent')
  const watched = new WatchedJobs(broker, { mode: 'pattern', channelPrefix: 'progress:', unsubscribeDelayMs: 10 }, log)
  const metrics = new Metrics()
  const fanout = new Fanout(app, metrics)
  const snapshots = new SnapshotReader(broker, watched, metrics, log, 1000, holdMs)
  const conns = [new FakeConnection(1, principal('alice')), new FakeConnection(2, principal('root', { admin: true })), new FakeConnection(3, principal('viewer', { jobs: ['g*'] }))]
  const reauthorize = createReauthorizer({ connections: { all: () => conns }, snapshots, fanout, watched, metrics, log, holdMs })
  const bridge = createBridge(watched, fanout, metrics, 'progress:'.length, () => undefined, reauthorize)
  const job = watched.acquire('g1')
  return {
    frames, conns, job,
    send: (payload: object) => bridge(Buffer.from('progress:g1'), Buffer.from(JSON.stringify(payload))),
    answer: (f: () => JobRecord) => (answer = f),
    hold: () => {
      let open!: () => void
      gate = new Promise((resolve) => (open = resolve))
      return open
    },
    reads: () => reads,
  }
}

const stored = (obj: object, owner: string | null = 'alice'): JobRecord => ({ state: Buffer.from(JSON.stringify(obj)), owner, seen: null })

t.test('updates that keep arriving during the check: the job_status, then the newest of them', async (t) => {
  const s = setup()
  s.send({ seq: 5, epoch: 1, status: 'processing', progress: 50 })
  s.frames.length = 0
  const open = s.hold()
  // The read that leaves now answers with the state as it was when the generation began.
  s.answer(() => stored({ seq: 1, epoch: 2, status: 'processing', progress: 1 }))
  s.send({ seq: 1, epoch: 2, status: 'processing', progress: 1 })
  t.ok(s.job.reauthorizing)
  t.equal(s.job.held?.length, Buffer.byteLength(JSON.stringify({ seq: 1, epoch: 2, status: 'processing', progress: 1 })), 'the frame is held, as a copy')
  // A plain PUBLISH (a crash handler's final word) while the watchers are checked.
  s.send({ status: 'failed', error: 'worker died' })
  t.same(s.frames, [], 'nothing of the new generation before the check')
  open()
  await until(() => !s.job.reauthorizing, 'the check')
  t.same(s.frames.map((f) => [f.type, f.data?.status]), [['job_status', 'processing'], ['job_update', 'failed']], 'the held frame follows the job_status')
  t.equal(s.job.held, null, 'nothing held once the check is over')
  t.same(s.conns.map((c) => c.revoked), [[], [], []])
  s.send({ seq: 2, epoch: 2, status: 'failed' })
  t.equal(s.frames.at(-1)?.type, 'job_update', 'frames flow again')
})

t.test('the owner cannot be read: unavailable for those who need it, never forbidden; a job_status for the others', async (t) => {
  const s = setup(300)
  s.send({ seq: 5, epoch: 1, progress: 50 })
  s.frames.length = 0
  s.answer(() => {
    throw new Error('broker down')
  })
  s.send({ seq: 1, epoch: 2, progress: 1 })
  s.send({ seq: 2, epoch: 2, progress: 2 })
  await until(() => !s.job.reauthorizing, 'the check gives up', 5000)
  t.ok(s.reads() > 1, 'the read was retried before giving up')
  t.same(s.conns.map((c) => c.revoked), [['unavailable'], [], []], 'the owner is told unavailable; admin and jobs claim stay')
  t.same(s.frames.map((f) => [f.type, f.data?.seq]), [['job_status', 2]], 'those who stay get the newest state seen')
  s.send({ seq: 3, epoch: 2, progress: 3 })
  t.equal(s.frames.at(-1)?.type, 'job_update', 'frames flow again')
})

t.test('an owner read that fails for a moment drops nobody', async (t) => {
  const s = setup(5000)
  s.send({ seq: 5, epoch: 1, progress: 50 })
  s.frames.length = 0
  let failures = 2
  s.answer(() => {
    if (failures-- > 0) throw new Error('blip')
    return stored({ seq: 1, epoch: 2, progress: 1 }, 'alice')
  })
  s.send({ seq: 1, epoch: 2, progress: 1 })
  await until(() => !s.job.reauthorizing, 'the check')
  t.equal(s.reads(), 3)
  t.same(s.conns.map((c) => c.revoked), [[], [], []], 'nobody revoked')
  t.same(s.frames.map((f) => [f.type, f.data?.seq]), [['job_status', 1]])
})

t.test('a new owner: those who may not see it get forbidden, as before', async (t) => {
  const s = setup()
  s.send({ seq: 5, epoch: 1, progress: 50 })
  s.answer(() => stored({ seq: 1, epoch: 2, progress: 1 }, 'mallory'))
  s.send({ seq: 1, epoch: 2, progress: 1 })
  await until(() => !s.job.reauthorizing, 'the check')
  t.same(s.conns.map((c) => c.revoked), [['forbidden'], [], []])
})

t.test('a generation that changes again during a check: the later check alone decides', async (t) => {
  const s = setup()
  s.send({ seq: 5, epoch: 1, progress: 50 })
  s.frames.length = 0
  const open = s.hold()
  s.answer(() => stored({ seq: 1, epoch: 3, progress: 1 }, 'mallory'))
  s.send({ seq: 1, epoch: 2, progress: 1 })
  await new Promise((resolve) => setImmediate(resolve))
  s.send({ seq: 1, epoch: 3, progress: 1 })
  open()
  await until(() => !s.job.reauthorizing, 'the check')
  t.same(s.conns.map((c) => c.revoked), [['forbidden'], [], []])
  t.same(s.frames.map((f) => [f.type, f.data?.epoch]), [['job_status', 3]], 'one job_status, of the latest generation')
})
