// The admin page (/admin) and GET /admin/jobs: admin credentials required for every piece of
// data; the page shows workers, the most watched jobs, connections by user, live counters and
// recent refusals, and disconnects a user (in Chromium).

import t from 'tap'
import { launchBrowser } from './fixtures/browser.js'
import { startGateway } from './fixtures/gateway.js'
import { SECRET, token } from './fixtures/tokens.js'
import { until } from './fixtures/until.js'

const ADMIN_KEY = 'admin-key-for-the-admin-page-test'

t.test('admin page', async (t) => {
  const gw = await startGateway({ 'jwt-secret': SECRET, 'admin-key': ADMIN_KEY })
  t.teardown(() => gw.stop())
  const publish = (id: string) => gw.gateway.broker.publishProgress(id, Buffer.from('{"status":"processing"}'), { owner: 'carol' })
  await publish('hot-1')
  await publish('cold-1')
  const carol = await token('carol')
  const watchers = await Promise.all([gw.connectAs(carol), gw.connectAs(carol), gw.connectAs(carol)])
  for (const c of watchers) await c.subscribe('hot-1')
  await watchers[0]!.subscribe('cold-1')
  // A refusal to show: dave may not watch carol's job.
  const dave = await gw.connectAs(await token('dave'))
  dave.send({ type: 'subscribe_job', job_id: 'hot-1' })
  await dave.nextOfType('error')

  t.test('GET /admin/jobs needs admin credentials and lists workers and top jobs', async (t) => {
    t.equal((await fetch(`${gw.http}/admin/jobs`)).status, 401)
    t.equal((await fetch(`${gw.http}/admin/jobs`, { headers: { authorization: `Bearer ${carol}` } })).status, 401, 'a user token is not enough')
    const res = await fetch(`${gw.http}/admin/jobs?top=5`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })
    t.equal(res.status, 200)
    const body = await res.json() as { workers: Array<{ pid: number; connections: number; jobs_watched: number }>; top: Array<{ job_id: string; watchers: number }> }
    t.same(body.workers, [{ pid: process.pid, connections: 4, jobs_watched: 2 }])
    t.same(body.top, [{ job_id: 'hot-1', watchers: 3 }, { job_id: 'cold-1', watchers: 1 }])
    const adminToken = await token('root', { role: 'admin' })
    t.equal((await fetch(`${gw.http}/admin/jobs`, { headers: { authorization: `Bearer ${adminToken}` } })).status, 200, 'an admin token works too')
  })

  t.test('GET /admin/history: the last minutes, kept by the gateway before anyone asked', async (t) => {
    t.equal((await fetch(`${gw.http}/admin/history`)).status, 401)
    type Point = { t: number; connections: number; deliveriesPerSec: number; loopP99Ms: number; brokerRttMs: number | null; refusals: Record<string, number> }
    let points: Point[] = []
    // The first point lands on the next 10 s boundary of the clock.
    await until(async () => {
      const body = await (await fetch(`${gw.http}/admin/history`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })).json() as { step_ms: number; points: Point[] }
      points = body.points
      return points.length > 0
    }, 'a first point', 15_000, 250)
    const p = points.at(-1)!
    t.equal(p.t % 10_000, 0, 'on a 10 s boundary')
    t.equal(p.connections, 4)
    t.ok(p.refusals.forbidden! >= 1, "dave's refusal, made before the first point, is in it")
    t.type(p.loopP99Ms, 'number')
  })

  t.test('the page asks for the key, shows the node, and disconnects a user', async (t) => {
    const browser = await launchBrowser()
    t.teardown(() => browser.close())
    const page = await browser.newPage({ viewport: { width: 1000, height: 900 } })
    page.on('pageerror', (err) => t.fail(`page error: ${err.message}`))
    await page.goto(`${gw.http}/admin`)
    await page.locator('#state[data-state="unauthorized"]').waitFor({ timeout: 10_000 })
    t.equal(await page.locator('#workers tr').count(), 0, 'no data without the key')
    await page.fill('#key', ADMIN_KEY)
    await page.click('#use')
    await page.locator('#state[data-state="ok"]').waitFor({ timeout: 10_000 })
    t.match(await page.locator('#jobs tr').first().textContent(), /hot-1\s*3/)
    t.match(await page.locator('#workers').textContent(), new RegExp(`${process.pid}\\s*4\\s*2`))
    t.equal(await page.locator('[data-counter="connections"] .v').textContent(), '4', 'live counters from /metrics')
    await page.locator('#refusals td', { hasText: 'forbidden' }).first().waitFor({ timeout: 5000 })
    t.pass("dave's forbidden subscribe is among the recent refusals")
    await page.locator('#charts .chart svg polyline, #charts .chart').first().waitFor({ timeout: 5000 })
    t.ok(await page.locator('#charts .chart').count() >= 5, 'charts of the last minutes: connections, deliveries, delay, Redis, refusals')
    t.match(await page.locator('#charts .chart', { hasText: 'connections' }).first().textContent(), /connections\s*4/)
    page.on('dialog', (dialog) => void dialog.accept())
    await page.click('tr[data-user="carol"] button')
    const codes = await Promise.all(watchers.map((c) => c.closed))
    t.same(codes, [1008, 1008, 1008], "carol's sockets are closed with 1008")
    await page.locator('tr[data-user="carol"]').waitFor({ state: 'detached', timeout: 10_000 })
    t.pass('carol is gone from the page')
  })
})
