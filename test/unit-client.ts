// The browser client's logic in Node, against fake WebSocket, EventSource and fetch: backoff,
// seq ordering, the state machine, close-code policy, heartbeat, token refresh and fallback.

import t from 'tap'
import { backoff } from '../src/support/backoff.js'
import { closeDecision, CloseCode, JOB_ID_RULE, Subprotocol, TOKEN_EXPIRED_REASON, type CloseDecision } from '../src/wire/protocol.js'
import { BackgroundJobManager } from '../src/client/background-job-manager.js'
import { JobView } from '../src/client/job-view.js'
import { advisedDelay, JobsClient, type ClientState, type JobsClientOptions } from '../src/client/jobs-client.js'
import { FakeWebSocket, sleep, until as untilMs } from './fixtures/fake-websocket.js'

const until = (check: () => boolean, what: string, ms = 2000) => untilMs(check, what, ms)


function makeClient(options: Partial<JobsClientOptions> = {}): { client: JobsClient; states: ClientState[]; errors: string[] } {
  FakeWebSocket.instances = []
  const client = new JobsClient({
    url: 'ws://gw.test/ws/jobs',
    minReconnectDelayMs: 5,
    maxReconnectDelayMs: 20,
    WebSocket: FakeWebSocket as unknown as typeof WebSocket,
    EventSource: null,
    ...options,
  })
  const states: ClientState[] = [client.state]
  const errors: string[] = []
  client.addEventListener('statechange', (e) => states.push((e as CustomEvent).detail.newState))
  client.addEventListener('error', (e) => errors.push((e as CustomEvent).detail.code))
  return { client, states, errors }
}

t.test('backoff: full jitter within [0, min(max, min * 2^attempt)), growing, capped', (t) => {
  t.equal(backoff(0, 100, 10_000, () => 0.999), 99)
  t.equal(backoff(3, 100, 10_000, () => 0.999), 799)
  t.equal(backoff(20, 100, 10_000, () => 0.999), 9990, 'capped at max')
  t.equal(backoff(5, 100, 10_000, () => 0), 0, 'full jitter reaches 0')
  for (let i = 0; i < 1000; i++) {
    const d = backoff(i % 12, 50, 5000)
    t.ok(d >= 0 && d < Math.min(5000, 50 * 2 ** (i % 12)), 'in range')
  }
  t.equal(backoff(-3, 100, 1000, () => 0.5), 50, 'negative attempts count as 0')
  t.equal(advisedDelay('retry-after-ms=2500'), 2500)
  t.equal(advisedDelay('going away'), undefined)
  t.end()
})

t.test('JobView: snapshots replace unless behind, stale and duplicate updates drop, gaps are reported', (t) => {
  const v = new JobView()
  t.equal(v.applyStatus({ seq: 5, progress: 50 }), 'applied')
  t.equal(v.applyUpdate({ seq: 5, progress: 50 }), 'stale', 'duplicate')
  t.equal(v.applyUpdate({ seq: 3, progress: 30 }), 'stale', 'older')
  t.equal(v.applyUpdate({ seq: 6, progress: 60 }), 'applied')
  t.equal(v.applyUpdate({ seq: 9, progress: 90 }), 'gap', 'applied, and seq 7-8 were missed')
  t.same(v.data, { seq: 9, progress: 90 })
  t.equal(v.applyUpdate({ progress: 91 }), 'applied', 'updates without seq (plain PUBLISH) always apply')
  t.equal(v.seq, 9)
  t.equal(v.applyStatus({ seq: 1, progress: 1 }), 'stale', 'a snapshot of the same history that is behind is not taken (issue 19)')
  t.equal(v.seq, 9)
  t.equal(v.applyStatus(null), 'stale', 'a held state is not dropped for null (issue 19)')
  t.equal(v.seq, 9)
  t.end()
})

