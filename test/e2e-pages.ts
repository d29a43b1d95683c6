// The demo and test pages in headless Chromium: a user's jobs survive a reload and jobs
// started elsewhere appear live; the test page's buttons follow the connection, an empty
// subscribe is refused with a message, and a snapshot's age is labelled as age.

import t from 'tap'
import type { Page } from 'playwright-core'
import { launchBrowser } from './fixtures/browser.js'
import { startGateway } from './fixtures/gateway.js'
import { SECRET, token } from './fixtures/tokens.js'

t.test('pages in Chromium', async (t) => {
  const browser = await launchBrowser()
  t.teardown(() => browser.close())
  const open = async (url: string): Promise<Page> => {
    const page = await browser.newPage({ viewport: { width: 900, height: 720 } })
    page.on('pageerror', (err) => t.fail(`page error: ${err.message}`))
    t.teardown(() => page.close())
    await page.goto(url)
    return page
  }

  t.test("the demo keeps a user's jobs across a reload and shows jobs started elsewhere", async (t) => {
    const gw = await startGateway({ demo: 'true', 'jwt-secret': SECRET })
    t.teardown(() => gw.stop())
    const alice = await token('alice')
    // The token is pasted into the page's Token field (kept for the tab), never put in its URL.
    const page = await open(`${gw.http}/?step_ms=30&outcome=success`)
    await page.click('details.token summary')
    await page.fill('#token', alice)
    await Promise.all([page.waitForEvent('load'), page.click('#token-form button')])
    t.notMatch(page.url(), /token/, 'no token in the URL')
    await page.click('#start')
    const card = page.locator('[data-job-id]').first()
    await card.locator('.badge[data-status="completed"]').waitFor({ timeout: 15_000 })
    const jobId = await card.getAttribute('data-job-id')
    await page.reload()
    await page.locator(`[data-job-id="${jobId}"] .badge[data-status="completed"]`).waitFor({ timeout: 10_000 })
    t.pass('the finished job is still listed after a reload')
    // Another tab of the same user starts a job: it appears here without a reload.
    const started = await fetch(`${gw.http}/demo/jobs?outcome=success&step_ms=30`, { method: 'POST', headers: { authorization: `Bearer ${alice}` } })
    const { job_id: other } = await started.json() as { job_id: string }
    await page.locator(`[data-job-id="${other}"]`).waitFor({ timeout: 10_000 })
    t.pass('a job started elsewhere appeared live')
    // Someone else's job does not.
    const bob = await token('bob')
    const theirs = await fetch(`${gw.http}/demo/jobs?outcome=success&step_ms=30`, { method: 'POST', headers: { authorization: `Bearer ${bob}` } })
    const { job_id: bobs } = await theirs.json() as { job_id: string }
    await page.locator(`[data-job-id="${other}"] .badge[data-status="completed"]`).waitFor({ timeout: 10_000 })
    t.equal(await page.locator(`[data-job-id="${bobs}"]`).count(), 0, "bob's job is not shown to alice")
  })

  t.test("the test page's buttons follow the connection; empty ids are refused; ages are ages", async (t) => {
    const gw = await startGateway()
    t.teardown(() => gw.stop())
    await gw.gateway.broker.publishProgress('age-1', Buffer.from('{"status":"processing","progress":5}'))
    const page = await open(`${gw.http}/ws/jobs/test`)
    await page.locator('#state[data-state="open"]').waitFor({ timeout: 10_000 })
    t.ok(await page.locator('#connect').isDisabled(), 'Connect is disabled while connected')
    t.ok(await page.locator('#disconnect').isEnabled(), 'Disconnect is enabled')
    await page.click('#subscribe')
    t.match(await page.locator('#hint').textContent(), /Enter a job id/, 'an empty subscribe says why nothing happened')
    t.equal(await page.locator('#job').getAttribute('aria-invalid'), 'true')
    t.equal(await page.locator('#subscriptions .chip').count(), 0)
    await page.fill('#job', 'age-1')
    await page.click('#subscribe')
    const status = page.locator('#log li[data-type="job_status"] .lat')
    await status.waitFor()
    t.match(await status.textContent(), /^age \d+ ms$/, 'a snapshot shows its age')
    t.match(await status.getAttribute('title'), /not a latency/)
    await page.click('#disconnect')
    await page.locator('#state[data-state="closed"]').waitFor()
    t.ok(await page.locator('#connect').isEnabled(), 'Connect is enabled once disconnected')
    t.ok(await page.locator('#disconnect').isDisabled(), 'Disconnect is disabled')
    await page.fill('#job', 'later-1')
    await page.click('#subscribe')
    t.match(await page.locator('#hint').textContent(), /Not connected: later-1 will be subscribed when you connect/)
    await page.click('#connect')
    await page.locator('#log li[data-type="job_status"]', { hasText: 'later-1' }).waitFor({ timeout: 10_000 })
    t.pass('subscribed on connect')
  })
})
