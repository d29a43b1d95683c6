// The job_status envelope (issue 19, item 8): every job_status says why it was sent; what the
// gateway adds (stalled) travels beside the producer's data, never inside it; requests may
// carry an id that their replies and errors echo; `since` gets a `relation`; and a forbidden
// is one retryable answer for a job without a state and for someone else's job.

import t from 'tap'
import { startGateway } from './fixtures/gateway.js'
import { SECRET, token } from './fixtures/tokens.js'
import type { Message } from './fixtures/ws-client.js'

const gw = await startGateway()
t.teardown(() => gw.stop())
const progress = (jobId: string, payload: object) => gw.gateway.broker.publishProgress(jobId, Buffer.from(JSON.stringify(payload)))

t.test('subscribe and one-off requests: reason, echoed id, relation to since', async (t) => {
  const c = await gw.connect()
  await progress('env-1', { status: 'processing', progress: 10 })
  await progress('env-1', { status: 'processing', progress: 20 })
  c.send({ type: 'subscribe_job', job_id: 'env-1', id: 'sub-1' })
  const subscribed = await c.nextOfType('job_status', 'env-1')
  t.match(subscribed, { reason: 'subscribed', id: 'sub-1', data: { seq: 2 } })
  t.notOk('relation' in subscribed, 'no since, no relation')
  const epoch = (subscribed.data as { epoch: number }).epoch
  t.ok(Number.isSafeInteger(epoch), 'the epoch is an integer')

  c.send({ type: 'job_status', job_id: 'env-1', id: 7 })
  t.match(await c.nextOfType('job_status', 'env-1'), { reason: 'requested', id: 7 })

  const relation = async (since: object | undefined): Promise<unknown> => {
    c.send({ type: 'job_status', job_id: 'env-1', ...(since ? { since } : {}) })
    return (await c.nextOfType('job_status', 'env-1')).relation
  }
  t.equal(await relation({ epoch, seq: 1 }), 'newer')
  t.equal(await relation({ epoch, seq: 2 }), 'same')
  t.equal(await relation({ epoch: epoch + 1, seq: 2 }), 'new_epoch', 'another epoch, whatever its size')
  t.equal(await relation({ epoch: epoch - 1, seq: 2 }), 'new_epoch', 'a smaller one too: equality only')
  c.send({ type: 'job_status', job_id: 'env-none', since: { epoch, seq: 3 } })
  t.match(await c.nextOfType('job_status', 'env-none'), { data: null, relation: 'none' })

  // A repeated subscribe answers with a fresh job_status of its own.
  c.send({ type: 'subscribe_job', job_id: 'env-1', id: 'again', since: { epoch, seq: 2 } })
  t.match(await c.nextOfType('job_status', 'env-1'), { id: 'again', relation: 'same' })

  // A client that saw seq 5 of this epoch: the server is behind it. The record lost writes, so
  // it begins a new epoch (protocol.md, "State model", lost writes).
  t.equal(await relation({ epoch, seq: 5 }), 'behind')
  t.match(await c.next((m) => m.type === 'job_update' && (m.data as { epoch: number }).epoch !== epoch), { data: { seq: 2, progress: 20 } })

  c.send({ type: 'unsubscribe_job', job_id: 'env-1', id: 'bye' })
  t.match(await c.nextOfType('unsubscribed', 'env-1'), { id: 'bye' })
})

t.test('ids and since are validated, with clear errors that echo a valid id', async (t) => {
  const c = await gw.connect()
  c.send({ type: 'subscribe_job', job_id: 'env-2', id: 'x'.repeat(65) })
  t.match(await c.nextOfType('error'), { code: 'bad_message', message: /'id' must be a string of at most 64 characters or a safe integer/ })
  c.send({ type: 'subscribe_job', job_id: 'env-2', id: 1.5 })
  t.match(await c.nextOfType('error'), { code: 'bad_message', message: /'id'/ })
  c.send({ type: 'subscribe_job', job_id: 'env-2', id: 'ok', since: { epoch: 1 } })
  t.match(await c.nextOfType('error'), { code: 'bad_message', id: 'ok', message: /'since' must be \{epoch, seq\}/ })
  c.send({ type: 'job_status', job_id: 'env-2', id: 3, since: { epoch: 1.5, seq: 1 } })
  t.match(await c.nextOfType('error'), { code: 'bad_message', id: 3 })
  c.send({ type: 'subscribe_job', job_id: 'bad id!', id: 'b' })
  t.match(await c.nextOfType('error'), { code: 'bad_job_id', id: 'b' })
  c.send({ type: 'nonsense', id: 'n' })
  t.match(await c.nextOfType('error'), { code: 'bad_message', id: 'n' })
  c.send({ type: 'subscribe_job', job_id: 'env-2', id: 'x'.repeat(64) })
  t.match(await c.nextOfType('job_status', 'env-2'), { id: 'x'.repeat(64), reason: 'subscribed' })
})

