// Access control, both ways for every rule: credentials at the upgrade, the watch rule on
// WebSocket and HTTP, token expiry, origins, the producer API and the admin endpoints.

import t from 'tap'
import { pack } from 'msgpackr'
import { startGateway, type TestGateway } from './fixtures/gateway.js'
import { keyFiles, SECRET, token, unsignedToken } from './fixtures/tokens.js'
import { connect } from './fixtures/ws-client.js'

const PRODUCER_KEY = 'producer-key-0123456789'
const ADMIN_KEY = 'admin-key-0123456789abc'

async function refusedWith(promise: Promise<unknown>): Promise<string> {
  return promise.then(() => 'connected', (err: Error) => err.message)
}

t.test('HS256 gateway', async (t) => {
  const gw: TestGateway = await startGateway({ 'jwt-secret': SECRET, 'producer-key': PRODUCER_KEY, 'admin-key': ADMIN_KEY })
  t.teardown(() => gw.stop())
  const produce = (jobId: string, payload: object, owner?: string) =>
    gw.gateway.broker.publishProgress(jobId, Buffer.from(JSON.stringify(payload)), owner ? { owner } : {})
  const alice = await token('alice')
  const bob = await token('bob')
  await produce('alice-job-1', { status: 'processing', progress: 10 }, 'alice')

  t.test('upgrades without valid credentials get HTTP 401 before any socket exists', async (t) => {
    const before = gw.gateway.metricsSnapshot().counters.connections_opened_total
    t.equal(await refusedWith(gw.connect()), 'upgrade refused: 401', 'no token')
    t.equal(await refusedWith(gw.connectAs('not.a.jwt')), 'upgrade refused: 401', 'garbage')
    t.equal(await refusedWith(gw.connectAs(await token('alice', {}, 3600, 'another-secret-that-is-also-32-bytes!!'))), 'upgrade refused: 401', 'wrong signature')
    t.equal(await refusedWith(gw.connectAs(await token('alice', {}, -60))), 'upgrade refused: 401', 'expired')
    t.equal(await refusedWith(gw.connectAs(unsignedToken('alice', { role: 'admin' }))), 'upgrade refused: 401', 'alg none')
    const forged = alice.split('.')
    forged[1] = Buffer.from(JSON.stringify({ sub: 'alice', role: 'admin', exp: 9999999999 })).toString('base64url')
    t.equal(await refusedWith(gw.connectAs(forged.join('.'))), 'upgrade refused: 401', 'payload swapped under a valid signature')
    t.equal(await refusedWith(gw.connectAs(await token('', {}))), 'upgrade refused: 401', 'empty sub')
    t.equal(gw.gateway.metricsSnapshot().counters.connections_opened_total, before, 'no socket was opened')
    t.ok(gw.gateway.metricsSnapshot().labelled.upgrades_rejected_total!.token_expired! >= 1)
    const res = await fetch(`${gw.http}/jobs/alice-job-1`)
    t.equal(res.status, 401)
  })

  t.test('a valid token works from ?token= and from Authorization: Bearer', async (t) => {
    const a = await gw.connectAs(alice)
    t.match(await a.subscribe('alice-job-1'), { data: { progress: 10 } })
    const b = await connect(gw.wsUrl, undefined, { headers: { authorization: `Bearer ${alice}` } })
    t.match(await b.subscribe('alice-job-1'), { data: { progress: 10 } })
  })

  t.test('only the owner sees a job; others get forbidden, the same for jobs that do not exist', async (t) => {
    const b = await gw.connectAs(bob)
    b.send({ type: 'subscribe_job', job_id: 'alice-job-1' })
    const existing = await b.nextOfType('error')
    b.send({ type: 'subscribe_job', job_id: 'no-such-job' })
    const missing = await b.nextOfType('error')
    t.same({ ...existing, job_id: 'x' }, { ...missing, job_id: 'x' }, 'an existing and a missing job look the same')
    t.match(existing, { code: 'forbidden', job_id: 'alice-job-1' })
    b.send({ type: 'job_status', job_id: 'alice-job-1' })
    t.match(await b.nextOfType('error'), { code: 'forbidden' })
    // Alice watches: once she has the update, it has been fanned out, and a frame to bob, had
    // one been sent then, comes before the answer to a ping bob sends now.
    const watcher = await gw.connectAs(alice)
    await watcher.subscribe('alice-job-1')
    await produce('alice-job-1', { progress: 20 }, 'alice')
    t.match(await watcher.nextOfType('job_update', 'alice-job-1'), { data: { progress: 20 } })
    b.send({ type: 'ping', id: 'after-publish' })
    await b.next((m) => m.type === 'pong' && m.id === 'after-publish')
    t.equal(b.all('job_update').length + b.all('job_status').length, 0, 'bob received nothing about the job')
    const a = await gw.connectAs(alice)
    a.send({ type: 'job_status', job_id: 'alice-job-1' })
    t.match(await a.nextOfType('job_status'), { data: { progress: 20 } })
  })

  t.test('the jobs claim grants exact ids and prefix* patterns; admin sees everything', async (t) => {
    await produce('report-7', { progress: 1 }, 'carol')
    await produce('export-1', { progress: 2 }, 'carol')
    const viewer = await gw.connectAs(await token('dave', { jobs: ['export-1', 'report-*'] }))
    t.match(await viewer.subscribe('report-7'), { data: { progress: 1 } })
    t.match(await viewer.subscribe('export-1'), { data: { progress: 2 } })
    viewer.send({ type: 'subscribe_job', job_id: 'export-2' })
    t.match(await viewer.nextOfType('error'), { code: 'forbidden', job_id: 'export-2' })
    const admin = await gw.connectAs(await token('root', { role: 'admin' }))
    t.match(await admin.subscribe('alice-job-1'), { type: 'job_status' })
    t.match(await admin.subscribe('never-produced'), { data: null })
  })

  t.test('GET /jobs/<id> follows the same rule', async (t) => {
    const get = async (tok: string, id: string) => (await fetch(`${gw.http}/jobs/${id}`, { headers: { authorization: `Bearer ${tok}` } })).status
    t.equal(await get(alice, 'alice-job-1'), 200)
    t.equal(await get(bob, 'alice-job-1'), 403)
    t.equal(await get(bob, 'no-such-job'), 403, 'missing looks like forbidden')
    t.equal(await get(await token('root', { roles: ['admin'] }), 'no-such-job'), 404)
    t.equal((await fetch(`${gw.http}/jobs/alice-job-1?token=${alice}`)).status, 200)
  })

  t.test('an expiring token: the socket is told and closed with 1008', async (t) => {
    // Three seconds (the expiry is in whole seconds, so two to three from now): time enough
    // to connect on a loaded machine.
    const short = await token('alice', {}, 3)
    const c = await gw.connectAs(short)
    await c.subscribe('alice-job-1')
    t.match(await c.nextOfType('error', undefined, 15_000), { code: 'token_expired' })
    t.equal(await c.closed, 1008)
    t.match(c.closeReason, /token expired/)
  })

  t.test('producer API: credentials, atomic store + publish, bad bodies refused with nothing stored', async (t) => {
    const post = (id: string, body: string | Buffer, headers: Record<string, string> = {}, query = '') =>
      fetch(`${gw.http}/jobs/${id}/progress${query}`, { method: 'POST', body: typeof body === 'string' ? body : new Uint8Array(body), headers: { 'content-type': 'application/json', ...headers } })
    const key = { authorization: `Bearer ${PRODUCER_KEY}` }
    // The app records the job, with its owner, when it creates it; then the browser subscribes.
    const created = await post('api-1', '{"status":"queued"}', key, '?owner=alice')
    t.same(await created.json(), { job_id: 'api-1', seq: 1 })
    const watcher = await gw.connectAs(alice)
    t.match(await watcher.subscribe('api-1'), { data: { status: 'queued', seq: 1 } })
    t.equal((await post('api-1', '{"progress":1}')).status, 401, 'no credentials')
    t.equal((await post('api-1', '{"progress":1}', { authorization: `Bearer ${alice}` })).status, 401, 'a user token is not a producer')
    t.equal((await post('api-1', '{"progress":1}', { authorization: 'Bearer wrong-key-0123456789' })).status, 401, 'wrong key')
    const ok = await post('api-1', '{"status":"processing","progress":5}', key)
    t.equal(ok.status, 200)
    t.same(await ok.json(), { job_id: 'api-1', seq: 2 })
    t.match((await watcher.nextOfType('job_update', 'api-1')).data, { seq: 2, progress: 5 })
    const producerToken = await token('worker-1', { role: 'producer' })
    t.equal((await post('api-1', '{"progress":6}', { authorization: `Bearer ${producerToken}` })).status, 200, 'a producer token')
    t.equal((await post('api-1', pack({ progress: 7 }), { ...key, 'content-type': 'application/msgpack' })).status, 200, 'msgpack body')
    for (const [body, reason] of [['[1,2]', /JSON object/], ['{"progress":', /valid JSON object/], ['{"seq":9}', /must not set seq/], ['', /empty/], ['{"ts":"now"}', /ts must be a number/]] as const) {
      const res = await post('api-2', body, key)
      t.equal(res.status, 400, `400 for ${JSON.stringify(body)}`)
      t.match(((await res.json()) as { message: string }).message, reason)
    }
    t.equal((await post('api-2', '{"a":1}', { ...key, 'content-type': 'text/plain' })).status, 415)
    t.equal((await post('api-2', pack({ a: 1 }), key)).status, 400, 'msgpack bytes labelled JSON')
    t.equal((await post('api-2', JSON.stringify({ blob: 'x'.repeat(300_000) }), key)).status, 413)
    t.equal((await post('bad id', '{}', key)).status, 400)
    const admin = await token('root', { role: 'admin' })
    t.equal((await fetch(`${gw.http}/jobs/api-2`, { headers: { authorization: `Bearer ${admin}` } })).status, 404, 'nothing was stored for refused bodies')
  })

  t.test('admin endpoints: list connections with subscriptions, disconnect a user', async (t) => {
    const a1 = await gw.connectAs(alice)
    await a1.subscribe('alice-job-1')
    const b1 = await gw.connectAs(bob)
    t.equal((await fetch(`${gw.http}/admin/connections`)).status, 401)
    t.equal((await fetch(`${gw.http}/admin/connections`, { headers: { authorization: `Bearer ${alice}` } })).status, 401, 'a user is not an admin')
    const list = await fetch(`${gw.http}/admin/connections?user=alice`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })
    t.equal(list.status, 200)
    const body = await list.json() as { users: Array<{ user: string; connections: Array<{ subscriptions: string[] }> }> }
    t.equal(body.users.length, 1)
    t.equal(body.users[0]!.user, 'alice')
    t.ok(body.users[0]!.connections.some((c) => c.subscriptions.includes('alice-job-1')))
    const adminToken = await token('root', { role: 'admin' })
    const kick = await fetch(`${gw.http}/admin/users/alice/disconnect`, { method: 'POST', headers: { authorization: `Bearer ${adminToken}` } })
    t.equal(kick.status, 200)
    t.ok(((await kick.json()) as { disconnected: number }).disconnected >= 1)
    t.equal(await a1.closed, 1008)
    b1.send({ type: 'ping' })
    t.match(await b1.nextOfType('pong'), { type: 'pong' }, 'other users stay connected')
  })
})