t.test('JobView: a new epoch is the new truth, whatever its seq', (t) => {
  const v = new JobView()
  v.applyStatus({ seq: 50, epoch: 1000, status: 'processing' })
  t.equal(v.applyUpdate({ seq: 49, epoch: 1000 }), 'stale', 'same epoch, older seq')
  // The server lost the job and the producer began again: seq restarts, the epoch is new.
  t.equal(v.applyUpdate({ seq: 1, epoch: 2000, status: 'processing' }), 'applied', 'a new epoch with a lower seq')
  t.same([v.epoch, v.seq], [2000, 1])
  t.equal(v.applyUpdate({ seq: 2, epoch: 2000 }), 'applied')
  t.equal(v.applyUpdate({ seq: 20, epoch: 2000, status: 'completed' }), 'gap', 'gaps within an epoch are still reported')
  t.equal(v.applyUpdate({ seq: 51, epoch: 1000 }), 'applied', 'any other epoch is taken: the server sends in order, so it is newer')
  t.equal(v.applyStatus({ seq: 3, epoch: 3000 }), 'applied')
  t.same([v.epoch, v.seq], [3000, 3])
  t.end()
})

t.test('JobView: a skip marked as conflation (prev_seq the view holds) is no gap; any other skip is', (t) => {
  const v = new JobView()
  v.applyStatus({ seq: 5, epoch: 1, progress: 50 })
  t.equal(v.applyUpdate({ seq: 9, epoch: 1, progress: 90 }, 5), 'applied', 'seqs 6-8 were conflated by a rate cap, after the 5 held')
  t.equal(v.applyUpdate({ seq: 12, epoch: 1 }, 10), 'gap', 'seq 10, delivered before this one, was never seen')
  t.equal(v.applyUpdate({ seq: 20, epoch: 1 }, 11), 'applied', 'prev_seq below what is held: nothing between was lost')
  t.equal(v.applyUpdate({ seq: 25, epoch: 1 }), 'gap', 'an unmarked skip is still a gap')
  t.equal(v.applyUpdate({ seq: 30, epoch: 1 }, 'x'), 'gap', 'a prev_seq that is not an integer marks nothing')
  t.equal(v.applyUpdate({ seq: 29, epoch: 1 }, 3), 'stale', 'stale stays stale')
  t.same([v.seq, v.epoch], [30, 1])
  t.end()
})

t.test('the client asks for a snapshot on a gap, not on a skip the server marked as conflated', async (t) => {
  const { client } = makeClient()
  const updates: unknown[] = []
  client.subscribe('cf', { onUpdate: (d) => updates.push(d.seq) }, { maxHz: 2 })
  await until(() => FakeWebSocket.instances.length === 1, 'socket')
  const ws = FakeWebSocket.last()
  ws.accept()
  t.same(ws.sent, [{ type: 'subscribe_job', job_id: 'cf', max_hz: 2 }])
  ws.push({ type: 'job_status', job_id: 'cf', data: { seq: 1, epoch: 9 } })
  ws.push({ type: 'job_update', job_id: 'cf', data: { seq: 2, epoch: 9 } })
  ws.push({ type: 'job_update', job_id: 'cf', data: { seq: 7, epoch: 9 }, prev_seq: 2 })
  ws.push({ type: 'job_update', job_id: 'cf', data: { seq: 12, epoch: 9, status: 'processing' }, prev_seq: 7 })
  t.same(ws.sent.filter((m) => m.type === 'job_status'), [], 'conflated skips: no job_status request')
  t.same(updates, [2, 7, 12])
  t.same(client.job('cf')?.seq, 12)
  // A gateway without prev_seq (or a real loss) still gets the resync.
  ws.push({ type: 'job_update', job_id: 'cf', data: { seq: 15, epoch: 9 } })
  t.same(ws.sent.at(-1), { type: 'job_status', job_id: 'cf', since: { epoch: 9, seq: 15 } }, 'an unmarked skip asks for a snapshot')
  ws.push({ type: 'job_update', job_id: 'cf', data: { seq: 20, epoch: 9 }, prev_seq: 17 })
  t.equal(ws.sent.filter((m) => m.type === 'job_status').length, 2, 'so does a skip past a prev_seq never seen')
  client.close()
})

