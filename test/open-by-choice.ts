// Shut by default, whatever the address (issue 18, items 5 and 8). Without a verification key
// the gateway runs only when told to (--open / JOBWIRE_OPEN=1) and says so at startup, loudly
// when a trusted proxy makes the network "local"; while open, browsers may use it only from its
// own origin and loopback origins (unless --allowed-origins says otherwise), Private Network
// Access is never answered unless asked for, and the demo routes serve the gateway's own page
// only. The pages take no token from their URL, and no log line carries a ?token=.

import t from 'tap'
import { execFile } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { promisify } from 'node:util'
import { projectPath } from '../src/support/paths.js'
import { redactFields, redactSecrets, SampledLog, type Logger } from '../src/support/log.js'
import { rawRequest, type RawAnswer } from './fixtures/raw-http.js'
import { startGateway, type TestGateway } from './fixtures/gateway.js'
import { freePort } from './fixtures/ports.js'
import { CLI, reap, serveProcess } from './fixtures/process.js'
import { SECRET, token } from './fixtures/tokens.js'
import { until } from './fixtures/until.js'
import { closeAll, connect, type TestClient } from './fixtures/ws-client.js'

const run = promisify(execFile)
const EVIL = 'https://evil.example'
/** No key, no --open: what a bare `jobwire serve` sees (the fixtures run open by default). */
const SHUT = { JOBWIRE_OPEN: '', JOBWIRE_JWT_SECRET: '', JOBWIRE_JWT_PUBLIC_KEY: '', JOBWIRE_JWKS_FILE: '', JOBWIRE_INSECURE_NO_AUTH: '', REDIS_URL: '' }

function raw(gw: TestGateway, method: string, path: string, headers: Record<string, string>, body?: string): Promise<RawAnswer> {
  return rawRequest(gw.port, method, path, headers, body)
}

async function upgradeWith(gw: TestGateway, origin: string | undefined, clients: Set<TestClient>): Promise<string> {
  return connect(gw.wsUrl, undefined, origin === undefined ? {} : { origin }, clients).then(() => 'connected', (err: Error) => err.message)
}

t.test('serve without a key and without --open refuses to start, naming both ways', async (t) => {
  const cases: Array<[string[], Record<string, string>]> = [
    [['--port', String(await freePort())], {}],
    // The refusal is the primary's, before any worker starts.
    [['--port', String(await freePort()), '--workers', '2', '--redis', 'redis://127.0.0.1:1'], {}],
    // The bind address changes nothing: loopback behind a same-host proxy is everyone.
    [['--port', String(await freePort()), '--trust-proxy'], {}],
  ]
  for (const [args, env] of cases) {
    const err = await run('node', [CLI, 'serve', ...args], { env: { ...process.env, ...SHUT, ...env }, timeout: 10_000 })
      .then(() => null, (e: { code: number; stderr: string }) => e)
    t.equal(err?.code, 2, `serve ${args.join(' ')} exits 2`)
    t.match(err?.stderr, /no token verification is configured/)
    t.match(err?.stderr, /--jwt-secret, --jwt-public-key or --jwks-file/, 'names the first way: a key')
    t.match(err?.stderr, /pass --open \(JOBWIRE_OPEN=1\)/, 'names the second way: --open')
  }
  // --open alone does not open a non-loopback address: that still needs --insecure-no-auth.
  const wide = await run('node', [CLI, 'serve', '--open', '--host', '0.0.0.0', '--port', String(await freePort())], { env: { ...process.env, ...SHUT }, timeout: 10_000 })
    .then(() => null, (e: { code: number; stderr: string }) => e)
  t.equal(wide?.code, 2)
  t.match(wide?.stderr, /--host 0.0.0.0 is reachable from other machines.*--insecure-no-auth/)
})

t.test('--open starts and says, at startup, that it is open and to whom', async (t) => {
  for (const [how, args, env] of [['--open', ['--open'], SHUT], ['JOBWIRE_OPEN=1', [], { ...SHUT, JOBWIRE_OPEN: '1' }]] as const) {
    const port = await freePort()
    const served = serveProcess([...args, '--port', String(port), '--log-format', 'json'], env)
    t.teardown(() => reap(served))
    await served.waitFor(/jobwire listening/)
    const line = JSON.parse(served.lines.find((l) => /access control is off/.test(l))!) as { level: string; msg: string }
    t.equal(line.level, 'warn', `${how}: a warning`)
    t.match(line.msg, /^OPEN: access control is off \(--open\), no token is asked for: anyone who can connect to 127\.0\.0\.1/, `${how}: says open, and to whom`)
    t.match(line.msg, /POST \/jobs\/<id>\/progress \(publish to any job\)/)
    t.match(line.msg, /in browsers, pages from its own origin and loopback origins/)
    t.notOk(served.lines.some((l) => /OPEN BEHIND A PROXY/.test(l)), 'no proxy warning without --trust-proxy')
    t.equal((await fetch(`http://127.0.0.1:${port}/jobs/anything`)).status, 404, 'anonymous reads work')
    served.kill('SIGTERM')
    t.equal((await served.exited).code, 0)
  }
})

