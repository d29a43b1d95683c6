// Stall detection on jobwire's own jobs (the embedded broker): a processing job that goes
// quiet past its stall time is flagged to its watchers with a job_status, a snapshot of it says
// so too, and its next update clears the flag. Sources' jobs get the same (source-bullmq.ts).

import t from 'tap'
import { startGateway } from './fixtures/gateway.js'
import { pause } from './fixtures/until.js'

const gw = await startGateway()
t.teardown(() => gw.stop())
const progress = (jobId: string, payload: object) => gw.gateway.broker.publishProgress(jobId, Buffer.from(JSON.stringify(payload)))
const stalledStatuses = (c: Awaited<ReturnType<typeof gw.connect>>, jobId: string) =>
  c.all('job_status', jobId).filter((m) => m.stalled === true)

t.test('a payload\'s stall_after: flagged once per silence, in every watcher, cleared by the next update', async (t) => {
  const watchers = await Promise.all(Array.from({ length: 10 }, () => gw.connect()))
  await Promise.all(watchers.map((c) => c.subscribe('st-1')))
  const [c] = watchers
  await progress('st-1', { status: 'processing', progress: 10, stall_after: 0.3 })
  const flagged = await c!.next((m) => m.type === 'job_status' && m.stalled === true, 3000)
  t.match(flagged, { reason: 'stalled', stalled: true, data: { status: 'processing', progress: 10, seq: 1 } }, 'the last state, flagged beside it')
  const late = await gw.connect()
  t.match(await late.subscribe('st-1'), { stalled: true, data: { progress: 10 } }, 'a snapshot while stalled')
  await progress('st-1', { status: 'processing', progress: 20 })
  const next = await c!.next((m) => m.type === 'job_update' && (m.data as { progress: number }).progress === 20)
  t.equal((next.data as { stalled?: boolean }).stalled, undefined, 'the next update carries no flag: cleared')
  await c!.next((m) => m.type === 'job_status' && stalledStatuses(c!, 'st-1').length === 2, 3000)
  t.pass('the job\'s own stall_after is remembered: quiet again, flagged again')
  await progress('st-1', { status: 'completed', progress: 100 })
  await pause(700)
  t.equal(stalledStatuses(c!, 'st-1').length, 2, 'a finished job never stalls')
  for (const w of watchers) t.equal(stalledStatuses(w, 'st-1').length, 2, 'every watcher told the same, by one timer per job')
})

t.test('queued jobs and jobs without a stall time are never flagged', async (t) => {
  const c = await gw.connect()
  await c.subscribe('st-2')
  await c.subscribe('st-3')
  await progress('st-2', { status: 'queued', stall_after: 0.2 })
  await progress('st-3', { status: 'processing', progress: 5 }) // --stall-after is off here
  await pause(600)
  t.equal(stalledStatuses(c, 'st-2').length + stalledStatuses(c, 'st-3').length, 0)
})

t.test('a job already processing when its first watcher arrives starts its clock from its last report', async (t) => {
  const stalling = await startGateway({ 'stall-after': '1' })
  t.teardown(() => stalling.stop())
  const publish = (jobId: string, payload: object) => stalling.gateway.broker.publishProgress(jobId, Buffer.from(JSON.stringify(payload)))
  await publish('st-4', { status: 'processing', progress: 50 })
  await pause(600)
  const started = Date.now()
  const c = await stalling.connect()
  t.match((await c.subscribe('st-4')).data, { progress: 50 })
  await c.next((m) => m.type === 'job_status' && m.stalled === true, 3000)
  t.ok(Date.now() - started < 900, 'flagged about 1 s after the report, not 1 s after the subscribe')
})
