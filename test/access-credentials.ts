// Producer and admin credentials (issue 18, items 6 and 8): valid credentials are never
// refused by the failed-credential throttle, and admin and producer credentials count only in
// the Authorization header.

import t, { type Test } from 'tap'
import { startGateway, type TestGateway } from './fixtures/gateway.js'
import { SECRET, token } from './fixtures/tokens.js'

const PRODUCER_KEY = 'producer-key-0123456789'
const ADMIN_KEY = 'admin-key-0123456789abc'
const KEYS = { 'jwt-secret': SECRET, 'producer-key': PRODUCER_KEY, 'admin-key': ADMIN_KEY }

async function gateway(t: Test): Promise<TestGateway> {
  const gw = await startGateway(KEYS)
  t.teardown(() => gw.stop())
  return gw
}

const bearer = (credential: string) => ({ authorization: `Bearer ${credential}` })

async function post(gw: TestGateway, job: string, headers: Record<string, string>, query = ''): Promise<{ status: number; body: { error?: string; message?: string } }> {
  const res = await fetch(`${gw.http}/jobs/${job}/progress${query}`, {
    method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: '{"status":"queued"}',
  })
  return { status: res.status, body: await res.json() as { error?: string; message?: string } }
}

const adminGet = async (gw: TestGateway, headers: Record<string, string>, query = '') =>
  (await fetch(`${gw.http}/admin/connections${query}`, { headers })).status

t.test('valid credentials are answered while bad ones from the same address are throttled', async (t) => {
  const gw = await gateway(t)
  const bad: number[] = []
  for (let i = 0; i < 14; i++) bad.push(await adminGet(gw, bearer(`wrong-key-${i}`)))
  t.same(bad.slice(0, 10), new Array(10).fill(401), 'a burst of ten failures is answered 401')
  t.ok(bad.slice(10).every((s) => s === 429), `then failures get 429: ${bad.slice(10).join(', ')}`)

  const producerToken = await token('worker-1', { role: 'producer' })
  const adminToken = await token('root', { role: 'admin' })
  t.equal(await adminGet(gw, bearer(ADMIN_KEY)), 200, 'the admin key')
  t.equal(await adminGet(gw, bearer(adminToken)), 200, 'an admin token')
  t.equal((await post(gw, 'lock-1', bearer(PRODUCER_KEY))).status, 200, 'the producer key')
  t.equal((await post(gw, 'lock-2', bearer(producerToken))).status, 200, 'a producer token')
  t.equal(await adminGet(gw, bearer('wrong-key-again')), 429, 'a bad key is still throttled')
  t.equal((await post(gw, 'lock-3', bearer('wrong-key-again'))).status, 429, 'on the producer route too')
  t.equal(await adminGet(gw, bearer(await token('alice'))), 429, 'a valid token without the role is a failure too')

  // The reported case: ~10 bad requests a second against /admin/connections from the same
  // address while a producer with the right key keeps writing.
  const statuses: number[] = []
  let attacking = true
  const attack = (async () => {
    for (let i = 0; attacking; i++) {
      await adminGet(gw, bearer(`guess-${i}`))
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  })()
  for (let i = 0; i < 20; i++) {
    statuses.push((await post(gw, `lock-4-${i % 3}`, bearer(PRODUCER_KEY))).status)
    if (i % 4 === 0) statuses.push(await adminGet(gw, bearer(ADMIN_KEY)))
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  attacking = false
  await attack
  t.ok(statuses.every((s) => s === 200), `every correct request answered 200 during the attack: ${[...new Set(statuses)].join(', ')}`)
})

t.test('admin and producer credentials count only in the Authorization header', async (t) => {
  const gw = await gateway(t)
  const adminToken = await token('root', { role: 'admin' })
  const producerToken = await token('worker-1', { role: 'producer' })
  t.equal(await adminGet(gw, {}, `?token=${adminToken}`), 401, 'an admin token in ?token= does not open /admin/connections')
  t.equal((await fetch(`${gw.http}/admin/users/alice/disconnect?token=${adminToken}`, { method: 'POST' })).status, 401, 'nor a disconnect')
  t.equal(await adminGet(gw, {}, `?token=${ADMIN_KEY}`), 401, 'nor the admin key')
  t.equal((await post(gw, 'query-1', {}, `?token=${producerToken}`)).status, 401, 'a producer token in ?token= does not write')
  t.equal((await post(gw, 'query-1', {}, `?token=${adminToken}`)).status, 401, 'nor an admin token')
  t.equal(await adminGet(gw, bearer(adminToken)), 200, 'the same admin token in the header works')
  t.equal((await post(gw, 'query-1', bearer(producerToken))).status, 200, 'the same producer token in the header works')
  const c = await gw.connectAs(await token('alice'))
  c.send({ type: 'ping', id: 1 })
  t.match(await c.nextOfType('pong'), { id: 1 }, '?token= still authenticates a WebSocket')
})