t.test('--open with --trust-proxy warns loudly', async (t) => {
  const served = serveProcess(['--open', '--trust-proxy', '--port', String(await freePort()), '--log-format', 'json'], SHUT)
  t.teardown(() => reap(served))
  await served.waitFor(/jobwire listening/)
  const warning = JSON.parse(await served.waitFor(/OPEN BEHIND A PROXY/)) as { level: string; msg: string }
  t.equal(warning.level, 'warn')
  t.match(warning.msg, /--open with --trust-proxy: the proxy in front forwards every client on its network/)
  t.match(warning.msg, /Configure a key/)
})

t.test('--insecure-no-auth implies --open (non-loopback host), and a key makes both moot', async (t) => {
  const insecure = serveProcess(['--insecure-no-auth', '--host', '0.0.0.0', '--port', String(await freePort()), '--log-format', 'json'], SHUT)
  t.teardown(() => reap(insecure))
  await insecure.waitFor(/jobwire listening/)
  t.match(await insecure.waitFor(/access control is off/), /INSECURE: access control is off \(--insecure-no-auth\)/)
  insecure.kill('SIGTERM')
  await insecure.exited

  const port = await freePort()
  const keyed = serveProcess(['--open', '--port', String(port), '--log-format', 'json'], { ...SHUT, JOBWIRE_JWT_SECRET: SECRET })
  t.teardown(() => reap(keyed))
  await keyed.waitFor(/jobwire listening/)
  t.ok(keyed.lines.some((l) => /--open has no effect: a token verification key is configured/.test(l)), 'says --open is ignored')
  t.notOk(keyed.lines.some((l) => /access control is off/.test(l)))
  t.equal((await fetch(`http://127.0.0.1:${port}/jobs/anything`)).status, 401, 'a token is required')
})

