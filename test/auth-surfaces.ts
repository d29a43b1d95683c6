// A wrong or expired token surfaces, in Chromium. Before: with getToken returning a token
// signed with another secret, three WebSocket 401s (seen by the browser only as failed
// sockets), then the fallback, then SSE 401, then GET /jobs/<id> polled every ~2 s with 401,
// getToken called again and again, and onError never fired; the pages showed a blue
// "fallback" badge. Now: onError once with token_invalid and the gateway's reason, no
// fallback, getToken asked again after backoff only, and the pages say "not authorised".

import t from 'tap'
import { createServer } from 'node:http'
import { launchBrowser } from './fixtures/browser.js'
import { startGateway } from './fixtures/gateway.js'
import { SECRET, token } from './fixtures/tokens.js'

const PAGE = `<!doctype html><meta charset="utf-8"><title>app on another origin</title>
<script type="module">
  const q = new URLSearchParams(location.search)
  const gw = q.get('gw')
  const seen = (window.seen = { errors: [], states: [], tokens: 0 })
  const { JobsClient } = await import(gw + '/client.js')
  const jobs = new JobsClient({
    url: gw.replace('http', 'ws') + '/ws/jobs',
    getToken: async () => { seen.tokens++; return q.get('token') },
    minReconnectDelayMs: 200, maxReconnectDelayMs: 2000,
  })
  jobs.addEventListener('statechange', (e) => seen.states.push(e.detail.newState))
  jobs.subscribe('auth-1', { onError: (err) => seen.errors.push({ code: err.code, message: err.message }) })
</script>`

t.test('a token signed with another secret: onError once, no fallback, getToken with backoff', async (t) => {
  const gw = await startGateway({ 'jwt-secret': SECRET, 'allowed-origins': '*' })
  t.teardown(() => gw.stop())
  const app = createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/html' }).end(PAGE))
  await new Promise<void>((resolve) => app.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => { app.closeAllConnections(); app.close(() => resolve()) }))
  const browser = await launchBrowser()
  t.teardown(() => browser.close())
  const page = await browser.newPage()
  page.on('pageerror', (err) => t.fail(`page error: ${err.message}`))
  const requests: string[] = []
  page.on('request', (req) => requests.push(`${req.method()} ${new URL(req.url()).pathname}`))
  const wrong = await token('alice', {}, 3600, 'another-secret-that-is-also-32-bytes-long')
  await page.goto(`http://127.0.0.1:${(app.address() as { port: number }).port}/?gw=${encodeURIComponent(gw.http)}&token=${encodeURIComponent(wrong)}`)
  await page.waitForFunction(() => (window as unknown as { seen: { errors: unknown[] } }).seen?.errors.length > 0, undefined, { timeout: 10_000 })
  // Long enough for several attempts with backoff (200 ms growing to 2 s).
  await page.waitForTimeout(5000)
  const seen = await page.evaluate(() => (window as unknown as { seen: { errors: Array<{ code: string; message: string }>; states: string[]; tokens: number } }).seen)
  t.same(seen.errors.map((e) => e.code), ['token_invalid'], 'onError once, token_invalid')
  t.match(seen.errors[0]!.message, /invalid token: signature verification failed/, "with the gateway's reason")
  t.notOk(seen.states.includes('fallback'), `never in fallback (${seen.states.join(' → ')})`)
  t.notOk(requests.some((r) => /\/events$|^GET \/jobs\/auth-1$/.test(r)), 'no SSE stream, no polling')
  t.ok(seen.tokens >= 2, `getToken asked again (${seen.tokens} times in 5 s)`)
  t.ok(seen.tokens <= 12, `with backoff, not in a tight loop (${seen.tokens} times in 5 s)`)
})

t.test('the demo and test pages say "not authorised", with the reason', async (t) => {
  const gw = await startGateway({ 'jwt-secret': SECRET })
  t.teardown(() => gw.stop())
  const browser = await launchBrowser()
  t.teardown(() => browser.close())
  const page = await browser.newPage()
  const expired = await token('alice', {}, -60)
  await page.goto(`${gw.http}/`)
  await page.evaluate((tk) => sessionStorage.setItem('jobwire-token', tk), expired)
  await page.reload()
  await page.locator('#state[data-state="unauthorized"]').waitFor({ timeout: 10_000 })
  t.equal(await page.locator('#state').textContent(), 'not authorised')
  t.match(await page.locator('#banner').textContent(), /Not authorised: token expired/)
})