t.test('RS256, ES256 and JWKS verification; algorithm confusion refused', async (t) => {
  const keys = await keyFiles()
  for (const [flag, file] of [['jwt-public-key', keys.rsaPem], ['jwt-public-key', keys.ecPem], ['jwks-file', keys.jwks]] as const) {
    const gw = await startGateway({ [flag]: file })
    const rs = await keys.signRs256('alice')
    const es = await keys.signEs256('alice')
    const expectRs = file !== keys.ecPem
    const expectEs = file !== keys.rsaPem
    t.equal(await refusedWith(gw.connectAs(rs)), expectRs ? 'connected' : 'upgrade refused: 401', `${flag} ${file.split('/').pop()}: RS256`)
    t.equal(await refusedWith(gw.connectAs(es)), expectEs ? 'connected' : 'upgrade refused: 401', `${flag} ${file.split('/').pop()}: ES256`)
    t.equal(await refusedWith(gw.connectAs(await token('alice'))), 'upgrade refused: 401', 'an HS256 token signed with some secret')
    t.equal(await refusedWith(gw.connectAs(unsignedToken('alice'))), 'upgrade refused: 401', 'alg none')
    await gw.stop()
  }
})

t.test('issuer and audience, when configured, are required', async (t) => {
  const gw = await startGateway({ 'jwt-secret': SECRET, 'jwt-issuer': 'https://auth.example.com', 'jwt-audience': 'jobwire' })
  t.teardown(() => gw.stop())
  t.equal(await refusedWith(gw.connectAs(await token('alice'))), 'upgrade refused: 401')
  t.equal(await refusedWith(gw.connectAs(await token('alice', { iss: 'https://auth.example.com', aud: 'jobwire' }))), 'connected')
  t.equal(await refusedWith(gw.connectAs(await token('alice', { iss: 'https://evil.example.com', aud: 'jobwire' }))), 'upgrade refused: 401')
})