t.test('while open: its own origin and loopback origins only', async (t) => {
  const gw = await startGateway({ demo: 'true' })
  t.teardown(() => gw.stop())
  const clients = new Set<TestClient>()
  t.teardown(() => closeAll(clients))
  t.same(gw.config.allowedOrigins, ['loopback'], 'no --allowed-origins while open: loopback')

  t.test('preflights', async (t) => {
    const evil = await raw(gw, 'OPTIONS', '/jobs/x/progress', { origin: EVIL, 'access-control-request-method': 'POST', 'access-control-request-private-network': 'true' })
    t.equal(evil.status, 403)
    t.equal(evil.headers['access-control-allow-origin'], undefined, 'no allow-origin for a website')
    t.equal(evil.headers['access-control-allow-private-network'], undefined, 'no private-network header')
    for (const path of ['/jobs', '/jobs/x', '/jobs/x/events']) {
      const answer = await raw(gw, 'OPTIONS', path, { origin: EVIL, 'access-control-request-method': 'GET' })
      t.equal(answer.status, 403, `preflight of ${path} from a website`)
      t.equal(answer.headers['access-control-allow-origin'], undefined)
    }
    for (const origin of ['http://localhost:5173', 'http://127.0.0.1:3000', 'https://127.1.2.3', 'http://[::1]:8000', 'http://LOCALHOST']) {
      const local = await raw(gw, 'OPTIONS', '/jobs/x', { origin, 'access-control-request-method': 'GET', 'access-control-request-private-network': 'true' })
      t.equal(local.status, 204, `a loopback origin: ${origin}`)
      t.equal(local.headers['access-control-allow-origin'], origin)
      t.match(local.headers.vary, /origin/i)
      t.equal(local.headers['access-control-allow-private-network'], undefined, 'not even for loopback, unless asked for')
    }
    for (const origin of ['http://localhost.evil.example', 'http://127.0.0.1.evil.example', 'http://evil.example:127', 'file://', 'null']) {
      t.equal((await raw(gw, 'OPTIONS', '/jobs/x', { origin, 'access-control-request-method': 'GET' })).status, 403, `not loopback: ${origin}`)
    }
    const own = await raw(gw, 'OPTIONS', '/jobs/x', { origin: gw.http, 'access-control-request-method': 'GET' })
    t.equal(own.status, 204, "the gateway's own origin")
  })

  t.test('WebSocket upgrades', async (t) => {
    t.equal(await upgradeWith(gw, EVIL, clients), 'upgrade refused: 403', 'a website is refused')
    t.equal(await upgradeWith(gw, 'http://localhost.evil.example:8080', clients), 'upgrade refused: 403')
    t.equal(await upgradeWith(gw, 'http://localhost:3000', clients), 'connected', 'a loopback origin')
    t.equal(await upgradeWith(gw, 'http://[::1]:3000', clients), 'connected', 'IPv6 loopback')
    t.equal(await upgradeWith(gw, gw.http, clients), 'connected', "the gateway's own origin")
    t.equal(await upgradeWith(gw, undefined, clients), 'connected', 'no Origin: not a browser')
  })

  t.test('job routes from a website', async (t) => {
    const post = await raw(gw, 'POST', '/jobs/planted-1/progress', { origin: EVIL, 'content-type': 'application/json' }, '{"progress":1}')
    t.equal(post.status, 403, 'a cross-origin POST /jobs/<id>/progress is refused')
    t.equal((await raw(gw, 'GET', '/jobs/planted-1', {})).status, 404, '...and nothing was stored')
    const mine = await raw(gw, 'GET', '/jobs?owner=me', { origin: EVIL })
    t.equal(mine.status, 403, 'GET /jobs?owner=me from a website')
    t.equal(mine.headers['access-control-allow-origin'], undefined)
    t.equal((await raw(gw, 'GET', '/jobs/planted-1', { origin: EVIL })).status, 403)
    t.equal((await raw(gw, 'GET', '/jobs/planted-1/events', { origin: EVIL })).status, 403)
    const local = await raw(gw, 'POST', '/jobs/local-1/progress', { origin: 'http://localhost:3000', 'content-type': 'application/json' }, '{"progress":2}')
    t.equal(local.status, 200, 'a loopback page may')
    t.equal(local.headers['access-control-allow-origin'], 'http://localhost:3000')
  })

  t.test('demo routes: the gateway\'s own page only', async (t) => {
    const crossSite = await raw(gw, 'POST', '/demo/jobs?outcome=success&step_ms=20', { origin: EVIL })
    t.equal(crossSite.status, 403, 'a cross-site POST /demo/jobs is refused')
    t.match(JSON.parse(crossSite.body), { error: 'origin_not_allowed' })
    t.equal((await raw(gw, 'POST', '/demo/jobs?outcome=success&step_ms=20', { origin: 'http://localhost:3000' })).status, 403, 'another loopback origin too: the demo is same-origin')
    t.equal((await raw(gw, 'POST', '/demo/jobs?outcome=success&step_ms=20', { 'sec-fetch-site': 'cross-site' })).status, 403, 'a cross-site request without Origin')
    const own = await raw(gw, 'POST', '/demo/jobs?outcome=success&step_ms=20', { origin: gw.http, 'sec-fetch-site': 'same-origin' })
    t.equal(own.status, 200, "the gateway's own page")
    t.match(JSON.parse(own.body), { job_id: /^video-/ })
    t.equal((await raw(gw, 'POST', '/demo/jobs?outcome=success&step_ms=20', {})).status, 200, 'curl (no Origin)')
  })
})