t.test('a subscribe answered unavailable is asked again, after the advised wait, until it succeeds', async (t) => {
  const { client } = makeClient()
  const statuses: unknown[] = []
  const errors: string[] = []
  client.subscribe('u', { onStatus: (d) => statuses.push(d), onError: (e) => errors.push(e.code) })
  await until(() => FakeWebSocket.instances.length === 1, 'socket')
  const ws = FakeWebSocket.last()
  ws.accept()
  t.same(ws.sent, [{ type: 'subscribe_job', job_id: 'u' }])
  ws.push({ type: 'error', code: 'unavailable', message: 'broker down', job_id: 'u', retry_after_ms: 30 })
  ws.push({ type: 'error', code: 'unavailable', message: 'broker down', job_id: 'u', retry_after_ms: 30 })
  t.same(errors, ['unavailable', 'unavailable'], 'handlers hear of it')
  t.equal(ws.sent.length, 1, 'not asked again at once')
  await until(() => ws.sent.length === 2, 'the retry')
  t.same(ws.sent[1], { type: 'subscribe_job', job_id: 'u' })
  t.equal(ws.sent.length, 2, 'one retry per pending answer')
  ws.push({ type: 'job_status', job_id: 'u', data: { seq: 7, epoch: 1, status: 'completed' } })
  t.same(statuses, [{ seq: 7, epoch: 1, status: 'completed' }], 'the job ends on its state')
  client.close()
})

t.test('connects, subscribes, resubscribes everything after a reconnect', async (t) => {
  const { client, states } = makeClient()
  const seen: unknown[] = []
  client.subscribe('a', { onStatus: (d) => seen.push(['status', d]), onUpdate: (d) => seen.push(['update', d]) })
  client.subscribe('b')
  await until(() => FakeWebSocket.instances.length === 1, 'socket')
  const ws1 = FakeWebSocket.last()
  t.equal(ws1.protocol, Subprotocol.Json)
  ws1.accept()
  t.same(ws1.sent, [{ type: 'subscribe_job', job_id: 'a' }, { type: 'subscribe_job', job_id: 'b' }])
  ws1.push({ type: 'job_status', job_id: 'a', data: { seq: 1, progress: 10 } })
  ws1.push({ type: 'job_update', job_id: 'a', data: { seq: 2, progress: 20 } })
  ws1.push({ type: 'job_update', job_id: 'a', data: { seq: 2, progress: 20 } })
  ws1.drop(1001, 'server shutting down')
  await until(() => FakeWebSocket.instances.length === 2, 'reconnect')
  const ws2 = FakeWebSocket.last()
  ws2.accept()
  t.same(ws2.sent.map((m) => m.job_id), ['a', 'b'], 'resubscribed')
  ws2.push({ type: 'job_status', job_id: 'a', data: { seq: 3, progress: 30 } })
  t.same(seen, [['status', { seq: 1, progress: 10 }], ['update', { seq: 2, progress: 20 }], ['status', { seq: 3, progress: 30 }]], 'the duplicate was dropped')
  t.same(client.job('a'), { data: { seq: 3, progress: 30 }, seq: 3 })
  t.same(states, ['connecting', 'open', 'reconnecting', 'open'], 'connecting starts in the constructor')
  client.close()
  t.equal(client.state, 'closed')
})

t.test('a gap in seq asks for a fresh snapshot', async (t) => {
  const { client } = makeClient()
  client.subscribe('g')
  await until(() => FakeWebSocket.instances.length === 1, 'socket')
  const ws = FakeWebSocket.last()
  ws.accept()
  ws.push({ type: 'job_status', job_id: 'g', data: { seq: 1 } })
  ws.push({ type: 'job_update', job_id: 'g', data: { seq: 4 } })
  t.same(ws.sent.at(-1), { type: 'job_status', job_id: 'g' })
  client.close()
})

t.test('events from a replaced socket are ignored', async (t) => {
  const { client } = makeClient({ pingIntervalMs: 20, pongTimeoutMs: 30 })
  const updates: unknown[] = []
  client.subscribe('s', { onUpdate: (d) => updates.push(d) })
  await until(() => FakeWebSocket.instances.length === 1, 'socket')
  const old = FakeWebSocket.last()
  old.accept()
  // no pong: after ping + timeout the connection is declared dead and replaced
  await until(() => FakeWebSocket.instances.length === 2, 'replacement after a missed pong', 3000)
  t.ok(old.sent.some((m) => m.type === 'ping'), 'pings were sent')
  old.push({ type: 'job_update', job_id: 's', data: { seq: 99 } })
  old.onclose?.({ code: 1006, reason: '' })
  t.same(updates, [], 'the dead socket cannot deliver')
  const fresh = FakeWebSocket.last()
  fresh.accept()
  fresh.push({ type: 'ping' })
  t.equal(client.state, 'open')
  client.close()
})

