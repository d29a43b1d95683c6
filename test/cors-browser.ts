// CORS in real headless Chromium: a page served on another port (another origin) imports the
// gateway's /client.js, watches a job with JobsClient, polls GET /jobs/<id> with a bearer
// token (a preflighted request) and opens the SSE stream; the same page on an origin that is
// not in --allowed-origins still imports the public client but is refused the job routes.
// Then the header rules themselves, request by request: echo + Vary + credentials for a listed
// origin, `*` without credentials for "any origin", nothing for requests without Origin.

import t from 'tap'
import { createServer, type Server } from 'node:http'
import type { Browser, Page } from 'playwright-core'
import { launchBrowser } from './fixtures/browser.js'
import { rawRequest, type RawAnswer } from './fixtures/raw-http.js'
import { startGateway, type TestGateway } from './fixtures/gateway.js'
import { freePort } from './fixtures/ports.js'
import { SECRET, token } from './fixtures/tokens.js'

/** The page a developer would write on their own site, with the gateway's address and a token
 * in its query string. It records what worked in window.result. */
const PAGE = `<!doctype html><meta charset="utf-8"><title>another origin</title>
<script type="module">
  const q = new URLSearchParams(location.search)
  const gw = q.get('gw'), token = q.get('token')
  const result = (window.result = {})
  try {
    const { JobsClient } = await import(gw + '/client.js')
    result.imported = typeof JobsClient
    const jobs = new JobsClient({ url: gw.replace('http', 'ws') + '/ws/jobs', token, fallbackAfterFailures: 100 })
    window.jobsClient = jobs
    result.live = []
    jobs.subscribe('cors-1', { onStatus: (d) => result.live.push(['status', d && d.progress]), onUpdate: (d) => result.live.push(['update', d.progress]) })
  } catch (e) { result.importError = String(e) }
  try {
    const r = await fetch(gw + '/jobs/cors-1', { headers: { authorization: 'Bearer ' + token } })
    result.poll = { status: r.status, body: await r.json() }
  } catch (e) { result.pollError = String(e) }
  try {
    const r = await fetch(gw + '/jobs/cors-1')
    result.unauthorized = { status: r.status, body: await r.json() }
  } catch (e) { result.unauthorizedError = String(e) }
  result.sse = await new Promise((resolve) => {
    const es = new EventSource(gw + '/jobs/cors-1/events?token=' + encodeURIComponent(token))
    const timer = setTimeout(() => { es.close(); resolve({ timeout: true }) }, 5000)
    es.addEventListener('job_status', (e) => { clearTimeout(timer); es.close(); resolve({ data: JSON.parse(e.data) }) })
    es.onerror = () => { clearTimeout(timer); es.close(); resolve({ error: true }) }
  })
  result.done = true
</script>`

interface PageResult {
  done?: boolean
  imported?: string
  importError?: string
  live?: Array<[string, number | undefined]>
  poll?: { status: number; body: { data?: { progress?: number } } }
  pollError?: string
  unauthorized?: { status: number; body: { error?: string } }
  unauthorizedError?: string
  sse?: { data?: { data?: { progress?: number } }; error?: boolean; timeout?: boolean }
}

function servePage(port: number): Promise<Server> {
  const server = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' })
    res.end(PAGE)
  })
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve(server)))
}

async function openPage(browser: Browser, url: string): Promise<{ page: Page; result: PageResult }> {
  const page = await browser.newPage()
  await page.goto(url)
  await page.waitForFunction(() => (window as unknown as { result?: { done?: boolean } }).result?.done === true, undefined, { timeout: 20_000 })
  return { page, result: await page.evaluate(() => (window as unknown as { result: PageResult }).result) }
}

async function publish(gw: TestGateway, jobId: string, body: Record<string, unknown>, owner?: string): Promise<void> {
  const producer = await token('worker', { role: 'producer' })
  const res = await fetch(`${gw.http}/jobs/${jobId}/progress${owner ? `?owner=${owner}` : ''}`, {
    method: 'POST', headers: { authorization: `Bearer ${producer}`, 'content-type': 'application/json' }, body: JSON.stringify(body),
  })
  if (res.status !== 200) throw new Error(`publish refused: ${res.status} ${await res.text()}`)
}