t.test('origin allowlist', async (t) => {
  const gw = await startGateway({ 'allowed-origins': 'https://app.example.com,https://*.example.org' })
  t.teardown(() => gw.stop())
  t.equal(await refusedWith(connect(gw.wsUrl, undefined, { origin: 'https://app.example.com' })), 'connected')
  t.equal(await refusedWith(connect(gw.wsUrl, undefined, { origin: 'https://eu.example.org' })), 'connected', 'wildcard subdomain')
  t.equal(await refusedWith(connect(gw.wsUrl, undefined, { origin: 'https://evil.com' })), 'upgrade refused: 403')
  t.equal(await refusedWith(connect(gw.wsUrl, undefined, { origin: 'https://example.org' })), 'upgrade refused: 403', 'the bare domain is not a subdomain')
  t.equal(await refusedWith(connect(gw.wsUrl, undefined, { origin: 'https://app.example.com.evil.com' })), 'upgrade refused: 403')
  t.equal(await refusedWith(connect(gw.wsUrl)), 'connected', 'non-browser clients send no Origin')
  // The gateway's own pages (demo, admin) connect from its own origin: Origin names the Host.
  const own = new URL(gw.http)
  t.equal(await refusedWith(connect(gw.wsUrl, undefined, { origin: own.origin })), 'connected', "the gateway's own origin")
  own.port = String(Number(own.port) + 1)
  t.equal(await refusedWith(connect(gw.wsUrl, undefined, { origin: own.origin })), 'upgrade refused: 403', 'another port of the same host is another origin')
})

t.test('with access control off (loopback), everything is open and the producer API needs no key', async (t) => {
  const gw = await startGateway()
  t.teardown(() => gw.stop())
  const c = await gw.connect()
  await c.subscribe('open-1')
  const res = await fetch(`${gw.http}/jobs/open-1/progress`, { method: 'POST', body: '{"progress":3}', headers: { 'content-type': 'application/json' } })
  t.equal(res.status, 200)
  t.match((await c.nextOfType('job_update')).data, { progress: 3 })
  t.equal((await fetch(`${gw.http}/admin/connections`)).status, 200)
})
