// The browser client's state model (issue 19, items 1, 5, 7 and 8, client side): final is
// final within an epoch, a held state survives a job_status that is behind or empty, epochs
// are compared for equality only, a plain PUBLISH is merged into the held state, `since` goes
// with every resubscribe, and a forbidden with retry_ms is asked again, a bounded number of
// times. Against a fake WebSocket, as test/unit-client.ts.

import t from 'tap'
import { JobView, mergePatch } from '../src/client/job-view.js'
import { JobsClient, type JobsClientError } from '../src/client/jobs-client.js'
import { FakeWebSocket, sleep, until as untilMs } from './fixtures/fake-websocket.js'

const until = (check: () => boolean, what: string, ms = 3000) => untilMs(check, what, ms)


function makeClient(): JobsClient {
  FakeWebSocket.instances = []
  return new JobsClient({ url: 'ws://gw.test/ws/jobs', minReconnectDelayMs: 5, maxReconnectDelayMs: 20, WebSocket: FakeWebSocket as unknown as typeof WebSocket, EventSource: null })
}

const E = 1_733_611_200_000

t.test('JobView: a terminal state is never replaced by a non-terminal one of the same epoch', (t) => {
  const v = new JobView()
  v.applyStatus({ seq: 9, epoch: E, status: 'processing', progress: 90 })
  t.equal(v.applyUpdate({ seq: 10, epoch: E, status: 'completed', result: 'ok' }), 'applied')
  // The replication-loss case: Redis restored an older copy and counted on from it.
  t.equal(v.applyStatus({ seq: 9, epoch: E, status: 'processing', progress: 90 }), 'stale', 'a resync that is behind')
  t.equal(v.applyUpdate({ seq: 11, epoch: E, status: 'processing' }), 'stale', 'a later seq of the same epoch, not final')
  t.equal(v.applyStatus({ seq: 12, epoch: E, status: 'processing' }), 'stale', 'nor a job_status without newer evidence')
  t.equal(v.applyUpdate({ status: 'processing', progress: 5 }), 'stale', 'nor a plain PUBLISH')
  t.equal(v.applyStatus(null), 'stale', 'data: null (the terminal TTL expired) keeps the final state')
  t.equal(v.applyStatus({ seq: 3, epoch: E, status: 'failed' }, 'behind'), 'stale', 'relation behind: keep')
  t.equal(v.applyStatus(null, 'none'), 'stale')
  t.match(v.data, { status: 'completed', seq: 10 })
  t.equal(v.applyUpdate({ seq: 11, epoch: E, status: 'completed', result: 'ok', extra: 1 }), 'applied', 'terminal to terminal is fine')
  // Equality only: a smaller epoch is just as much another history as a larger one.
  t.equal(v.applyUpdate({ seq: 1, epoch: E - 5, status: 'processing' }), 'applied', 'another epoch is another history')
  t.same([v.epoch, v.seq, v.data?.status], [E - 5, 1, 'processing'])
  t.equal(v.applyStatus({ seq: 2, epoch: E + 7, status: 'queued' }, 'new_epoch'), 'applied')
  t.end()
})

t.test('mergePatch: top-level merge, null deletes, nested replaced, a status change clears message/error/result', (t) => {
  const held = { seq: 3, epoch: E, status: 'processing', message: 'transcoding', progress: 10, meta: { a: 1, b: 2 } }
  t.same(mergePatch(held, { progress: 55 }), { ...held, progress: 55 }, 'the README promise: partial updates keep the rest')
  t.same(mergePatch(held, { meta: { c: 3 } }).meta, { c: 3 }, 'nested objects are replaced whole')
  t.notOk('message' in mergePatch(held, { message: null }), 'null deletes')
  const done = mergePatch({ ...held, error: 'old' }, { status: 'completed', result: { url: 'x' } })
  t.same(done, { seq: 3, epoch: E, status: 'completed', progress: 10, meta: { a: 1, b: 2 }, result: { url: 'x' } }, 'message and error cleared, result set')
  t.same(mergePatch(held, { status: 'failed', message: 'disk full' }).message, 'disk full', 'unless the update sets them')
  t.same(mergePatch(held, { status: 'processing' }).message, 'transcoding', 'no change of status, nothing cleared')
  t.same(mergePatch(null, { progress: 1, gone: null }), { progress: 1 })
  t.end()
})