t.test('ping/pong measures the round trip', async (t) => {
  const { client } = makeClient()
  await until(() => FakeWebSocket.instances.length === 1, 'socket')
  const ws = FakeWebSocket.last()
  ws.accept()
  const rtt = new Promise<number>((resolve) => client.addEventListener('pong', (e) => resolve((e as CustomEvent).detail.rttMs)))
  client.ping()
  const ping = ws.sent.at(-1)!
  await sleep(5)
  ws.push({ type: 'pong', id: ping.id })
  t.ok((await rtt) >= 4)
  t.equal(client.rttMs, await rtt)
  client.close()
})

t.test('1013 waits for the advised delay before reconnecting', async (t) => {
  const { client } = makeClient()
  await until(() => FakeWebSocket.instances.length === 1, 'socket')
  const ws = FakeWebSocket.last()
  ws.accept()
  const closedAt = Date.now()
  ws.push({ type: 'error', code: 'rate_limited', message: 'at most 2 connections per user', retry_after_ms: 150 })
  ws.drop(1013, 'retry-after-ms=150')
  await until(() => FakeWebSocket.instances.length === 2, 'reconnect', 2000)
  t.ok(Date.now() - closedAt >= 140, `waited ${Date.now() - closedAt} ms`)
  client.close()
})

t.test('1008 stops and reports an auth error; 1009 reports and stops', async (t) => {
  for (const [code, kind] of [[1008, 'auth'], [1009, 'message_too_big']] as const) {
    const { client, errors } = makeClient()
    const jobErrors: string[] = []
    client.subscribe('x', { onError: (e) => jobErrors.push(e.code) })
    await until(() => FakeWebSocket.instances.length === 1, 'socket')
    FakeWebSocket.last().accept()
    FakeWebSocket.last().drop(code, 'policy')
    await sleep(60)
    t.equal(client.state, 'closed', `${code}: closed`)
    t.equal(FakeWebSocket.instances.length, 1, `${code}: no reconnect`)
    t.same(errors, [kind])
    t.same(jobErrors, [kind], 'every job hears about it')
  }
})

// The contract's close codes (docs/protocol.md) and what a client does after each, written out
// here rather than derived from closeDecision, so that a change to the policy shows up as a
// change to this table. 4000 is the client's own close for a dead heartbeat.
const closePolicy: ReadonlyArray<readonly [number, CloseDecision]> = [
  [CloseCode.Normal, 'reconnect'],
  [CloseCode.GoingAway, 'reconnect'],
  [CloseCode.Abnormal, 'reconnect'],
  [CloseCode.PolicyViolation, 'stop'],
  [CloseCode.MessageTooBig, 'stop'],
  [CloseCode.TryAgainLater, 'reconnect'],
  [4000, 'reconnect'],
]

t.test('closeDecision: the close policy, code by code', (t) => {
  t.same(closePolicy.map(([code]) => code), [1000, 1001, 1006, 1008, 1009, 1013, 4000], 'every code the contract names, and the heartbeat\'s')
  for (const [code, decision] of closePolicy) t.equal(closeDecision(code, ''), decision, `${code}: ${decision}`)
  t.equal(closeDecision(1008, '', 'token_expired'), 'renew_token', '1008 after token_expired: renew the token')
  t.equal(closeDecision(1008, TOKEN_EXPIRED_REASON), 'renew_token', 'or when the close reason says so')
  t.equal(closeDecision(1008, 'disconnected by an administrator', 'forbidden'), 'stop', 'any other 1008 is final')
  t.equal(closeDecision(1009, TOKEN_EXPIRED_REASON, 'token_expired'), 'stop', 'only 1008 is renewable')
  t.equal(closeDecision(1001, TOKEN_EXPIRED_REASON), 'reconnect', 'the reason does not turn a reconnect into a renewal')
  t.end()
})

t.test('the client follows the close policy: reconnects or stops as closeDecision says', async (t) => {
  for (const [code, decision] of closePolicy) {
    const { client, errors } = makeClient()
    await until(() => FakeWebSocket.instances.length === 1, 'socket')
    FakeWebSocket.last().accept()
    FakeWebSocket.last().drop(code, code === CloseCode.TryAgainLater ? 'retry-after-ms=10' : '')
    if (decision === 'reconnect') {
      await until(() => FakeWebSocket.instances.length === 2, `${code}: reconnect`)
      t.same(errors, [], `${code}: reconnects, no error`)
    } else {
      await sleep(60)
      t.equal(FakeWebSocket.instances.length, 1, `${code}: no reconnect`)
      t.equal(client.state, 'closed', `${code}: stopped`)
      t.equal(errors.length, 1, `${code}: reported`)
    }
    client.close()
  }
})

