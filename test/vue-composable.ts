// jobwire/vue's useJob in real Vue (bundled with esbuild into a tiny page on an origin of its
// own) in headless Chromium: it renders a job's snapshot and every update, follows a change of
// id, reports a refusal, and ends its subscription when its component unmounts. It runs the
// built module (dist/client/jobwire-vue.js), which is what the package's `jobwire/vue` export
// serves. Vue's development build is used so that its warnings (inject outside setup, a
// watcher without a scope) show up, and any warning fails the test. Whether a subscription
// ended is read from the gateway's subscriptions gauge, which counts socket-to-job
// subscriptions while the client's one socket stays open.

import t from 'tap'
import { build } from 'esbuild'
import { PROJECT_ROOT, projectPath } from '../src/support/paths.js'
import { serveAppPage } from './fixtures/app-page.js'
import { launchBrowser } from './fixtures/browser.js'
import { startGateway } from './fixtures/gateway.js'
import { SECRET, token } from './fixtures/tokens.js'
import { until } from './fixtures/until.js'

const APP = (wsUrl: string, tokenValue: string) => `
import { createApp, defineComponent, h, ref } from 'vue'
import { JobsClient } from ${JSON.stringify(projectPath('dist', 'client', 'jobwire-client.js'))}
import { JobsKey, useJob } from ${JSON.stringify(projectPath('dist', 'client', 'jobwire-vue.js'))}

const Job = defineComponent({
  props: { id: String },
  setup(props) {
    const { data, error } = useJob(() => props.id)
    return () => h('p', { id: 'job', 'data-job': props.id ?? '', 'data-status': data.value?.status ?? '', 'data-progress': data.value?.progress ?? '', 'data-error': error.value?.code ?? '' },
      error.value ? 'refused: ' + error.value.code : data.value === undefined ? 'loading' : data.value === null ? 'no state' : data.value.status + ' ' + data.value.progress + '%')
  },
})
const App = defineComponent({
  setup() {
    const id = ref('r-1')
    const shown = ref(true)
    return () => h('div', null, [
      shown.value ? h(Job, { id: id.value }) : null,
      ...['r-1', 'r-2', 'theirs'].map((j) => h('button', { id: 'show-' + j, key: j, onClick: () => { id.value = j } }, j)),
      h('button', { id: 'unmount', onClick: () => { shown.value = false } }, 'unmount'),
    ])
  },
})
const client = new JobsClient({ url: ${JSON.stringify(wsUrl)}, token: ${JSON.stringify(tokenValue)} })
createApp(App).provide(JobsKey, client).mount('#root')
`

t.test('useJob in Vue', async (t) => {
  const gw = await startGateway({ 'jwt-secret': SECRET })
  t.teardown(() => gw.stop())
  const publish = (id: string, payload: object, owner = 'alice') => gw.gateway.broker.publishProgress(id, Buffer.from(JSON.stringify(payload)), { owner })
  const gauges = () => gw.gateway.metricsSnapshot().gauges
  await publish('r-1', { status: 'processing', progress: 10 })
  await publish('r-2', { status: 'queued', progress: 0 })
  await publish('theirs', { status: 'queued' }, 'bob')

  const bundle = await build({
    stdin: { contents: APP(gw.wsUrl, await token('alice')), resolveDir: PROJECT_ROOT, loader: 'js' },
    bundle: true, write: false, format: 'esm', logLevel: 'silent',
    define: {
      'process.env.NODE_ENV': '"development"',
      __VUE_OPTIONS_API__: 'false',
      __VUE_PROD_DEVTOOLS__: 'false',
      __VUE_PROD_HYDRATION_MISMATCH_DETAILS__: 'false',
    },
  })
  const script = bundle.outputFiles[0]!.text
  const pageUrl = await serveAppPage(t, script)

  const browser = await launchBrowser()
  t.teardown(() => browser.close())
  const page = await browser.newPage()
  page.on('pageerror', (err) => t.fail(`page error: ${err.message}`))
  page.on('console', (message) => {
    if (message.type() === 'warning' || message.type() === 'error') t.fail(`console ${message.type()}: ${message.text()}`)
  })
  await page.goto(pageUrl)

  await t.test('renders the snapshot and every update', async (t) => {
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
  })

  await t.test('follows a change of id, leaving the old job', async (t) => {
    await page.click('#show-r-2')
    await page.locator('#job[data-job="r-2"][data-status="queued"]').waitFor({ timeout: 5000 })
    await publish('r-2', { status: 'completed', progress: 100 })
    await page.locator('#job[data-job="r-2"][data-status="completed"]').waitFor({ timeout: 5000 })
    t.pass('the new id is watched')
    // r-1's unsubscribe went out before r-2's subscribe, whose snapshot has arrived.
    await until(() => gauges().subscriptions === 1, 'the gateway to hold r-2 alone', 5000)
    t.pass('r-1 was unsubscribed')
  })

  await t.test("reports a refusal, and clears it with the next job's state", async (t) => {
    await page.click('#show-theirs')
    await page.locator('#job[data-job="theirs"][data-error="forbidden"]').waitFor({ timeout: 5000 })
    t.equal(await page.locator('#job').textContent(), 'refused: forbidden', "another user's job is refused, and says so")
    await page.click('#show-r-1')
    await page.locator('#job[data-job="r-1"][data-error=""][data-progress="55"]').waitFor({ timeout: 5000 })
    t.pass('the refusal is gone once r-1 shows')
  })

  await t.test('unsubscribes when its component unmounts', async (t) => {
    await until(() => gauges().subscriptions === 1, 'r-1 subscribed at the gateway', 5000)
    await page.click('#unmount')
    await page.locator('#job').waitFor({ state: 'detached', timeout: 5000 })
    await until(() => gauges().subscriptions === 0, 'the gateway to drop the subscription', 5000)
    t.equal(gauges().connections, 1, "the client's socket is still open: the subscription ended, not the connection")
  })
})
