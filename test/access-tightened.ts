// Access control's loose ends, tightened: owners are not taken over, a producer token's jobs
// claim scopes its writes, tokens must expire, keys live in headers only and cannot be guessed
// at speed, the connect rate is charged before any signature check, and a worker whose
// primary does not answer refuses rather than admits.

import t, { type Test } from 'tap'
import { SignJWT } from 'jose'
import { freePort } from './fixtures/ports.js'
import { reap, serveProcess } from './fixtures/process.js'
import { startGateway } from './fixtures/gateway.js'
import { startRedis } from './fixtures/redis.js'
import { SECRET, token } from './fixtures/tokens.js'
import { connect } from './fixtures/ws-client.js'

const PRODUCER_KEY = 'producer-key-0123456789'
const ADMIN_KEY = 'admin-key-0123456789abc'

t.test('producer API', async (t) => {
  const gw = await startGateway({ 'jwt-secret': SECRET, 'producer-key': PRODUCER_KEY, 'admin-key': ADMIN_KEY })
  t.teardown(() => gw.stop())
  const post = (job: string, bearer: string, query = '', body = '{"status":"processing"}') =>
    fetch(`${gw.http}/jobs/${job}/progress${query}`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${bearer}` }, body })

  t.test('an owner is set once; only an admin replaces it', async (t) => {
    t.equal((await post('own-1', PRODUCER_KEY, '?owner=alice')).status, 200)
    const takeover = await post('own-1', PRODUCER_KEY, '?owner=mallory')
    t.equal(takeover.status, 409)
    t.match(await takeover.json(), { error: 'owner_conflict' })
    t.equal((await post('own-1', PRODUCER_KEY, '?owner=mallory&replace_owner=1')).status, 403, 'a producer may not ask to replace')
    t.equal((await post('own-1', PRODUCER_KEY, '?owner=alice')).status, 200, 'the owner itself may go on')
    const alice = await gw.connectAs(await token('alice'))
    const before = (await alice.subscribe('own-1')).data as { epoch: number }
    t.equal((await post('own-1', ADMIN_KEY, '?owner=bob&replace_owner=1')).status, 200, 'an admin may')
    t.equal((await gw.gateway.broker.readJobs(['own-1']))[0]!.owner, 'bob')
    const bob = await gw.connectAs(await token('bob'))
    t.ok(((await bob.subscribe('own-1')).data as { epoch: number }).epoch > before.epoch, 'the new owner begins a new epoch')
  })

  t.test("a producer token's jobs claim scopes what it may write", async (t) => {
    const scoped = await token('worker-1', { role: 'producer', jobs: ['video-*'] })
    t.equal((await post('video-9', scoped)).status, 200)
    const outside = await post('invoice-9', scoped)
    t.equal(outside.status, 403)
    t.match(await outside.json(), { error: 'forbidden', message: /jobs claim/ })
    t.equal((await post('invoice-9', await token('worker-2', { role: 'producer' }))).status, 200, 'no claim: any job')
  })

  t.test('static keys count only in the Authorization header', async (t) => {
    const res = await fetch(`${gw.http}/jobs/key-1/progress?token=${PRODUCER_KEY}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })
    t.equal(res.status, 401)
    t.equal((await fetch(`${gw.http}/admin/connections?token=${ADMIN_KEY}`)).status, 401)
    t.equal((await fetch(`${gw.http}/admin/connections`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })).status, 200)
  })

  t.test('failed attempts are throttled per address', async (t) => {
    // A gateway of its own: the attempts above already spent some of this address's burst.
    const fresh = await startGateway({ 'jwt-secret': SECRET, 'admin-key': ADMIN_KEY })
    t.teardown(() => fresh.stop())
    const statuses: number[] = []
    for (let i = 0; i < 14; i++) {
      statuses.push((await fetch(`${fresh.http}/admin/connections`, { headers: { authorization: `Bearer wrong-key-${i}` } })).status)
    }
    t.same(statuses.slice(0, 10), new Array(10).fill(401), 'a burst of ten is answered')
    t.ok(statuses.slice(10).every((s) => s === 429), `then refused before checking: ${statuses.slice(10).join(', ')}`)
    t.equal((await fetch(`${fresh.http}/admin/connections`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })).status, 200, 'but never the right key (test/access-credentials.ts)')
  })
})

t.test('tokens must carry exp; --jwt-max-age bounds their age', async (t) => {
  const gw = await startGateway({ 'jwt-secret': SECRET, 'jwt-max-age': '60' })
  t.teardown(() => gw.stop())
  const key = new TextEncoder().encode(SECRET)
  const noExp = await new SignJWT({}).setProtectedHeader({ alg: 'HS256' }).setSubject('alice').setIssuedAt().sign(key)
  await t.rejects(gw.connectAs(noExp), { message: /401/ }, 'no exp: refused')
  const old = await new SignJWT({}).setProtectedHeader({ alg: 'HS256' }).setSubject('alice')
    .setIssuedAt(Math.floor(Date.now() / 1000) - 120).setExpirationTime('1h').sign(key)
  await t.rejects(gw.connectAs(old), { message: /401/ }, 'issued two minutes ago: refused')
  const fresh = await gw.connectAs(await token('alice'))
  t.ok(fresh, 'a fresh token with exp works')
})