t.test('while open, a page on a rebound name (DNS rebinding) is refused by its Host', async (t) => {
  const gw = await startGateway({ demo: 'true' })
  t.teardown(() => gw.stop())
  const clients = new Set<TestClient>()
  t.teardown(() => closeAll(clients))
  // What a page on http://rebound.example:<port> sends once that name resolves to 127.0.0.1:
  // its own origin, as Origin (or none, for a same-origin GET), and its name as Host.
  const rebound = `rebound.example:${gw.port}`
  const page = { host: rebound, origin: `http://${rebound}` }
  await raw(gw, 'POST', '/jobs/secret-1/progress', { 'content-type': 'application/json' }, '{"status":"processing","secret":"s3"}')
  for (const [method, path, headers] of [
    ['GET', '/jobs/secret-1', { host: rebound }],
    ['GET', '/jobs/secret-1/events', page],
    ['GET', '/jobs?owner=me', { host: rebound }],
    ['POST', '/jobs/planted-2/progress', { ...page, 'content-type': 'application/json' }],
    ['POST', '/demo/jobs?outcome=success&step_ms=20', { ...page, 'sec-fetch-site': 'same-origin' }],
    ['GET', '/admin/connections', { host: rebound }],
    ['GET', '/metrics', { host: rebound }],
  ] as const) {
    const answer = await raw(gw, method, path, headers)
    t.equal(answer.status, 403, `${method} ${path} with Host ${rebound}`)
    t.notMatch(answer.body, /s3/)
  }
  t.match(JSON.parse((await raw(gw, 'GET', '/jobs/secret-1', { host: rebound })).body), { error: 'host_not_allowed', message: /configure a key/ })
  t.equal((await raw(gw, 'GET', '/jobs/planted-2', {})).status, 404, 'nothing was planted')
  const ws = await connect(gw.wsUrl, undefined, page, clients).then(() => 'connected', (err: Error) => err.message)
  t.equal(ws, 'upgrade refused: 403', 'a WebSocket from the rebound page')
  for (const host of [`127.0.0.1:${gw.port}`, `localhost:${gw.port}`, `LOCALHOST`, `[::1]:${gw.port}`, '127.9.9.9']) {
    t.equal((await raw(gw, 'GET', '/jobs/secret-1', { host })).status, 200, `Host ${host}`)
  }

  const keyed = await startGateway({ 'jwt-secret': SECRET })
  t.teardown(() => keyed.stop())
  t.equal((await raw(keyed, 'GET', '/healthz', { host: 'jobs.example.com' })).status, 200, 'with a key, any name (tokens decide)')
  const proxied = await startGateway({ 'trust-proxy': 'true', 'trusted-proxies': '127.0.0.1/32' })
  t.teardown(() => proxied.stop())
  t.equal((await raw(proxied, 'GET', '/healthz', { host: 'jobs.example.com', 'x-forwarded-for': '203.0.113.9' })).status, 403,
    'open behind a trusted proxy: X-Forwarded-For proves nothing (a rebound page can send it too)')
  t.equal((await raw(proxied, 'GET', '/healthz', { host: '127.0.0.1', 'x-forwarded-for': '203.0.113.9' })).status, 200,
    '...a proxy that sends a loopback Host is answered')
})

t.test('while open, --allowed-origins says otherwise; --allow-private-network asks for the header', async (t) => {
  const listed = await startGateway({ 'allowed-origins': EVIL, 'allow-private-network': 'true', demo: 'true' })
  t.teardown(() => listed.stop())
  const clients = new Set<TestClient>()
  t.teardown(() => closeAll(clients))
  const preflight = await raw(listed, 'OPTIONS', '/jobs/x', { origin: EVIL, 'access-control-request-method': 'GET', 'access-control-request-private-network': 'true' })
  t.equal(preflight.status, 204)
  t.equal(preflight.headers['access-control-allow-origin'], EVIL)
  t.equal(preflight.headers['access-control-allow-private-network'], 'true', 'asked for, and the origin is allowed')
  t.equal((await raw(listed, 'OPTIONS', '/jobs/x', { origin: 'http://localhost:3000', 'access-control-request-method': 'GET' })).status, 403, 'the list replaces loopback')
  t.equal(await upgradeWith(listed, EVIL, clients), 'connected')
  t.equal((await raw(listed, 'POST', '/demo/jobs', { origin: EVIL })).status, 403, 'the demo stays same-origin whatever the list')

  const any = await startGateway({ 'allowed-origins': '*' })
  t.teardown(() => any.stop())
  const anywhere = await raw(any, 'GET', '/jobs/x', { origin: EVIL })
  t.equal(anywhere.headers['access-control-allow-origin'], '*', '* is any origin, on purpose')
  t.equal(anywhere.headers['access-control-allow-credentials'], undefined)
})

t.test('with a key, an empty list still means any origin (tokens are needed anyway)', async (t) => {
  const gw = await startGateway({ 'jwt-secret': SECRET })
  t.teardown(() => gw.stop())
  t.same(gw.config.allowedOrigins, [])
  const get = await raw(gw, 'GET', '/jobs/x', { origin: EVIL, authorization: `Bearer ${await token('u1')}` })
  t.equal(get.headers['access-control-allow-origin'], '*')
  const preflight = await raw(gw, 'OPTIONS', '/jobs/x', { origin: EVIL, 'access-control-request-method': 'GET', 'access-control-request-private-network': 'true' })
  t.equal(preflight.status, 204)
  t.equal(preflight.headers['access-control-allow-private-network'], undefined, 'no private-network header unless --allow-private-network')
})