t.test('stalled travels beside data, never inside it', async (t) => {
  const c = await gw.connect()
  await c.subscribe('env-3')
  await progress('env-3', { status: 'processing', progress: 10, stall_after: 0.3 })
  const flagged = await c.next((m) => m.type === 'job_status' && m.reason === 'stalled', 5000)
  t.equal(flagged.stalled, true, 'the envelope says stalled')
  t.match(flagged.data, { status: 'processing', progress: 10, seq: 1 })
  t.notOk('stalled' in (flagged.data as object), 'the producer\'s data is untouched')
  const late = await gw.connect()
  const snapshot = await late.subscribe('env-3')
  t.match(snapshot, { reason: 'subscribed', stalled: true })
  t.notOk('stalled' in (snapshot.data as object))
  late.send({ type: 'job_status', job_id: 'env-3' })
  t.match(await late.nextOfType('job_status', 'env-3'), { reason: 'requested', stalled: true })
  await progress('env-3', { status: 'completed' })
  const c2 = await gw.connect()
  t.notOk('stalled' in await c2.subscribe('env-3'), 'cleared by the next update')
})

t.test('SSE job_status events carry the reason too', async (t) => {
  await progress('env-4', { status: 'queued' })
  const controller = new AbortController()
  const res = await fetch(`${gw.http}/jobs/env-4/events`, { signal: controller.signal })
  const reader = res.body!.getReader()
  let text = ''
  while (!text.includes('event: job_status')) text += new TextDecoder().decode((await reader.read()).value)
  while (!/event: job_status\n(id: \d+\n)?data: .*\n/.test(text)) text += new TextDecoder().decode((await reader.read()).value)
  const line = /event: job_status\n(?:id: \d+\n)?data: (.*)\n/.exec(text)![1]!
  t.match(JSON.parse(line), { type: 'job_status', job_id: 'env-4', reason: 'subscribed', data: { status: 'queued' } })
  controller.abort()
})

t.test('forbidden: one retryable answer for a job without a state and for another user\'s job', async (t) => {
  const secured = await startGateway({ 'jwt-secret': SECRET, 'producer-key': 'p'.repeat(32) })
  t.teardown(() => secured.stop())
  await secured.gateway.broker.publishProgress('alice-env', Buffer.from('{"status":"processing"}'), { owner: 'alice' })
  const bob = await secured.connectAs(await token('bob'))
  const strip = (m: Message) => ({ ...m, job_id: undefined, id: undefined })
  bob.send({ type: 'subscribe_job', job_id: 'alice-env', id: 'a' })
  const theirs = await bob.nextOfType('error')
  bob.send({ type: 'subscribe_job', job_id: 'not-yet-env', id: 'b' })
  const missing = await bob.nextOfType('error')
  t.match(theirs, { code: 'forbidden', job_id: 'alice-env', id: 'a' })
  t.match(missing, { code: 'forbidden', job_id: 'not-yet-env', id: 'b' })
  t.ok(typeof theirs.retry_ms === 'number' && theirs.retry_ms > 0, 'retryable: retry_ms')
  t.same(strip(theirs), strip(missing), 'indistinguishable')
  const http = await fetch(`${secured.http}/jobs/not-yet-env`, { headers: { authorization: `Bearer ${await token('bob')}` } })
  t.equal(http.status, 403)
  t.match(await http.json(), { error: 'forbidden', retry_ms: theirs.retry_ms })
})