t.test('the connect rate is charged before the token is verified', async (t) => {
  const gw = await startGateway({ 'jwt-secret': SECRET, 'connect-rate-per-ip': '5' })
  t.teardown(() => gw.stop())
  const outcomes = await Promise.all(Array.from({ length: 30 }, () =>
    gw.connectAs('not-a-token').then(async (c) => `closed ${await c.closed}`, (err: { status?: number }) => `http ${err.status}`)))
  const rateLimited = outcomes.filter((o) => o === 'closed 1013').length
  const verified = outcomes.filter((o) => o === 'http 401').length
  t.ok(verified <= 10, `at most a burst (10) reached token verification (${verified})`)
  t.equal(rateLimited + verified, 30, 'the rest were refused by the rate, unverified')
})

/** A node of two workers whose primary is stopped (SIGSTOP) once it listens. */
async function primaryStopped(t: Test, extra: string[] = []): Promise<{ port: number; resume(): void }> {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const port = await freePort()
  const served = serveProcess(['--port', String(port), '--workers', '2', '--redis', redis.url, ...extra])
  t.teardown(async () => {
    served.proc.kill('SIGCONT')
    await reap(served)
  })
  await served.waitFor(/jobwire listening/, 20_000)
  served.proc.kill('SIGSTOP')
  return { port, resume: () => served.proc.kill('SIGCONT') }
}

t.test('a worker whose primary does not answer refuses new connections (fails closed)', async (t) => {
  // 127.0.0.1 is not a trusted proxy here, so its connections are counted by the primary.
  const node = await primaryStopped(t, ['--trusted-proxies', '192.0.2.1/32'])
  const c = await connect(`ws://127.0.0.1:${node.port}/ws/jobs`)
  const error = await c.nextOfType('error', undefined, 5000)
  t.match(error, { code: 'rate_limited', message: /busy/ })
  t.equal(await c.closed, 1013, 'closed with try-again-later')
  node.resume()
  const after = await connect(`ws://127.0.0.1:${node.port}/ws/jobs`)
  after.send({ type: 'ping', id: 1 })
  t.match(await after.nextOfType('pong'), { id: 1 }, 'admitted again once the primary answers')
  await after.close()
})

t.test('a connection the primary would not count is admitted without it', async (t) => {
  // The defaults: 127.0.0.1 is a trusted proxy's address, never throttled as one client, and
  // with no token there is no user to count.
  const node = await primaryStopped(t)
  const c = await connect(`ws://127.0.0.1:${node.port}/ws/jobs`)
  c.send({ type: 'ping', id: 1 })
  t.match(await c.nextOfType('pong'), { id: 1 }, 'admitted while the primary is stopped')
  await c.close()
})

t.test('with access control off, the startup warning names every open endpoint', async (t) => {
  const served = serveProcess(['--port', String(await freePort())])
  t.teardown(() => reap(served))
  const line = await served.waitFor(/access control is off/)
  for (const endpoint of ['/ws/jobs', 'GET /jobs/<id>', 'POST /jobs/<id>/progress', '/admin/*']) t.match(line, endpoint)
})

t.test("watchers are checked again when a job's generation changes", async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const gw = await startGateway({ redis: redis.url, 'jwt-secret': SECRET, 'admin-key': ADMIN_KEY })
  t.teardown(() => gw.stop())
  const broker = gw.gateway.broker
  const put = (job: string, body: object, owner: string, replaceOwner = false) =>
    broker.publishProgress(job, Buffer.from(JSON.stringify(body)), { owner, ...(replaceOwner ? { replaceOwner } : {}) })

  t.test('an admin gives the job to another user: the old owner is told forbidden and sees nothing of it', async (t) => {
    await put('gen-1', { status: 'processing', secret: 'alice-1' }, 'alice')
    const alice = await gw.connectAs(await token('alice'))
    const admin = await gw.connectAs(await token('root', { role: 'admin' }))
    await alice.subscribe('gen-1')
    await admin.subscribe('gen-1')
    await put('gen-1', { status: 'processing', secret: 'bob-1' }, 'bob', true)
    await put('gen-1', { status: 'processing', secret: 'bob-2' }, 'bob')
    t.match(await alice.nextOfType('error', 'gen-1'), { code: 'forbidden' })
    t.match((await admin.next((m) => (m.data as { secret?: string } | null)?.secret === 'bob-2')).data, { owner: undefined, secret: 'bob-2' }, 'others go on')
    // A marker after the new generation's updates: alice must have had none of them.
    await put('gen-1b', { marker: true }, 'alice')
    await alice.subscribe('gen-1b')
    t.notOk(alice.messages.some((m) => JSON.stringify(m).includes('bob-')), "alice saw none of bob's job")
  })

  t.test('the key expires and the id is reused by another user: the same', async (t) => {
    await put('gen-2', { status: 'completed', secret: 'alice-2' }, 'alice')
    const alice = await gw.connectAs(await token('alice'))
    await alice.subscribe('gen-2')
    // What expiry does: the state after --state-ttl, its owner record 7 days after the last
    // write (until then the id stays alice's: another user's write is refused, owner-survives.ts).
    await redis.client().del('jobwire:job:gen-2', 'jobwire:job-owner:gen-2')
    await put('gen-2', { status: 'processing', secret: 'mallory-2' }, 'mallory')
    t.match(await alice.nextOfType('error', 'gen-2'), { code: 'forbidden' })
    await put('gen-2', { status: 'processing', secret: 'mallory-3' }, 'mallory')
    await put('gen-2b', { marker: true }, 'alice')
    await alice.subscribe('gen-2b')
    t.notOk(alice.messages.some((m) => JSON.stringify(m).includes('mallory-')), "alice saw none of mallory's job")
  })
})
