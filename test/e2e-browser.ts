// End to end in real headless Chromium (Debian's, driven by playwright-core): the demo page
// runs a job to completion; it survives a gateway restart mid-job; with WebSocket upgrades
// refused (a proxy that blocks them) it falls back and still shows progress; the test page's
// ping shows a round-trip time. JOBWIRE_SCREENSHOTS=1 (make screenshots) saves the pages'
// pictures into docs/screenshots/ for the README.

import t from 'tap'
import { createServer, request, type Server } from 'node:http'
import { mkdirSync } from 'node:fs'
import type { Browser, Page } from 'playwright-core'
import { projectPath } from '../src/support/paths.js'
import { Producer } from '../src/producer/producer.js'
import { launchBrowser } from './fixtures/browser.js'
import { startGateway } from './fixtures/gateway.js'
import { freePort } from './fixtures/ports.js'
import { reap, serveProcess, type Served } from './fixtures/process.js'
import { startRedis } from './fixtures/redis.js'

const SCREENSHOTS = process.env.JOBWIRE_SCREENSHOTS ? projectPath('docs', 'screenshots') : null

const pages: Page[] = []

async function newPage(browser: Browser, width = 900, height = 720): Promise<Page> {
  const page = await browser.newPage({ viewport: { width, height } })
  pages.push(page)
  page.on('pageerror', (err) => t.fail(`page error: ${err.message}`))
  // Every state the client passes through, recorded in the page.
  await page.addInitScript(() => {
    const w = window as unknown as { states: string[] }
    w.states = []
    const timer = setInterval(() => {
      const client = (window as unknown as { jobwire?: { state: string; addEventListener: (t: string, f: (e: CustomEvent) => void) => void } }).jobwire
      if (!client || typeof client !== 'object') return
      clearInterval(timer)
      w.states.push(client.state)
      client.addEventListener('statechange', (e) => w.states.push(e.detail.newState))
    }, 1)
  })
  return page
}

const states = (page: Page) => page.evaluate(() => (window as unknown as { states: string[] }).states)

/** An HTTP proxy that refuses every WebSocket upgrade, as some corporate proxies do. */
function blockingProxy(targetPort: number): Promise<{ server: Server; port: number }> {
  const server = createServer((req, res) => {
    const upstream = request({ host: '127.0.0.1', port: targetPort, path: req.url, method: req.method, headers: req.headers }, (up) => {
      res.writeHead(up.statusCode ?? 502, up.headers)
      up.pipe(res)
    })
    upstream.on('error', () => res.destroy())
    req.pipe(upstream)
  })
  server.on('upgrade', (_req, socket) => socket.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n'))
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, port: (server.address() as { port: number }).port })))
}