t.test('the pages take no token (and no address) from their URL', async (t) => {
  const dir = projectPath('src', 'pages')
  const pages = readdirSync(dir).filter((f) => f.endsWith('.html'))
  t.ok(pages.length >= 3)
  for (const file of pages) {
    const html = readFileSync(`${dir}/${file}`, 'utf8')
    t.notMatch(html, /\.get\(\s*['"](token|key|access_token|url)['"]\s*\)/, `${file} reads no token from the query`)
    t.notMatch(html, /location\.(hash|href)/, `${file} reads nothing from the URL's fragment`)
    t.notMatch(html, /[?&]token=/, `${file} puts no token in a URL it builds`)
    t.notMatch(html, /\{\s*token\s*\}\s*:/, `${file} sends no token as a query parameter`)
  }
})

t.test('credentials are redacted from log lines', async (t) => {
  t.equal(redactSecrets('GET /ws/jobs?token=eyJ.abc.def&x=1'), 'GET /ws/jobs?token=[redacted]&x=1')
  t.equal(redactSecrets('/jobs/a/events?last=3&token=abc'), '/jobs/a/events?last=3&token=[redacted]')
  t.equal(redactSecrets('authorization: Bearer eyJhbGciOi.x.y'), 'authorization: Bearer [redacted]')
  t.equal(redactSecrets('/admin?key=0123456789abcdef'), '/admin?key=[redacted]')
  t.equal(redactSecrets('nothing to see'), 'nothing to see')
  const fields = { url: '/ws/jobs?token=SECRET', n: 1 }
  t.same(redactFields(fields), { url: '/ws/jobs?token=[redacted]', n: 1 })
  t.equal(fields.url, '/ws/jobs?token=SECRET', 'the caller\'s object is not changed')

  const lines: Array<{ fields: Record<string, unknown>; msg: string }> = []
  const log = { info: (f: Record<string, unknown>, msg: string) => lines.push({ fields: f, msg }) } as unknown as Logger
  new SampledLog().info(log, 'refused', { transport: 'websocket', url: '/ws/jobs?token=SECRET-IN-URL' }, 'refused /ws/jobs?token=SECRET-IN-MSG')
  t.notMatch(JSON.stringify(lines), /SECRET/, 'the access log redacts whatever logger it is given')

  // Every logger jobwire creates redacts, child loggers included: the message and the fields.
  const script = `import { createLogger } from ${JSON.stringify(projectPath('dist', 'src', 'support', 'log.js'))}
    const log = createLogger('info').child({ component: 'x' })
    log.info({ url: '/ws/jobs?token=SECRET-A', headers: { authorization: 'Bearer SECRET-B' }, list: ['/x?token=SECRET-C'] }, 'upgrade /ws/jobs?token=SECRET-D')
    log.warn('plain ?token=SECRET-E')`
  const { stdout } = await run('node', ['--input-type=module', '-e', script])
  t.notMatch(stdout, /SECRET/, stdout)
  t.match(stdout, /token=\[redacted\]/)
})

t.test('a served gateway\'s access log never holds a ?token=', async (t) => {
  const port = await freePort()
  const served = serveProcess(['--port', String(port), '--log-format', 'json', '--log-level', 'trace', '--connect-rate-per-ip', '0', '--max-connections-per-ip', '0'],
    { JOBWIRE_JWT_SECRET: SECRET })
  t.teardown(() => reap(served))
  await served.waitFor(/jobwire listening/)
  const clients = new Set<TestClient>()
  t.teardown(() => closeAll(clients))
  const good = await token('user-log')
  const bad = `${good.slice(0, -6)}AAAAAA`
  const c = await connect(`ws://127.0.0.1:${port}/ws/jobs?token=${good}`, undefined, {}, clients)
  await c.subscribe('log-job-1').catch(() => undefined)
  await connect(`ws://127.0.0.1:${port}/ws/jobs?token=${bad}`, undefined, {}, clients).catch(() => undefined)
  await connect(`ws://127.0.0.1:${port}/ws/jobs?token=${good}`, undefined, { origin: EVIL }, clients).catch(() => undefined)
  const stream = new AbortController()
  await fetch(`http://127.0.0.1:${port}/jobs/log-job-1/events?token=${good}`, { signal: stream.signal }).catch(() => undefined)
  stream.abort()
  await closeAll(clients)
  await until(() => served.lines.some((l) => /"access":"close"/.test(l)), 'the close line')
  const signature = good.split('.')[2]!
  t.ok(served.lines.some((l) => /"user":"user-log"/.test(l)), 'the connection was logged')
  t.notOk(served.lines.some((l) => l.includes(signature) || l.includes(bad)), 'no line holds the token')
})