function raw(gw: TestGateway, method: string, path: string, headers: Record<string, string>, body?: string): Promise<RawAnswer> {
  return rawRequest(gw.port, method, path, headers, body)
}

t.test('a page on another origin', async (t) => {
  const pagePort = await freePort()
  const allowed = `http://127.0.0.1:${pagePort}`
  const gw = await startGateway({ 'jwt-secret': SECRET, 'allowed-origins': allowed })
  t.teardown(() => gw.stop())
  const server = await servePage(pagePort)
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())))
  const browser = await launchBrowser()
  t.teardown(() => browser.close())
  await publish(gw, 'cors-1', { status: 'processing', progress: 30 }, 'user-7')
  const userToken = await token('user-7')

  t.test('an allowed origin imports /client.js, watches live, polls and streams', async (t) => {
    const { page, result } = await openPage(browser, `${allowed}/?gw=${encodeURIComponent(gw.http)}&token=${encodeURIComponent(userToken)}`)
    t.teardown(() => page.close())
    t.equal(result.importError, undefined)
    t.equal(result.imported, 'function')
    t.equal(result.pollError, undefined, 'the preflighted poll was allowed')
    t.match(result.poll, { status: 200, body: { data: { progress: 30 } } })
    t.match(result.unauthorized, { status: 401, body: { error: 'unauthorized' } }, 'the page can read why it was refused')
    t.match(result.sse, { data: { data: { progress: 30 } } }, 'the SSE stream opened and sent the snapshot')
    await page.waitForFunction(() => (window as unknown as { result: PageResult }).result.live!.length > 0)
    await publish(gw, 'cors-1', { progress: 60 })
    await page.waitForFunction(() => (window as unknown as { result: PageResult }).result.live!.some(([kind]) => kind === 'update'))
    const live = await page.evaluate(() => (window as unknown as { result: PageResult }).result.live!)
    t.same(live.at(-1), ['update', 60], 'JobsClient from /client.js received the update over WebSocket')
  })

  t.test('an origin not in --allowed-origins still loads the public client but is refused the job routes', async (t) => {
    // localhost and 127.0.0.1 are different origins for the browser, though the same server.
    const other = `http://localhost:${pagePort}`
    const { page, result } = await openPage(browser, `${other}/?gw=${encodeURIComponent(gw.http)}&token=${encodeURIComponent(userToken)}`)
    t.teardown(() => page.close())
    t.equal(result.imported, 'function', '/client.js is public')
    t.equal(result.poll, undefined)
    t.match(result.pollError, /Failed to fetch/)
    t.match(result.unauthorizedError, /Failed to fetch/)
    t.same(result.sse, { error: true })
    const state = await page.evaluate(() => (window as unknown as { jobsClient: { state: string } }).jobsClient.state)
    t.not(state, 'open', 'the WebSocket upgrade was refused')
  })

  t.test('the headers, request by request', async (t) => {
    const evil = 'http://evil.example'
    const preflight = await raw(gw, 'OPTIONS', '/jobs/cors-1', { origin: allowed, 'access-control-request-method': 'GET', 'access-control-request-headers': 'authorization' })
    t.equal(preflight.status, 204)
    t.match(preflight.headers, {
      'access-control-allow-origin': allowed,
      'access-control-allow-credentials': 'true',
      'access-control-allow-methods': 'GET',
      'access-control-allow-headers': /authorization/,
      vary: /origin/i,
    })
    for (const [path, method] of [['/jobs/cors-1/events', 'GET'], ['/jobs/cors-1/progress', 'POST'], ['/jobs?owner=me', 'GET']] as const) {
      const answer = await raw(gw, 'OPTIONS', path, { origin: allowed, 'access-control-request-method': method })
      t.equal(answer.status, 204, `preflight of ${path}`)
      t.equal(answer.headers['access-control-allow-methods'], method)
    }
    const refused = await raw(gw, 'OPTIONS', '/jobs/cors-1', { origin: evil, 'access-control-request-method': 'GET' })
    t.equal(refused.status, 403)
    t.equal(refused.headers['access-control-allow-origin'], undefined)
    const get = await raw(gw, 'GET', '/jobs/cors-1', { origin: evil, authorization: `Bearer ${userToken}` })
    t.equal(get.status, 403)
    t.match(JSON.parse(get.body), { error: 'origin_not_allowed' })
    const post = await raw(gw, 'POST', '/jobs/cors-1/progress', { origin: evil, 'content-type': 'application/json' }, '{"progress":1}')
    t.equal(post.status, 403, 'the producer API refuses it before reading the body')
    const sse = await raw(gw, 'GET', '/jobs/cors-1/events', { origin: evil })
    t.equal(sse.status, 403)
    const noOrigin = await raw(gw, 'GET', '/jobs/cors-1', { authorization: `Bearer ${userToken}` })
    t.equal(noOrigin.status, 200, 'a request without Origin (a worker, curl) is not a CORS request')
    t.equal(noOrigin.headers['access-control-allow-origin'], undefined)
    const own = await raw(gw, 'GET', '/jobs/cors-1', { origin: gw.http, authorization: `Bearer ${userToken}` })
    t.equal(own.status, 200, 'the gateway\'s own pages are same-origin')
    const client = await raw(gw, 'GET', '/client.js', { origin: evil })
    t.equal(client.status, 200)
    t.equal(client.headers['access-control-allow-origin'], '*')
    t.equal(client.headers['access-control-allow-credentials'], undefined)
  })
})

