// A gateway on a real Redis Cluster keeps streaming while the shard of a watched job fails
// over (its master killed, the replica takes over) and while the job's slot migrates to
// another master: the socket gets a fresh job_status (the resync), then the updates again, in
// order, through to the terminal state; the gateway stays ready throughout (one shard's
// trouble must not take a node out of its load balancer); the job's channel is listed by
// PUBSUB SHARDCHANNELS on the master that owns it afterwards.

import t, { type Test } from 'tap'
import { keySlot } from '../src/broker/slots.js'
import { Producer } from '../src/producer/producer.js'
import { clusterGatewayForFile, type TestCluster } from './fixtures/cluster.js'
import type { TestGateway } from './fixtures/gateway.js'
import { until, pause } from './fixtures/until.js'
import type { Message, TestClient } from './fixtures/ws-client.js'

let cluster: TestCluster
let gw: TestGateway
let producer: Producer
clusterGatewayForFile((setup) => ({ cluster, gw, producer } = setup))

/** Retried while the cluster cannot take it (a failover in progress); bounded. A retried call
 * may have run already (its answer lost with the node), which only skips a seq. */
async function retried<T>(send: () => Promise<T>): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await send()
    } catch (err) {
      if (attempt >= 400) throw err
      await pause(50)
    }
  }
}

interface Stream {
  /** Updates the producer script reported so far. */
  readonly sent: () => number
  /** Stops, then sends the terminal updates; resolves to the final seq. */
  finish(): Promise<number>
}

/** A script job and a plain-PUBLISH job reporting every 20 ms until finish(). */
function stream(scriptJob: string, plainJob: string): Stream {
  let sent = 0
  let stopped = false
  const loop = (async () => {
    for (let i = 1; !stopped && i < 100_000; i++) {
      await retried(() => producer.progress(scriptJob, { status: 'processing', progress: Math.min(99, i / 10) }))
      await retried(() => producer.publish(plainJob, { step: i }))
      sent = i
      await pause(20)
    }
  })()
  return {
    sent: () => sent,
    async finish() {
      stopped = true
      await loop
      await retried(() => producer.publish(plainJob, { step: 'done' }))
      return retried(() => producer.progress(scriptJob, { status: 'completed', progress: 100 }))
    },
  }
}

/** What the browser client would hold for the job after these frames: a job_status replaces
 * the state, a job_update of the same epoch only with a higher seq. */
function clientView(frames: readonly Message[]): { seq: number; status?: string } | null {
  let held: { seq: number; epoch: number; status?: string } | null = null
  for (const m of frames) {
    const data = m.data as { seq: number; epoch: number; status?: string } | null
    if (m.type === 'job_status') held = data
    else if (data !== null && (held === null || data.epoch !== held.epoch || data.seq > held.seq)) held = data
  }
  return held
}

/** Between two job_status frames (a resync may repeat what was sent before it), updates
 * arrive in publish order: strictly rising seqs. */
function checkOrder(t: Test, frames: readonly Message[], what: string): void {
  let last = -Infinity
  const backwards: string[] = []
  for (const m of frames) {
    if (m.type === 'job_status') {
      last = -Infinity
      continue
    }
    const seq = (m.data as { seq: number }).seq
    if (seq <= last) backwards.push(`${seq} after ${last}`)
    last = seq
  }
  t.same(backwards, [], `${what}: updates in order`)
}

function framesOf(ws: TestClient, jobId: string): Message[] {
  return ws.messages.filter((m) => (m.type === 'job_status' || m.type === 'job_update') && m.job_id === jobId)
}

/** Polls /readyz while `during` runs; resolves to the answers that were not 200. */
async function readinessDuring(during: () => Promise<void>): Promise<number[]> {
  const notReady: number[] = []
  let done = false
  const poll = (async () => {
    while (!done) {
      const res = await fetch(`${gw.http}/readyz`).catch(() => null)
      if (res?.status !== 200) notReady.push(res?.status ?? 0)
      await pause(100)
    }
  })()
  try {
    await during()
  } finally {
    done = true
    await poll
  }
  return notReady
}

async function shardChannels(port: number): Promise<string[]> {
  return (await cluster.node(port).call('PUBSUB', 'SHARDCHANNELS')) as string[]
}

/** Streams both jobs to a socket across `event`, then checks what the socket got. */
async function streamAcross(t: Test, scriptJob: string, plainJob: string, event: () => Promise<void>): Promise<void> {
  const ws = await gw.connect()
  await ws.subscribe(scriptJob)
  await ws.subscribe(plainJob)
  const updates = (job: string) => ws.all('job_update', job).length
  const jobs = stream(scriptJob, plainJob)
  await until(() => updates(scriptJob) >= 10, 'updates before the event')
  const notReady = await readinessDuring(async () => {
    await event()
    const [scriptAfter, plainAfter] = [updates(scriptJob), updates(plainJob)]
    await until(() => updates(scriptJob) >= scriptAfter + 10 && updates(plainJob) >= plainAfter + 10, 'updates after the event', 30_000)
  })
  t.same(notReady, [], 'the gateway stayed ready')
  const finalSeq = await jobs.finish()
  await until(() => clientView(framesOf(ws, scriptJob))?.seq === finalSeq, 'the terminal state', 30_000)
  t.match(clientView(framesOf(ws, scriptJob)), { seq: finalSeq, status: 'completed' }, 'the socket ends on the terminal state')
  await until(() => ws.all('job_update', plainJob).some((m) => (m.data as { step: unknown }).step === 'done'), 'the last plain message', 30_000)
  checkOrder(t, framesOf(ws, scriptJob), scriptJob)
  const steps = ws.all('job_update', plainJob).map((m) => (m.data as { step: unknown }).step).filter((s) => s !== 'done') as number[]
  const misplaced = steps.flatMap((s, i) => (i > 0 && s <= steps[i - 1]! ? [`${s} after ${steps[i - 1]}`] : []))
  t.same(misplaced, [], `${plainJob}: plain messages in order, none twice`)
  await until(() => ws.all('job_status', scriptJob).length >= 2, 'a job_status after the event (the resync)')
  t.pass('the job was resynchronised')
  // 10 updates seen before the event and 10 after: a failover that loses no time ends at 20.
  t.ok(jobs.sent() >= 20, `the producer kept going (${jobs.sent()} updates)`)
  ws.close()
}

t.test('the master owning a watched job is killed while it streams: its replica takes over, the socket keeps streaming', async (t) => {
  const slot = keySlot('progress:fo-script')
  const killed = await cluster.masterOf(slot)
  await streamAcross(t, 'fo-script', 'fo-plain', async () => {
    await cluster.kill(killed)
    await cluster.waitForOk(slot)
  })
  const now = await cluster.masterOf(slot)
  t.not(now, killed, `a replica took over (master ${now})`)
  t.ok((await shardChannels(now)).includes('progress:fo-script'), 'the new master lists the job in PUBSUB SHARDCHANNELS')
})

t.test('the slot of a watched job migrates to another master while it streams; the socket keeps streaming', async (t) => {
  const slot = keySlot('progress:mi-script')
  const from = await cluster.masterOf(slot)
  const to = (await cluster.masters()).find((port) => port !== from)!
  await streamAcross(t, 'mi-script', 'mi-plain', () => cluster.migrateSlot(slot, to))
  t.equal(await cluster.masterOf(slot), to, 'the slot moved')
  t.ok((await shardChannels(to)).includes('progress:mi-script'), 'the new owner lists the job in PUBSUB SHARDCHANNELS')
  t.notOk((await shardChannels(from)).includes('progress:mi-script'), 'the old owner no longer does')
})
