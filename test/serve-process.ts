// `jobwire serve` as a process: startup on the native uWS binary and the embedded broker,
// configuration errors, and graceful shutdown on SIGTERM/SIGINT.

import t from 'tap'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { freePort } from './fixtures/ports.js'
import { CLI, reap, serveProcess } from './fixtures/process.js'
import { connect } from './fixtures/ws-client.js'
import { until } from './fixtures/until.js'

const run = promisify(execFile)

t.test('starts on the native binary with the embedded broker, and stops cleanly on SIGTERM', async (t) => {
  const port = await freePort()
  const served = serveProcess([], { PORT: String(port), REDIS_URL: '' })
  t.teardown(() => reap(served))
  const line = await served.waitFor(/jobwire listening/)
  t.match(line, /uWebSockets.js native uws_linux_x64_\d+\.node/)
  t.match(line, /broker: embedded/)
  t.match(line, new RegExp(`http://127.0.0.1:${port}`))
  t.equal((await fetch(`http://127.0.0.1:${port}/healthz`)).status, 200)
  const c = await connect(`ws://127.0.0.1:${port}/ws/jobs`)
  await c.subscribe('sd-1')
  const started = Date.now()
  served.kill('SIGTERM')
  t.equal(await c.closed, 1001, 'sockets are closed with 1001 (going away)')
  const { code } = await served.exited
  t.equal(code, 0, 'exit 0')
  t.ok(Date.now() - started < 5000, 'within the shutdown bound')
  await t.rejects(fetch(`http://127.0.0.1:${port}/healthz`), 'no longer listening')
})

t.test('SIGINT stops it too', async (t) => {
  const port = await freePort()
  const served = serveProcess(['--port', String(port)])
  t.teardown(() => reap(served))
  await served.waitFor(/jobwire listening/)
  served.kill('SIGINT')
  t.equal((await served.exited).code, 0)
})

t.test('bad configuration fails fast with a message that says what to fix', async (t) => {
  const cases: Array<[string[], Record<string, string>, RegExp]> = [
    [['--port', 'abc'], {}, /--port: 'abc' is not a whole number from 0 to 65535/],
    [[], { PORT: '99999' }, /environment PORT: '99999' is not a whole number/],
    [['--redis', 'http://x'], {}, /--redis: 'http:\/\/x' must start with redis:\/\//],
    [['--workers', '2'], { REDIS_URL: '' }, /--workers 2 needs Redis/],
    [['--subscription-mode', 'psub'], {}, /must be one of per-job, pattern/],
    [['--terminal-ttl', '100', '--state-ttl', '10'], {}, /--terminal-ttl \(100\) must not exceed --state-ttl \(10\)/],
    [['--frobnicate', '1'], {}, /Unknown option '--frobnicate'/],
    [['--log-level', 'loud'], {}, /must be one of fatal, error/],
    [['--host', '0.0.0.0'], {}, /--host 0.0.0.0 is reachable from other machines, and no token verification is configured/],
    [['--jwt-secret', 'short'], {}, /--jwt-secret must be at least 32 bytes/],
    [['--jwt-public-key', '/nonexistent.pem'], {}, /--jwt-public-key \/nonexistent.pem: not a readable PEM public key/],
    [['--jwks-file', '/nonexistent.json'], {}, /--jwks-file \/nonexistent.json: not a readable JSON file/],
    [['--allowed-origins', 'example.com'], {}, /is not an origin like https:\/\/app.example.com/],
    [['--producer-key', 'abc'], {}, /--producer-key: use at least 16 characters/],
    [['--host', '0.0.0.0', '--workers', '2'], { REDIS_URL: 'redis://127.0.0.1:1' }, /no token verification is configured/],
  ]
  for (const [args, env, message] of cases) {
    const err = await run('node', [CLI, 'serve', ...args], { env: { ...process.env, REDIS_URL: '', ...env }, timeout: 10_000 })
      .then(() => null, (e: { code: number; stderr: string }) => e)
    t.equal(err?.code, 2, `${args.join(' ') || JSON.stringify(env)} exits 2`)
    t.match(err?.stderr, message)
  }
})

t.test('an address it cannot listen on is reported, and the process exits 1', async (t) => {
  // 203.0.113.1 (TEST-NET-3) is not an address of this machine, so bind() fails.
  const served = serveProcess(['--port', String(await freePort()), '--host', '203.0.113.1', '--insecure-no-auth'])
  t.teardown(() => reap(served))
  t.match(await served.waitFor(/failed to start/), /cannot listen on 203.0.113.1/)
  t.equal((await served.exited).code, 1)
  t.ok(served.lines.some((l) => /INSECURE: access control is off/.test(l)), 'the insecure mode is logged at every start')
})

t.test('help lists every option', async (t) => {
  const { stdout } = await run('node', [CLI, 'serve', '--help'])
  for (const flag of ['--port', '--redis', '--subscription-mode', '--max-message-bytes', '--workers']) t.match(stdout, flag)
})

t.test('workers that keep dying are restarted with backoff; the node never gives up', async (t) => {
  const { startRedis } = await import('./fixtures/redis.js')
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const port = await freePort()
  const served = serveProcess(['--port', String(port), '--workers', '2', '--redis', redis.url])
  t.teardown(() => reap(served))
  await served.waitFor(/jobwire listening/, 20_000)
  const workerPids = () => served.lines
    .filter((l) => /"msg":"worker listening"/.test(l))
    .map((l) => JSON.parse(l) as { pid: number; worker: number })
  // The workers' own lines may reach the pipe after the primary's announcement.
  for (const worker of [0, 1]) await served.waitFor(new RegExp(`"worker":${worker}.*"msg":"worker listening"`))
  // Six quick deaths in a row: the old policy gave up (and took the node down) after five.
  for (let kill = 1; kill <= 6; kill++) {
    const listening = workerPids()
    // Alternate between the two workers, so the test waits through three backoffs each.
    const victim = listening.filter((w) => w.worker === kill % 2).at(-1)!
    process.kill(victim.pid, 'SIGKILL')
    const restarted = (l: string) => /"msg":"worker listening"/.test(l) && JSON.parse(l).pid !== victim.pid &&
      !listening.some((w) => w.pid === JSON.parse(l).pid)
    await served.waitFor(new RegExp(`"worker":${victim.worker}.*"restartInMs"`), 20_000)
    await until(() => served.lines.some(restarted), `a new worker ${victim.worker} listening after kill ${kill}`, 20_000, 50)
    t.ok(served.lines.some(restarted), `restarted after kill ${kill}`)
  }
  const delays = served.lines.filter((l) => /"restartInMs"/.test(l)).map((l) => JSON.parse(l).restartInMs as number)
  t.ok(delays.some((d) => d >= 500), `later restarts wait longer (${delays.join(', ')} ms)`)
  t.equal(served.proc.exitCode, null, 'the node is still running')
  t.equal((await fetch(`http://127.0.0.1:${port}/healthz`)).status, 200)
})