t.test('token_expired without getToken: a fixed token cannot be renewed, so the client stops', async (t) => {
  const { client, errors } = makeClient({ token: 'fixed' })
  await until(() => FakeWebSocket.instances.length === 1, 'socket')
  FakeWebSocket.last().accept()
  FakeWebSocket.last().push({ type: 'error', code: 'token_expired', message: 'token expired' })
  FakeWebSocket.last().drop(1008, TOKEN_EXPIRED_REASON)
  await sleep(60)
  t.equal(FakeWebSocket.instances.length, 1, 'no reconnect')
  t.equal(client.state, 'closed', 'stopped')
  t.same(errors, ['token_expired', 'auth'], 'the error frame, then the stop')
})

t.test('token_expired: a fresh token from getToken, then straight back', async (t) => {
  let issued = 0
  const { client, states } = makeClient({ getToken: async () => `tok-${++issued}` })
  await until(() => FakeWebSocket.instances.length === 1, 'socket')
  t.match(FakeWebSocket.last().url, /token=tok-1$/)
  FakeWebSocket.last().accept()
  FakeWebSocket.last().push({ type: 'error', code: 'token_expired', message: 'token expired' })
  FakeWebSocket.last().drop(1008, 'token expired')
  await until(() => FakeWebSocket.instances.length === 2, 'reconnect')
  t.match(FakeWebSocket.last().url, /token=tok-2$/)
  FakeWebSocket.last().accept()
  t.equal(client.state, 'open')
  t.notOk(states.includes('closed' as ClientState) && states.lastIndexOf('closed') > 0, 'never closed')
  client.close()
})

t.test('falls back to polling when WebSocket never opens, and returns when it does', async (t) => {
  const polled: string[] = []
  const fakeFetch = (async (url: string) => {
    polled.push(url)
    return new Response(JSON.stringify({ job_id: 'p1', data: { seq: 7, progress: 70 } }), { status: 200 })
  }) as unknown as typeof fetch
  const { client, states } = makeClient({ fallbackAfterFailures: 2, wsRetryIntervalMs: 80, pollIntervalMs: 20, fetch: fakeFetch })
  const seen: unknown[] = []
  client.subscribe('p1', { onStatus: (d) => seen.push(d) })
  await until(() => FakeWebSocket.instances.length === 1, 'socket')
  FakeWebSocket.last().drop(1006)
  await until(() => FakeWebSocket.instances.length === 2, 'second attempt')
  FakeWebSocket.last().drop(1006)
  await until(() => client.state === 'fallback', 'fallback')
  await until(() => seen.length > 0, 'a polled status')
  // Each attempt refused before it opened is first shown to GET /jobs (is it the token?).
  t.same(polled.filter((u) => u.includes('owner=me')), ['http://gw.test/jobs?owner=me&limit=1'], 'asked why once: not the token (200), so not asked again for it')
  t.equal(polled.find((u) => !u.includes('owner=me')), 'http://gw.test/jobs/p1')
  t.same(seen[0], { seq: 7, progress: 70 })
  await until(() => FakeWebSocket.instances.length === 3, 'WebSocket retried while in fallback', 3000)
  FakeWebSocket.last().accept()
  t.equal(client.state, 'open')
  const pollsAtOpen = polled.length
  await sleep(80)
  t.ok(polled.length <= pollsAtOpen + 1, 'polling stopped once WebSocket works')
  t.same(states, ['connecting', 'reconnecting', 'fallback', 'open'])
  client.close()
})