t.test('empty --allowed-origins with a key: any origin, never with credentials', async (t) => {
  // With a verification key every route needs a token anyway. Without one (--open) an empty
  // list means loopback origins only (test/open-by-choice.ts).
  const gw = await startGateway({ 'jwt-secret': SECRET })
  t.teardown(() => gw.stop())
  const origin = 'https://anywhere.example'
  const producer = await token('worker', { role: 'producer' })
  const get = await raw(gw, 'GET', '/jobs/any-1', { origin, authorization: `Bearer ${producer}` })
  t.equal(get.status, 403, 'a producer token may not read the job; the CORS headers are there all the same')
  t.equal(get.headers['access-control-allow-origin'], '*')
  t.equal(get.headers['access-control-allow-credentials'], undefined, 'never * together with credentials')
  t.match(get.headers['access-control-expose-headers'], /retry-after/)
  const preflight = await raw(gw, 'OPTIONS', '/jobs/any-1/progress', { origin, 'access-control-request-method': 'POST', 'access-control-request-private-network': 'true' })
  t.equal(preflight.status, 204)
  t.equal(preflight.headers['access-control-allow-origin'], '*')
  t.equal(preflight.headers['access-control-allow-credentials'], undefined)
  t.equal(preflight.headers['access-control-allow-private-network'], undefined, 'Private Network Access only with --allow-private-network')
  const post = await raw(gw, 'POST', '/jobs/any-1/progress', { origin, 'content-type': 'application/json', authorization: `Bearer ${producer}` }, '{"progress":5}')
  t.equal(post.status, 200, post.body)
  t.equal(post.headers['access-control-allow-origin'], '*')
})

t.test('--allow-private-network: a public page may reach a gateway on a private address', async (t) => {
  const gw = await startGateway({ 'jwt-secret': SECRET, 'allow-private-network': 'true' })
  t.teardown(() => gw.stop())
  const preflight = await raw(gw, 'OPTIONS', '/jobs/any-1', { origin: 'https://anywhere.example', 'access-control-request-method': 'GET', 'access-control-request-private-network': 'true' })
  t.equal(preflight.status, 204)
  t.equal(preflight.headers['access-control-allow-private-network'], 'true')
  const unasked = await raw(gw, 'OPTIONS', '/jobs/any-1', { origin: 'https://anywhere.example', 'access-control-request-method': 'GET' })
  t.equal(unasked.headers['access-control-allow-private-network'], undefined, 'only when the browser asks')
})
