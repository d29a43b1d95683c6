// Control frames count (issue 18, item 7): pings and pongs from a client draw on the same
// per-socket budget as its messages (--max-messages-per-sec), and a socket that keeps flooding
// them is closed with 1008 and a reason, while other sockets go on getting their updates and a
// normal client, pings and the pongs to the gateway's own pings included, is never closed.

import t from 'tap'
import { startGateway } from './fixtures/gateway.js'
import { SECRET, token } from './fixtures/tokens.js'

t.test('a ping flood closes the flooding socket, nobody else', async (t) => {
  const gw = await startGateway({
    'jwt-secret': SECRET, 'producer-key': 'producer-key-0123456789',
    'max-messages-per-sec': '20', 'idle-timeout': '8',
  })
  t.teardown(() => gw.stop())
  const publish = (n: number) => gw.gateway.broker.publishProgress('ctl-1', Buffer.from(JSON.stringify({ status: 'processing', progress: n % 100 })), { owner: 'victim' })
  await publish(0)

  const victim = await gw.connectAs(await token('victim'))
  await victim.subscribe('ctl-1')
  const normal = await gw.connectAs(await token('normal'))
  const quiet = await gw.connectAs(await token('quiet'))
  let serverPings = 0
  quiet.ws.on('ping', () => serverPings++) // ws answers each with a pong

  let n = 0
  const producer = setInterval(() => void publish(++n), 50)
  t.teardown(() => clearInterval(producer))
  // A normal client: a WebSocket ping every 250 ms (as browsers' and libraries' keep-alives
  // do, far more often than usual) and an application ping every 500 ms.
  let pongs = 0
  normal.ws.on('pong', () => pongs++)
  const keepAlive = setInterval(() => {
    normal.ws.ping()
    if (Math.random() < 0.5) normal.send({ type: 'ping' })
  }, 250)
  t.teardown(() => clearInterval(keepAlive))

  const flooder = await gw.connectAs(await token('mallory'))
  const started = Date.now()
  let sent = 0
  // Thousands of pings a second, for at most 5 s, while the socket is open.
  while (flooder.closeCode === undefined && Date.now() - started < 5000) {
    if (flooder.ws.bufferedAmount < 64 * 1024) for (let i = 0; i < 200; i++, sent++) flooder.ws.ping()
    await new Promise((resolve) => setImmediate(resolve))
  }
  const code = await Promise.race([flooder.closed, new Promise((resolve) => setTimeout(() => resolve('still open'), 2000))])
  t.equal(code, 1008, `the flooder is closed with 1008 (policy violation) after ${sent} pings in ${Date.now() - started} ms`)
  t.match(flooder.closeReason, /ping\/pong rate limit exceeded/, 'with a reason')

  const before = victim.messages.filter((m) => m.type === 'job_update').length
  await new Promise((resolve) => setTimeout(resolve, 500))
  t.ok(victim.messages.filter((m) => m.type === 'job_update').length > before + 3, 'the other socket keeps getting its job updates')

  // Long enough for the gateway's own keep-alive ping to the quiet socket (idle timeout 8 s).
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, 10_500 - (Date.now() - started))))
  t.ok(serverPings >= 1, `the quiet socket was pinged by the gateway (${serverPings}) and answered`)
  for (const [name, c] of [['victim', victim], ['normal', normal], ['quiet', quiet]] as const) {
    t.equal(c.closeCode, undefined, `${name} is still open`)
  }
  t.ok(pongs > 20, `the normal client's pings were answered (${pongs})`)
  normal.send({ type: 'ping', id: 7 })
  t.match(await normal.next((m) => m.type === 'pong' && m.id === 7), { id: 7 }, 'and it is still served')
})

t.test('a flood paced to slip one frame through per refill is closed too', async (t) => {
  const gw = await startGateway({ 'jwt-secret': SECRET, 'max-messages-per-sec': '20' })
  t.teardown(() => gw.stop())
  const flooder = await gw.connectAs(await token('mallory'))
  const started = Date.now()
  let sent = 0
  // 300 pings a second, 15 times the budget, in small bursts: between two of them the bucket
  // refills one token, so an accepted frame keeps coming; at most 8 s.
  while (flooder.closeCode === undefined && Date.now() - started < 8000) {
    for (let i = 0; i < 15; i++, sent++) flooder.ws.ping()
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  const code = await Promise.race([flooder.closed, new Promise((resolve) => setTimeout(() => resolve('still open'), 2000))])
  t.equal(code, 1008, `closed with 1008 after ${sent} pings in ${Date.now() - started} ms`)
})