t.test('the client merges a plain partial PUBLISH into the state it holds, and tells handlers the merged state', async (t) => {
  const client = makeClient()
  const seen: unknown[] = []
  client.subscribe('m', { onStatus: (d) => seen.push(d), onUpdate: (d) => seen.push(d) })
  await until(() => FakeWebSocket.instances.length === 1, 'socket')
  const ws = FakeWebSocket.last()
  ws.accept()
  ws.push({ type: 'job_status', job_id: 'm', data: { seq: 1, epoch: E, status: 'processing', message: 'transcoding', progress: 10 }, reason: 'subscribed' })
  ws.push({ type: 'job_update', job_id: 'm', data: { progress: 55 } })
  t.same(seen.at(-1), { seq: 1, epoch: E, status: 'processing', message: 'transcoding', progress: 55 }, 'status and message kept')
  t.same(client.job('m')?.data, seen.at(-1))
  ws.push({ type: 'job_update', job_id: 'm', data: { status: 'failed', error: 'boom' } })
  t.same(seen.at(-1), { seq: 1, epoch: E, status: 'failed', progress: 55, error: 'boom' })
  ws.push({ type: 'job_update', job_id: 'm', data: { status: 'processing', progress: 60 } })
  t.equal(seen.length, 3, 'a plain PUBLISH cannot reopen a final state')
  client.close()
})

t.test('resubscribes carry since; a job_status that is behind or empty keeps the final state', async (t) => {
  const client = makeClient()
  const statuses: unknown[] = []
  client.subscribe('f', { onStatus: (d) => statuses.push(d) })
  await until(() => FakeWebSocket.instances.length === 1, 'socket')
  const ws1 = FakeWebSocket.last()
  ws1.accept()
  t.same(ws1.sent, [{ type: 'subscribe_job', job_id: 'f' }], 'nothing held yet: no since')
  ws1.push({ type: 'job_status', job_id: 'f', data: { seq: 8, epoch: E, status: 'processing' }, reason: 'subscribed' })
  ws1.push({ type: 'job_update', job_id: 'f', data: { seq: 9, epoch: E, status: 'processing' } })
  ws1.push({ type: 'job_update', job_id: 'f', data: { seq: 10, epoch: E, status: 'completed' } })
  ws1.drop(1006)
  await until(() => FakeWebSocket.instances.length === 2, 'reconnect')
  const ws2 = FakeWebSocket.last()
  ws2.accept()
  t.same(ws2.sent, [{ type: 'subscribe_job', job_id: 'f', since: { epoch: E, seq: 10 } }])
  // The server lost the last writes (a failover to a replica at seq 8).
  ws2.push({ type: 'job_status', job_id: 'f', data: { seq: 8, epoch: E, status: 'processing' }, reason: 'subscribed', relation: 'behind' })
  t.match(client.job('f')?.data, { status: 'completed', seq: 10 }, 'kept')
  t.match(statuses.at(-1), { status: 'completed', seq: 10 }, 'handlers are told the state kept')
  ws2.push({ type: 'job_status', job_id: 'f', data: null, reason: 'resync', relation: 'none' })
  t.match(client.job('f')?.data, { status: 'completed', seq: 10 }, 'the terminal TTL expired: still completed')
  client.close()
})

