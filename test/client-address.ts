// Per-address limits that fit a fleet: the client behind trusted proxies, IPv6 per /64, and
// proxies never limited as if they were one client.

import t from 'tap'
import { parseCidrs, resolveClient } from '../src/access/client-address.js'
import { freePort } from './fixtures/ports.js'
import { reap, serveProcess } from './fixtures/process.js'
import { connect, type TestClient } from './fixtures/ws-client.js'

t.test('the client address rule', (t) => {
  const rule = (trustProxy: boolean, cidrs = ['127.0.0.0/8', '::1/128', '10.0.0.0/8']) => ({ trustProxy, trustedProxies: parseCidrs(cidrs) })
  t.same(resolveClient(rule(false), '203.0.113.9', ['1.2.3.4']), { ip: '203.0.113.9', limitKey: '203.0.113.9' }, 'without --trust-proxy the peer counts')
  t.same(resolveClient(rule(false), '127.0.0.1', []), { ip: '127.0.0.1', limitKey: null }, 'a trusted address is not limited as one client')
  t.same(resolveClient(rule(true), '10.0.0.5', ['198.51.100.7, 203.0.113.9']).ip, '203.0.113.9', 'the right-most entry')
  t.same(resolveClient(rule(true), '10.0.0.5', ['198.51.100.7', '203.0.113.9']).ip, '203.0.113.9', 'header lines are joined: a proxy that adds its own line does not let the client choose')
  t.same(resolveClient(rule(true), '127.0.0.1', ['203.0.113.9, 10.0.0.2']).ip, '203.0.113.9', 'trusted hops are skipped')
  t.same(resolveClient(rule(true), '203.0.113.50', ['1.2.3.4']), { ip: '203.0.113.50', limitKey: '203.0.113.50' }, 'a peer that is not a trusted proxy cannot forward')
  t.same(resolveClient(rule(true), '10.0.0.5', ['not-an-ip']), { ip: 'unknown (via 10.0.0.5)', limitKey: 'unknown@10.0.0.5' }, 'garbage is one unknown client, not a free pass')
  t.same(resolveClient(rule(true), '10.0.0.5', ['10.0.0.9']).limitKey, null, 'all hops trusted: not limited')
  t.same(resolveClient(rule(true), '::ffff:127.0.0.1', ['203.0.113.9']).ip, '203.0.113.9', 'IPv4-mapped peers are recognised')
  t.same(resolveClient(rule(false), '2001:db8:1:2:3:4:5:6', []).limitKey, '2001:db8:1:2::/64', 'IPv6 per /64')
  t.same(resolveClient(rule(false), '2001:db8::1', []).limitKey, '2001:db8:0:0::/64')
  t.same(resolveClient(rule(false), '2001:db8:1:2:ffff::9', []).limitKey, '2001:db8:1:2::/64', 'one /64, many hosts')
  t.throws(() => parseCidrs(['10.0.0.0/33']), /not an IP address or CIDR/)
  t.throws(() => parseCidrs(['example.com']), /not an IP address or CIDR/)
  t.end()
})

t.test('out of the box, a local script that opens 1,000 sockets at once gets every one', async (t) => {
  const port = await freePort()
  const served = serveProcess(['--port', String(port)])
  t.teardown(() => reap(served))
  await served.waitFor(/jobwire listening/)
  const outcomes = await Promise.all(Array.from({ length: 1000 }, () => connect(`ws://127.0.0.1:${port}/ws/jobs`).then(async (c: TestClient) => {
    c.send({ type: 'ping', id: 1 })
    await c.nextOfType('pong', undefined, 20_000)
    return c
  }, () => null)))
  const open = outcomes.filter((c): c is TestClient => c !== null)
  t.equal(open.length, 1000, 'all 1,000 admitted')
  t.equal(open.filter((c) => c.closeCode !== undefined).length, 0, 'none closed with 1013')
  await Promise.all(open.map((c) => c.close()))
})

t.test('behind a trusted proxy, forged X-Forwarded-For lines do not multiply a client', async (t) => {
  const port = await freePort()
  // The proxy is loopback (trusted by default); its clients are counted by the address it adds.
  const served = serveProcess(['--port', String(port), '--trust-proxy', '--max-connections-per-ip', '30'])
  t.teardown(() => reap(served))
  await served.waitFor(/jobwire listening/)
  const outcomes = await Promise.all(Array.from({ length: 40 }, (_, i) =>
    connect(`ws://127.0.0.1:${port}/ws/jobs`, undefined, { headers: { 'x-forwarded-for': `198.51.100.${i}, 203.0.113.9` } }).then(async (c) => {
      // Admitted sockets answer a ping; refused ones get rate_limited, then 1013.
      c.send({ type: 'ping' })
      const first = await c.next((m) => m.type === 'pong' || m.type === 'error', 10_000)
      return first.type === 'pong' ? 'admitted' : (first.code as string)
    }, () => 'refused')))
  const limited = outcomes.filter((o) => o === 'rate_limited').length
  t.equal(outcomes.filter((o) => o === 'admitted').length, 30, '30 admitted')
  t.equal(limited, 10, '10 refused: the forged entries did not make them 40 clients')
})
