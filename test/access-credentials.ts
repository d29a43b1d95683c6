// Producer and admin credentials (issue 18, items 6, 8 and 9): valid credentials are never
// refused by the failed-credential throttle, admin and producer credentials count only in the
// Authorization header, and a producer token records only the owners its claims allow.

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

t.test("a producer token records only the owners its claims allow", async (t) => {
  const gw = await gateway(t)
  const stored = async (job: string) => (await gw.gateway.broker.readJobs([job]))[0]!
  const scoped = await token('worker-1', { role: 'producer', jobs: ['video-*'] })

  t.test('scoped by jobs, without an owners claim: only itself', async (t) => {
    for (const [how, query, headers] of [['?owner=', '?owner=bob', {}], ['x-jobwire-owner', '', { 'x-jobwire-owner': 'bob' }]] as const) {
      const res = await post(gw, 'video-planted', { ...bearer(scoped), ...headers }, query)
      t.equal(res.status, 403, `owner bob by ${how}: refused`)
      t.match(res.body, { error: 'forbidden', message: /may not record bob as a job's owner.*owners claim/ })
    }
    t.match(await stored('video-planted'), { state: null, owner: null }, 'nothing was written')
    const listing = await fetch(`${gw.http}/jobs?owner=me`, { headers: bearer(await token('bob')) })
    t.same(((await listing.json()) as { jobs: unknown[] }).jobs, [], "nothing planted in bob's jobs")
    t.equal((await post(gw, 'video-1', bearer(scoped))).status, 200, 'no owner: allowed')
    t.equal((await post(gw, 'video-2', bearer(scoped), '?owner=worker-1')).status, 200, 'its own sub: allowed')
    t.equal((await stored('video-2')).owner, 'worker-1')
  })

  t.test('an owners claim: the owners it covers, no others', async (t) => {
    const teamToken = await token('worker-2', { role: 'producer', jobs: ['video-*'], owners: ['carol', 'team-a-*'] })
    t.equal((await post(gw, 'video-3', bearer(teamToken), '?owner=carol')).status, 200, 'a listed id')
    t.equal((await post(gw, 'video-4', bearer(teamToken), '?owner=team-a-dave')).status, 200, 'a prefix')
    t.equal((await stored('video-4')).owner, 'team-a-dave')
    const refused = await post(gw, 'video-5', bearer(teamToken), '?owner=bob')
    t.equal(refused.status, 403)
    t.match(refused.body.message, /may not record bob as a job's owner \(its owners claim\)/)
    t.equal((await post(gw, 'video-5', bearer(teamToken), '?owner=worker-2')).status, 403, 'with the claim, its own sub only if listed')
    t.equal((await stored('video-5')).state, null, 'nothing was written')
    const unscopedWithClaim = await token('worker-3', { role: 'producer', owners: ['carol'] })
    t.equal((await post(gw, 'any-1', bearer(unscopedWithClaim), '?owner=bob')).status, 403, 'the claim binds an unscoped token too')
    t.equal((await post(gw, 'any-1', bearer(unscopedWithClaim), '?owner=carol')).status, 200)
    const everyone = await token('worker-4', { role: 'producer', jobs: ['video-*'], owners: ['*'] })
    t.equal((await post(gw, 'video-6', bearer(everyone), '?owner=bob')).status, 200, '"*" covers anyone')
  })

  t.test('the static keys, admins and unscoped producer tokens record anyone', async (t) => {
    t.equal((await post(gw, 'video-7', bearer(PRODUCER_KEY), '?owner=bob')).status, 200, 'the producer key')
    t.equal((await post(gw, 'video-8', bearer(ADMIN_KEY), '?owner=bob')).status, 200, 'the admin key')
    t.equal((await post(gw, 'video-9', bearer(await token('root', { role: 'admin' })), '?owner=bob')).status, 200, 'an admin token')
    t.equal((await post(gw, 'video-10', bearer(await token('worker-5', { role: 'producer' })), '?owner=bob')).status, 200, 'an unscoped producer token without an owners claim')
    t.equal((await stored('video-10')).owner, 'bob')
  })

  t.test('the owners claim is parsed strictly', async (t) => {
    for (const owners of ['carol', [1], ['carol', null], [''], ['x'.repeat(258)], new Array(1001).fill('carol'), { carol: true }]) {
      const res = await post(gw, 'video-11', bearer(await token('worker-6', { role: 'producer', owners: owners as string[] })), '?owner=carol')
      t.equal(res.status, 401, `owners ${JSON.stringify(owners).slice(0, 40)}: the token is refused`)
    }
    const none = await post(gw, 'video-11', bearer(await token('worker-6', { role: 'producer', owners: [] })), '?owner=carol')
    t.equal(none.status, 403, 'an empty owners list allows no owner')
    t.equal((await post(gw, 'video-11', bearer(await token('worker-6', { role: 'producer', owners: [] })))).status, 200, '...and writes without one')
  })
})

t.test('failures from one IPv6 /64 count together, however its addresses rotate', async (t) => {
  // Clients behind a trusted proxy (loopback here), named by X-Forwarded-For.
  const gw = await startGateway({ ...KEYS, 'trust-proxy': 'true', 'trusted-proxies': '127.0.0.1/32' })
  t.teardown(() => gw.stop())
  const from = (address: string) => ({ 'x-forwarded-for': address })
  const statuses: number[] = []
  for (let i = 1; i <= 14; i++) statuses.push(await adminGet(gw, { ...bearer(`wrong-${i}`), ...from(`2001:db8:0:1::${i.toString(16)}`) }))
  t.same(statuses.slice(10), [429, 429, 429, 429], 'the eleventh address of the /64 is already throttled')
  t.equal(await adminGet(gw, { ...bearer('wrong'), ...from('2001:db8:0:2::1') }), 401, 'another /64 is not')
  t.equal(await adminGet(gw, { ...bearer(ADMIN_KEY), ...from('2001:db8:0:1::99') }), 200, 'and the right key from the throttled /64 is answered')
})