t.test('forbidden with retry_ms is asked again with backoff, a bounded number of times', async (t) => {
  const client = makeClient()
  const errors: JobsClientError[] = []
  client.subscribe('early', { onError: (e) => errors.push(e) })
  await until(() => FakeWebSocket.instances.length === 1, 'socket')
  const ws = FakeWebSocket.last()
  ws.accept()
  const refuse = () => ws.push({ type: 'error', code: 'forbidden', message: 'not allowed to watch this job', job_id: 'early', retry_ms: 10 })
  refuse()
  await until(() => ws.sent.length === 2, 'a retry')
  t.same(ws.sent[1], { type: 'subscribe_job', job_id: 'early' })
  t.ok(errors[0]!.retryInMs! >= 10, 'handlers hear it will be retried')
  // The job gets its state: the task started.
  ws.push({ type: 'job_status', job_id: 'early', data: { seq: 1, epoch: E, status: 'processing' }, reason: 'subscribed' })
  t.match(client.job('early')?.data, { status: 'processing' })

  client.subscribe('never', { onError: (e) => errors.push(e) })
  for (let i = 0; i < 5; i++) {
    const sent = ws.sent.length
    ws.push({ type: 'error', code: 'forbidden', message: 'no', job_id: 'never', retry_ms: 1 })
    await until(() => ws.sent.length === sent + 1, `retry ${i + 1}`)
  }
  const sent = ws.sent.length
  ws.push({ type: 'error', code: 'forbidden', message: 'no', job_id: 'never', retry_ms: 1 })
  await sleep(100)
  t.equal(ws.sent.length, sent, 'bounded: the sixth refusal in a row is final')
  t.equal(errors.at(-1)!.retryInMs, undefined, 'and says so')
  ws.push({ type: 'error', code: 'forbidden', message: 'old gateway', job_id: 'early' })
  await sleep(50)
  t.equal(ws.sent.length, sent, 'a forbidden without retry_ms (an older gateway) is final')
  client.close()
})

t.test('polling (the last fallback) asks again after a 403 with retry_ms, a bounded number of times', async (t) => {
  const { FallbackWatch } = await import('../src/client/fallback.js')
  const poll = (answers: Array<{ status: number; body: object }>) => {
    let calls = 0
    const frames: unknown[] = []
    const fetch = (async () => {
      const a = answers[Math.min(calls++, answers.length - 1)]!
      return new Response(JSON.stringify(a.body), { status: a.status })
    }) as unknown as typeof globalThis.fetch
    const watch = new FallbackWatch('p', { httpBase: 'http://gw.test', token: async () => undefined, refreshToken: null, pollIntervalMs: 5, EventSource: undefined, fetch, onHttpError: () => undefined }, (m) => frames.push(m))
    return { watch, frames, calls: () => calls }
  }
  const forbidden = { status: 403, body: { error: 'forbidden', retry_ms: 2000 } }
  const early = poll([forbidden, forbidden, { status: 200, body: { job_id: 'p', data: { status: 'processing' } } }])
  await until(() => early.frames.length > 0, 'the job once it has a state')
  t.match(early.frames[0], { type: 'job_status', data: { status: 'processing' } })
  early.watch.stop()
  const never = poll([forbidden])
  await until(() => never.calls() >= 6, 'the retries')
  await sleep(60)
  t.equal(never.calls(), 6, 'five retries, then it stops')
  never.watch.stop()
  const old = poll([{ status: 403, body: { error: 'forbidden' } }])
  await sleep(60)
  t.equal(old.calls(), 1, 'a 403 without retry_ms is final')
  old.watch.stop()
})

t.test('handlers hear why a job_status came and whether the job is stalled, beside its state', async (t) => {
  const client = makeClient()
  const infos: unknown[] = []
  client.subscribe('st', { onStatus: (d, _id, info) => infos.push([d?.status, info]) })
  await until(() => FakeWebSocket.instances.length === 1, 'socket')
  const ws = FakeWebSocket.last()
  ws.accept()
  ws.push({ type: 'job_status', job_id: 'st', data: { seq: 1, epoch: E, status: 'processing' }, reason: 'subscribed' })
  ws.push({ type: 'job_status', job_id: 'st', data: { seq: 1, epoch: E, status: 'processing' }, reason: 'stalled', stalled: true })
  t.same(infos, [['processing', { reason: 'subscribed', stalled: false }], ['processing', { reason: 'stalled', stalled: true }]])
  client.close()
})