t.test('fallback prefers SSE where EventSource exists', async (t) => {
  const opened: string[] = []
  class FakeEventSource extends EventTarget {
    readyState = 1
    onerror: (() => void) | null = null
    constructor(readonly url: string) {
      super()
      opened.push(url)
      setTimeout(() => this.dispatchEvent(Object.assign(new Event('job_status'), { data: JSON.stringify({ type: 'job_status', job_id: 'e1', data: { seq: 2 } }) })), 5)
    }
    close(): void {}
  }
  const { client } = makeClient({ fallbackAfterFailures: 1, wsRetryIntervalMs: 10_000, EventSource: FakeEventSource as unknown as typeof EventSource, token: 'tk' })
  const seen: unknown[] = []
  client.subscribe('e1', { onStatus: (d) => seen.push(d) })
  await until(() => FakeWebSocket.instances.length === 1, 'socket')
  FakeWebSocket.last().drop(1006)
  await until(() => seen.length === 1, 'an SSE status')
  t.same(opened, ['http://gw.test/jobs/e1/events?token=tk'])
  client.close()
})

t.test('the browser coming back online reconnects at once', async (t) => {
  const win = new EventTarget()
  const g = globalThis as unknown as { addEventListener?: unknown; removeEventListener?: unknown }
  g.addEventListener = win.addEventListener.bind(win)
  g.removeEventListener = win.removeEventListener.bind(win)
  t.teardown(() => {
    delete g.addEventListener
    delete g.removeEventListener
  })
  const { client } = makeClient({ minReconnectDelayMs: 5000, maxReconnectDelayMs: 5000 })
  await until(() => FakeWebSocket.instances.length === 1, 'socket')
  FakeWebSocket.last().accept()
  FakeWebSocket.last().drop(1006)
  await sleep(20)
  t.equal(FakeWebSocket.instances.length, 1, 'waiting out a long backoff')
  win.dispatchEvent(new Event('online'))
  await until(() => FakeWebSocket.instances.length === 2, 'reconnect on online')
  client.close()
})

t.test('subscribe validates job ids; a second subscriber gets the known state at once', async (t) => {
  const { client } = makeClient()
  for (const bad of ['bad id', '', 'x'.repeat(129), 'a/b']) {
    t.throws(() => client.subscribe(bad), { name: 'TypeError', message: `'${bad}' is not a job id (${JOB_ID_RULE})` }, 'the shared rule, in its words')
  }
  client.subscribe('x'.repeat(128))
  client.subscribe('A-z_0.9:')
  client.subscribe('k')
  await until(() => FakeWebSocket.instances.length === 1, 'socket')
  FakeWebSocket.last().accept()
  t.same(FakeWebSocket.last().sent.map((m) => m.job_id), ['x'.repeat(128), 'A-z_0.9:', 'k'], 'the valid ids at the edges of the rule are subscribed, the refused ones are not')
  FakeWebSocket.last().push({ type: 'job_status', job_id: 'k', data: { seq: 1, p: 1 } })
  let got: unknown
  const off = client.subscribe('k', { onStatus: (d) => (got = d) })
  t.same(got, { seq: 1, p: 1 })
  off()
  t.equal(FakeWebSocket.last().sent.filter((m) => m.type === 'unsubscribe_job').length, 0, 'the first subscriber still watches')
  client.close()
})

t.test('BackgroundJobManager: the original API, with DOM events', async (t) => {
  FakeWebSocket.instances = []
  const manager = new BackgroundJobManager({ url: 'ws://gw.test/ws/jobs', WebSocket: FakeWebSocket as unknown as typeof WebSocket, EventSource: null })
  const events: string[] = []
  for (const type of ['progress', 'status']) manager.addEventListener(type, (e) => events.push(`${type}:${JSON.stringify((e as CustomEvent).detail)}`))
  manager.subscribeToJob('m1')
  await until(() => FakeWebSocket.instances.length === 1, 'socket')
  FakeWebSocket.last().accept()
  FakeWebSocket.last().push({ type: 'job_status', job_id: 'm1', data: { seq: 1, status: 'queued' } })
  FakeWebSocket.last().push({ type: 'job_update', job_id: 'm1', data: { seq: 2, status: 'processing', progress: 5 } })
  FakeWebSocket.last().push({ type: 'job_update', job_id: 'm1', data: { seq: 3, status: 'processing', progress: 6 } })
  t.same(events, [
    'status:{"jobId":"m1","data":{"seq":1,"status":"queued"}}',
    'progress:{"jobId":"m1","data":{"seq":2,"status":"processing","progress":5}}',
    'status:{"jobId":"m1","data":{"seq":2,"status":"processing","progress":5}}',
    'progress:{"jobId":"m1","data":{"seq":3,"status":"processing","progress":6}}',
  ])
  manager.unsubscribeFromJob('m1')
  t.same(FakeWebSocket.last().sent.at(-1), { type: 'unsubscribe_job', job_id: 'm1' })
  manager.disconnect()
})

