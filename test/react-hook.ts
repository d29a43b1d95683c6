// jobwire/react's useJob in real React (react + react-dom, bundled with esbuild into a tiny
// page on an origin of its own) in headless Chromium: it renders a job's snapshot and every
// update, follows a change of id, and reports a refusal. It runs the built module
// (dist/client/jobwire-react.js), which is what the package's `jobwire/react` export serves.

import t from 'tap'
import { build } from 'esbuild'
import { PROJECT_ROOT, projectPath } from '../src/support/paths.js'
import { serveAppPage } from './fixtures/app-page.js'
import { launchBrowser } from './fixtures/browser.js'
import { startGateway } from './fixtures/gateway.js'
import { until } from './fixtures/until.js'
import { SECRET, token } from './fixtures/tokens.js'

const APP = (wsUrl: string, tokenValue: string) => `
import React from 'react'
import { createRoot } from 'react-dom/client'
import { JobsClient } from ${JSON.stringify(projectPath('dist', 'client', 'jobwire-client.js'))}
import { JobsContext, useJob } from ${JSON.stringify(projectPath('dist', 'client', 'jobwire-react.js'))}

const h = React.createElement
function Job({ id }) {
  const { data, error } = useJob(id)
  return h('p', { id: 'job', 'data-job': id ?? '', 'data-status': data?.status ?? '', 'data-progress': data?.progress ?? '', 'data-error': error?.code ?? '' },
    error ? 'refused: ' + error.code : data === undefined ? 'loading' : data === null ? 'no state' : data.status + ' ' + data.progress + '%')
}
function App() {
  const [id, setId] = React.useState('r-1')
  const [shown, setShown] = React.useState(true)
  return h('div', null, shown ? h(Job, { id }) : null, ...['r-1', 'r-2', 'theirs'].map((j) => h('button', { id: 'show-' + j, key: j, onClick: () => setId(j) }, j)),
    h('button', { id: 'unmount', onClick: () => setShown(false) }, 'unmount'))
}
const client = new JobsClient({ url: ${JSON.stringify(wsUrl)}, token: ${JSON.stringify(tokenValue)} })
createRoot(document.getElementById('root')).render(h(JobsContext.Provider, { value: client }, h(App)))
`

t.test('useJob in React', async (t) => {
  const gw = await startGateway({ 'jwt-secret': SECRET })
  t.teardown(() => gw.stop())
  const publish = (id: string, payload: object, owner = 'alice') => gw.gateway.broker.publishProgress(id, Buffer.from(JSON.stringify(payload)), { owner })
  await publish('r-1', { status: 'processing', progress: 10 })
  await publish('r-2', { status: 'queued', progress: 0 })
  await publish('theirs', { status: 'queued' }, 'bob')

  const bundle = await build({
    stdin: { contents: APP(gw.wsUrl, await token('alice')), resolveDir: PROJECT_ROOT, loader: 'js' },
    bundle: true, write: false, format: 'esm', minify: true, logLevel: 'silent',
    define: { 'process.env.NODE_ENV': '"production"' },
  })
  const script = bundle.outputFiles[0]!.text
  const pageUrl = await serveAppPage(t, script)

  const browser = await launchBrowser()
  t.teardown(() => browser.close())
  const page = await browser.newPage()
  page.on('pageerror', (err) => t.fail(`page error: ${err.message}`))
  await page.goto(pageUrl)

  await page.locator('#job[data-job="r-1"][data-progress="10"]').waitFor({ timeout: 10_000 })
  t.equal(await page.locator('#job').textContent(), 'processing 10%', 'the snapshot renders')
  await publish('r-1', { progress: 55 })
  await page.locator('#job[data-progress="55"][data-status="processing"]').waitFor({ timeout: 5000 })
  // A worker's plain partial PUBLISH (no seq) is merged into the state held (issue 19, item 7).
  await gw.gateway.broker.publish('progress:r-1', JSON.stringify({ progress: 70 }))
  await page.locator('#job[data-progress="70"][data-status="processing"]').waitFor({ timeout: 5000 })
  await publish('r-1', { progress: 55 })
  await page.locator('#job[data-progress="55"][data-status="processing"]').waitFor({ timeout: 5000 })
  t.pass('an update re-renders with the merged state')
  const gauges = () => gw.gateway.metricsSnapshot().gauges
  await page.click('#show-r-2')
  await page.locator('#job[data-job="r-2"][data-status="queued"]').waitFor({ timeout: 5000 })
  await until(() => gauges().subscriptions === 1, 'the gateway to hold r-2 alone (r-1 left)', 5000)
  await publish('r-2', { status: 'completed', progress: 100 })
  await page.locator('#job[data-job="r-2"][data-status="completed"]').waitFor({ timeout: 5000 })
  t.pass('a new id is watched instead')
  await page.click('#show-theirs')
  await page.locator('#job[data-job="theirs"][data-error="forbidden"]').waitFor({ timeout: 5000 })
  t.equal(await page.locator('#job').textContent(), 'refused: forbidden', "another user's job is refused, and says so")
  await page.click('#show-r-1')
  await until(() => gauges().subscriptions === 1, 'r-1 subscribed again', 5000)
  await page.click('#unmount')
  await until(() => gauges().subscriptions === 0, 'the gateway to drop the subscription when the component unmounts', 5000)
  t.equal(gauges().connections, 1, "the client's socket is still open: the subscription ended, not the connection")
})
