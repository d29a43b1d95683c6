// Access logs at info: connects (transport, address, user), refused subscribes and requests
// with the reason, closes with code and reason, rate limits; sampled per kind so a burst costs
// a bounded number of lines plus one line counting the rest. And the pretty format.

import t from 'tap'
import { hostname } from 'node:os'
import type { Logger } from '../src/support/log.js'
import { prettyLine, SampledLog } from '../src/support/log.js'
import { freePort } from './fixtures/ports.js'
import { reap, serveProcess } from './fixtures/process.js'
import { SECRET, token } from './fixtures/tokens.js'
import { until } from './fixtures/until.js'
import { closeAll, connect, type TestClient } from './fixtures/ws-client.js'

interface Line {
  level: string
  msg: string
  access?: string
  transport?: string
  [key: string]: unknown
}

t.test('SampledLog: at most N lines per kind per interval, then one line with the count', async (t) => {
  const lines: Array<{ fields: Record<string, unknown>; msg: string }> = []
  const log = { info: (fields: Record<string, unknown>, msg: string) => lines.push({ fields, msg }) } as unknown as Logger
  const sampled = new SampledLog(3, 100)
  for (let i = 0; i < 10; i++) sampled.info(log, 'connect', { i }, 'connected')
  sampled.info(log, 'close', {}, 'closed')
  t.same(lines.map((l) => l.fields.i ?? l.fields.access), [0, 1, 2, 'close'], 'three connects, and the other kind has its own budget')
  await until(() => lines.length === 5, 'the summary line', 2000)
  t.match(lines[4], { fields: { access: 'connect', suppressed: 7 }, msg: /7 more 'connect' access log lines/ })
  sampled.info(log, 'connect', { i: 10 }, 'connected')
  t.equal(lines.at(-1)!.fields.i, 10, 'a new interval logs again')
})

t.test('prettyLine: local time, level name, component, message, then the fields', async (t) => {
  const time = new Date(2026, 0, 2, 3, 4, 5, 6).getTime()
  t.equal(prettyLine(`${JSON.stringify({ level: 30, time, pid: 1, component: 'ws', worker: 2, msg: 'connected', ip: '127.0.0.1', user: 'u 7', n: 3 })}\n`),
    '03:04:05.006 INFO  [w2/ws] connected  ip=127.0.0.1 user="u 7" n=3\n')
  t.equal(prettyLine(`${JSON.stringify({ level: 50, time, pid: 1, msg: 'boom' })}\n`), '03:04:05.006 ERROR boom\n')
  t.equal(prettyLine(`${JSON.stringify({ level: 'warn', time, pid: 1, hostname: 'edge-3', msg: 'careful' })}\n`), '03:04:05.006 WARN  careful\n', 'a level name; the host name is not repeated on a terminal')
  t.equal(prettyLine('not json\n'), 'not json\n', 'anything else passes through')
})

t.test('a served gateway logs access at info', async (t) => {
  const port = await freePort()
  const served = serveProcess(['--port', String(port), '--log-format', 'json', '--max-messages-per-sec', '1', '--max-subscriptions', '1',
    '--connect-rate-per-ip', '0', '--max-connections-per-ip', '0', '--max-connections-per-user', '0'],
  { _TAPJS_PROCESSINFO_COVERAGE_: '0', JOBWIRE_JWT_SECRET: SECRET })
  t.teardown(() => reap(served))
  await served.waitFor(/jobwire listening/)
  const clients = new Set<TestClient>()
  t.teardown(() => closeAll(clients))
  const http = `http://127.0.0.1:${port}`
  const ws = `ws://127.0.0.1:${port}/ws/jobs`
  const lines = () => served.lines.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Line)
  const access = (kind: string, match: (l: Line) => boolean = () => true) => lines().filter((l) => l.access === kind && match(l))

  const producer = await token('worker', { role: 'producer' })
  const posted = await fetch(`${http}/jobs/owned-by-b/progress?owner=user-b`, {
    method: 'POST', headers: { authorization: `Bearer ${producer}`, 'content-type': 'application/json' }, body: '{"status":"queued"}',
  })
  t.equal(posted.status, 200)

  const alice = await connect(`${ws}?token=${await token('user-a')}`, undefined, {}, clients)
  await until(() => access('connect', (l) => l.user === 'user-a').length === 1, 'the connect line')
  t.match(access('connect')[0], { level: 'info', transport: 'websocket', ip: '127.0.0.1', user: 'user-a', msg: 'connected' })
  t.equal(access('connect')[0]!.hostname, hostname(), 'every line names its host')

  alice.send({ type: 'subscribe_job', job_id: 'owned-by-b' })
  await alice.nextOfType('error')
  await until(() => access('refused', (l) => l.job === 'owned-by-b').length === 1, 'the refused subscribe')
  t.match(access('refused', (l) => l.job === 'owned-by-b')[0], { transport: 'websocket', user: 'user-a', reason: 'forbidden', msg: 'subscribe refused: forbidden' })

  // Past the message rate (burst 2 x 1 + 1): refused messages are logged, and 20 in a row end
  // the socket with 1008, whose close line carries the code and the reason.
  for (let i = 0; i < 30; i++) alice.send({ type: 'ping', id: i })
  await alice.closed
  await until(() => access('close', (l) => l.user === 'user-a').length === 1, 'the close line')
  t.ok(access('rate_limited', (l) => l.user === 'user-a').length >= 10, 'rate-limited messages are logged')
  t.match(access('close', (l) => l.user === 'user-a')[0], { code: 1008, reason: 'message rate limit exceeded repeatedly', transport: 'websocket' })

  const bob = await connect(`${ws}?token=${await token('user-b')}`, undefined, {}, clients)
  bob.ws.close(1000, 'bye')
  await until(() => access('close', (l) => l.user === 'user-b').length === 1, 'bob\'s close line')
  t.match(access('close', (l) => l.user === 'user-b')[0], { code: 1000, reason: 'bye' })

  t.equal((await fetch(`${http}/jobs/owned-by-b`)).status, 401)
  await until(() => access('refused', (l) => l.transport === 'http').length === 1, 'the refused GET')
  t.match(access('refused', (l) => l.transport === 'http')[0], { job: 'owned-by-b', reason: 'token_missing' })

  const controller = new AbortController()
  const stream = await fetch(`${http}/jobs/owned-by-b/events?token=${await token('user-b')}`, { signal: controller.signal })
  t.equal(stream.status, 200)
  await until(() => access('connect', (l) => l.transport === 'sse').length === 1, 'the SSE connect line')
  t.match(access('connect', (l) => l.transport === 'sse')[0], { user: 'user-b', job: 'owned-by-b' })
  controller.abort()
  await until(() => access('close', (l) => l.transport === 'sse').length === 1, 'the SSE close line')

  // A burst of connects: at most 20 lines in its second, then one line with the count.
  const tokens = await Promise.all(Array.from({ length: 45 }, () => token('user-c')))
  await Promise.all(tokens.map((jwt) => connect(`${ws}?token=${jwt}`, undefined, {}, clients)))
  const logged = () => access('connect', (l) => l.user === 'user-c').length
  const suppressed = () => access('connect', (l) => typeof l.suppressed === 'number').reduce((n, l) => n + (l.suppressed as number), 0)
  await until(() => logged() + suppressed() === 45, 'every connect logged or counted in a summary line', 5000)
  // The burst may straddle two one-second windows, never more on any sane machine.
  t.ok(logged() <= 40, `at most 20 connect lines per second (${logged()} logged, ${suppressed()} counted)`)
  t.ok(suppressed() >= 5)
})