// Auth failures surface (issue: a wrong or expired token was silent, the client fell back to
// polling and polled a 401 every 2 s with getToken called each time).
const refusing = (code: 'token_invalid' | 'token_expired', message: string, asked: string[]) => (async (url: string, init?: RequestInit) => {
  asked.push(`${url} ${(init?.headers as Record<string, string> | undefined)?.authorization ?? ''}`)
  return new Response(JSON.stringify({ error: 'unauthorized', code, message }), { status: 401 })
}) as unknown as typeof fetch

t.test('a refused token: onError once with its code, no fallback, getToken asked again after backoff', async (t) => {
  const asked: string[] = []
  let tokens = 0
  const { client, states, errors } = makeClient({
    fallbackAfterFailures: 2,
    getToken: () => `wrong-${++tokens}`,
    fetch: refusing('token_invalid', 'invalid token: signature verification failed', asked),
  })
  const jobErrors: Array<{ code: string; message: string }> = []
  client.subscribe('a1', { onError: (e) => jobErrors.push({ code: e.code, message: e.message }) })
  for (let i = 1; i <= 4; i++) {
    await until(() => FakeWebSocket.instances.length === i, `attempt ${i}`)
    FakeWebSocket.last().drop(1006)
  }
  await until(() => asked.length === 4, 'each refusal explained')
  t.same(jobErrors, [{ code: 'token_invalid', message: 'invalid token: signature verification failed' }], 'onError once, with the code and the server\'s reason')
  t.same(errors, ['token_invalid'], 'the client-level error once too')
  t.notOk(states.includes('fallback'), 'never in fallback: no transport gets past a refused token')
  t.match(asked[0], /^http:\/\/gw\.test\/jobs\?owner=me&limit=1 Bearer wrong-1$/, 'the same credentials shown to GET /jobs')
  t.ok(tokens >= 4, `getToken asked again for each attempt (${tokens})`)
  client.close()
})

t.test('a fixed token refused: onError once and the client stops', async (t) => {
  const asked: string[] = []
  const { client, states } = makeClient({ token: 'expired-one', fetch: refusing('token_expired', 'token expired', asked) })
  const jobErrors: string[] = []
  client.subscribe('a2', { onError: (e) => jobErrors.push(e.code) })
  await until(() => FakeWebSocket.instances.length === 1, 'attempt')
  FakeWebSocket.last().drop(1006)
  await until(() => client.state === 'closed', 'closed')
  t.same(jobErrors, ['token_expired'])
  await sleep(60)
  t.equal(FakeWebSocket.instances.length, 1, 'no further attempt with a token that cannot change')
  t.notOk(states.includes('fallback'))
})

t.test('getToken returning something that is not a token, or throwing, is reported as such', async (t) => {
  const html = '<!doctype html><html><body>Not Found</body></html>'
  const { client, errors } = makeClient({ getToken: () => html })
  const messages: string[] = []
  client.addEventListener('error', (e) => messages.push((e as CustomEvent).detail.message))
  client.subscribe('a3', {})
  await until(() => errors.length === 1, 'reported')
  t.equal(errors[0], 'token_invalid')
  t.match(messages[0], /getToken returned something that is not a token: "<!doctype html>/)
  await sleep(60)
  t.equal(FakeWebSocket.instances.length, 0, 'never sent')
  t.equal(errors.length, 1, 'said once, however often it is asked again')
  client.close()
  for (const [given, why] of [[undefined, /returned undefined/], [42, /returned number/], [null, /returned null/]] as const) {
    const { client: c, errors: e } = makeClient({ getToken: () => given as unknown as string })
    const said: string[] = []
    c.addEventListener('error', (ev) => said.push((ev as CustomEvent).detail.message))
    c.subscribe('a4', {})
    await until(() => e.length === 1, 'reported')
    t.match(said[0], why)
    c.close()
  }
  const { client: thrower, errors: thrown } = makeClient({ getToken: () => { throw new Error('session expired') } })
  thrower.subscribe('a5', {})
  await until(() => thrown.length === 1, 'reported')
  t.equal(thrown[0], 'get_token_failed')
  thrower.close()
})