t.test('browser end to end', async (t) => {
  const browser = await launchBrowser()
  t.teardown(() => browser.close())
  // Each subtest's pages close before its servers stop (teardowns run last-registered first).
  t.afterEach(async () => {
    for (const page of pages.splice(0)) await page.close()
  })
  if (SCREENSHOTS) mkdirSync(SCREENSHOTS, { recursive: true })

  t.test('the demo page runs a job to 100% and shows it completed', async (t) => {
    const gw = await startGateway({ demo: 'true' })
    t.teardown(() => gw.stop())
    const page = await newPage(browser)
    await page.goto(`${gw.http}/?step_ms=40&outcome=success`)
    await page.click('#start')
    const card = page.locator('[data-job-id]').first()
    await card.locator('.badge[data-status="completed"]').waitFor({ timeout: 15_000 })
    t.equal(await card.getAttribute('data-progress'), '100')
    t.equal(await card.locator('.percent').textContent(), '100%')
    t.match(await card.locator('.result .path').textContent(), /downloads\/video-[0-9a-f]+\.mp4/)
    t.equal(await card.locator('.result a').count(), 0, 'the simulated file is named, not linked')
    t.equal(await page.locator('#state').getAttribute('data-state'), 'open')
    t.same(await states(page), ['connecting', 'open'])
    if (SCREENSHOTS) {
      await page.goto(`${gw.http}/?step_ms=120&outcome=success`)
      await page.click('#start')
      await page.waitForTimeout(500)
      await page.click('#start-fail')
      await page.waitForTimeout(400)
      await page.click('#start')
      await page.locator('.badge[data-status="completed"]').first().waitFor({ timeout: 15_000 })
      await page.locator('.badge[data-status="failed"]').first().waitFor({ timeout: 15_000 })
      await page.screenshot({ path: `${SCREENSHOTS}/demo.png` })
      const phone = await newPage(browser, 390, 760)
      await phone.goto(`${gw.http}/?step_ms=150`)
      await phone.click('#start')
      await phone.waitForTimeout(1200)
      await phone.screenshot({ path: `${SCREENSHOTS}/demo-phone.png` })
    }
  })

  t.test('a gateway restart mid-job: the page reconnects, resubscribes and ends at the true final state', async (t) => {
    const redis = await startRedis()
    t.teardown(() => redis.stop())
    const port = await freePort()
    const args = ['--port', String(port), '--redis', redis.url, '--workers', '1']
    let gateway: Served = serveProcess(args)
    t.teardown(() => reap(gateway))
    await gateway.waitFor(/jobwire listening/)
    const producer = new Producer({ redis: redis.url })
    t.teardown(() => producer.close())
    await producer.progress('e2e-restart', { status: 'processing', progress: 10, message: 'step 1', title: 'Restart test' })
    const page = await newPage(browser)
    await page.goto(`http://127.0.0.1:${port}/?watch=e2e-restart`)
    await page.locator('[data-job-id="e2e-restart"][data-progress="10"]').waitFor({ timeout: 10_000 })
    await producer.progress('e2e-restart', { status: 'processing', progress: 30, message: 'step 2' })
    await page.locator('[data-job-id="e2e-restart"][data-progress="30"]').waitFor()

    gateway.kill('SIGTERM')
    await gateway.exited
    // While the gateway is down, the job moves on and finishes.
    await producer.progress('e2e-restart', { status: 'processing', progress: 70, message: 'step 3' })
    await producer.progress('e2e-restart', { status: 'completed', progress: 100, message: 'done', result: { url: '/downloads/x.mp4', size_mb: 1 } })
    await page.waitForFunction(() => (window as unknown as { states: string[] }).states.includes('reconnecting'))
    gateway = serveProcess(args)
    await gateway.waitFor(/jobwire listening/)
    const card = page.locator('[data-job-id="e2e-restart"]')
    await card.locator('.badge[data-status="completed"]').waitFor({ timeout: 20_000 })
    t.equal(await card.getAttribute('data-progress'), '100')
    t.equal(await card.locator('.message').textContent(), 'done')
    const seen = await states(page)
    t.same(seen.slice(0, 2), ['connecting', 'open'])
    // Under load the restart can outlast the client's WebSocket attempts: it then watches through
    // the SSE/polling fallback, as designed, and returns to WebSocket later.
    t.ok(seen.includes('reconnecting') && (seen.at(-1) === 'open' || seen.at(-1) === 'fallback'), `reconnected: ${seen.join(' -> ')}`)
    gateway.kill('SIGTERM')
    await gateway.exited
  })

  t.test('with WebSocket upgrades refused, the page falls back (SSE/polling) and still shows progress', async (t) => {
    const gw = await startGateway()
    t.teardown(() => gw.stop())
    const proxy = await blockingProxy(gw.port)
    t.teardown(() => new Promise<void>((resolve) => {
      proxy.server.closeAllConnections() // the page's SSE stream through the proxy never ends by itself
      proxy.server.close(() => resolve())
    }))
    const produce = (payload: object) => gw.gateway.broker.publishProgress('e2e-fb', Buffer.from(JSON.stringify(payload)))
    await produce({ status: 'queued', progress: 0, title: 'Fallback test' })
    const page = await newPage(browser)
    await page.goto(`http://127.0.0.1:${proxy.port}/?watch=e2e-fb&fallback_after=2`)
    await page.locator('#state[data-state="fallback"]').waitFor({ timeout: 15_000 })
    await page.locator('[data-job-id="e2e-fb"][data-status="queued"]').waitFor({ timeout: 10_000 })
    for (const progress of [25, 60]) {
      await produce({ status: 'processing', progress, message: `at ${progress}%` })
      await page.locator(`[data-job-id="e2e-fb"][data-progress="${progress}"]`).waitFor({ timeout: 10_000 })
    }
    await produce({ status: 'completed', progress: 100, message: 'done' })
    await page.locator('[data-job-id="e2e-fb"] .badge[data-status="completed"]').waitFor({ timeout: 10_000 })
    t.equal(await page.locator('#state').getAttribute('data-state'), 'fallback')
    t.ok(!(await states(page)).includes('open'), 'never on WebSocket')
    t.pass('progress shown without WebSocket')
  })

  t.test("the test page's ping shows a round-trip time", async (t) => {
    const gw = await startGateway()
    t.teardown(() => gw.stop())
    await gw.gateway.broker.publishProgress('video-42', Buffer.from('{"status":"processing","progress":42,"message":"transcoding"}'))
    const page = await newPage(browser)
    await page.goto(`${gw.http}/ws/jobs/test`)
    await page.locator('#state[data-state="open"]').waitFor({ timeout: 10_000 })
    await page.fill('#job', 'video-42')
    await page.click('#subscribe')
    await page.locator('#log li[data-type="job_status"]').waitFor()
    await gw.gateway.broker.publishProgress('video-42', Buffer.from('{"status":"processing","progress":43}'))
    await page.locator('#log li[data-type="job_update"]').waitFor()
    t.match(await page.locator('#log li[data-type="job_update"] .lat').textContent(), /^\d+ ms$/, 'end-to-end latency shown where ts is present')
    await page.click('#ping')
    await page.waitForFunction(() => /\d+(\.\d)? ms/.test(document.getElementById('rtt')!.textContent ?? ''))
    const rtt = Number(await page.locator('#rtt').getAttribute('data-rtt'))
    t.ok(rtt >= 0 && rtt < 5000, `rtt ${rtt} ms`)
    if (SCREENSHOTS) await page.screenshot({ path: `${SCREENSHOTS}/test-page.png` })
  })
})
