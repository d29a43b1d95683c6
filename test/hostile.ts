// Hostile input: whatever an attacker sends, the gateway does not crash, leaks nobody's job,
// and keeps serving a well-behaved client on the same node with its updates intact.

import t from 'tap'
import { connect as netConnect } from 'node:net'
import fc from 'fast-check'
import { pack } from 'msgpackr'
import { startGateway } from './fixtures/gateway.js'
import { SECRET, token, unsignedToken } from './fixtures/tokens.js'
import type { Message, TestClient } from './fixtures/ws-client.js'
import { until } from './fixtures/until.js'

// A crash anywhere in the gateway (it runs in this process) fails the run.
const crashes: Error[] = []
process.on('uncaughtException', (err) => crashes.push(err))
process.on('unhandledRejection', (err) => crashes.push(err as Error))

t.test('hostile clients', async (t) => {
  const gw = await startGateway({ 'jwt-secret': SECRET, 'max-messages-per-sec': '200', 'max-subscriptions': '50' })
  t.teardown(() => gw.stop())
  const broker = gw.gateway.broker
  const progress = (job: string, payload: object, owner: string) => broker.publishProgress(job, Buffer.from(JSON.stringify(payload)), { owner })
  await progress('alice-secret', { status: 'processing', secret: 'alice-data' }, 'alice')
  const alice = await gw.connectAs(await token('alice'))
  await alice.subscribe('alice-secret')
  let aliceSeq = 1
  const aliceUpdate = async () => {
    aliceSeq = await progress('alice-secret', { status: 'processing', step: aliceSeq, secret: 'alice-data' }, 'alice')
  }
  const mallory = () => gw.connectAs(malloryToken)
  const malloryToken = await token('mallory')
  const leaked = (c: TestClient) => c.messages.some((m: Message) => JSON.stringify(m).includes('alice-data'))

  t.test('invalid UTF-8 in a text frame closes only that socket', async (t) => {
    const m = await mallory()
    m.sendRaw(Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d]), false)
    const code = await m.closed
    t.ok(code === 1007 || code === 1006, `closed (${code})`)
    await aliceUpdate()
    t.match((await alice.nextOfType('job_update')).data, { step: aliceSeq - 1 })
  })

  t.test('deep nesting, prototype keys and odd shapes get errors, not crashes', async (t) => {
    const m = await mallory()
    const deepJson = '['.repeat(2000) + ']'.repeat(2000)
    m.sendRaw(deepJson, false)
    t.match(await m.nextOfType('error'), { code: 'bad_message' })
    m.sendRaw('{"type":"subscribe_job","job_id":"alice-secret","__proto__":{"admin":true,"role":"admin"}}', false)
    t.match(await m.nextOfType('error'), { code: 'forbidden' }, '__proto__ in the message grants nothing')
    m.sendRaw('{"type":"ping","constructor":{"prototype":{"polluted":true}},"__proto__":{"polluted":true}}', false)
    await m.nextOfType('pong')
    t.equal(({} as Record<string, unknown>).polluted, undefined, 'Object.prototype untouched')
    m.sendRaw('{"type":"subscribe_job","job_id":{"toString":"alice-secret"}}', false)
    t.match(await m.nextOfType('error'), { code: 'bad_message' })
    m.sendRaw('{"type":"subscribe_job","job_id":["alice-secret"]}', false)
    t.match(await m.nextOfType('error'), { code: 'bad_message' })
    const mp = await gw.connectAs(malloryToken, 'jobwire.msgpack')
    mp.sendRaw(Buffer.alloc(3000, 0x91), true) // 3,000 nested one-element arrays
    t.match(await mp.nextOfType('error'), { code: /bad_json|bad_message/ })
    mp.sendRaw(pack({ type: 'subscribe_job', job_id: 'alice-secret', __proto__: { admin: true } }), true)
    t.match(await mp.nextOfType('error'), { code: 'forbidden' })
    t.notOk(leaked(m) || leaked(mp))
  })

  t.test('a burst of thousands of subscribes is rate limited and then cut; others keep streaming', async (t) => {
    const m = await mallory()
    for (let i = 0; i < 3000; i++) m.send({ type: 'subscribe_job', job_id: `burst-${i}` })
    t.equal(await m.closed, 1008)
    t.ok(m.all('error').some((e) => e.code === 'rate_limited'))
    await aliceUpdate()
    t.match((await alice.nextOfType('job_update')).data, { step: aliceSeq - 1 })
  })

  t.test('a connection flood from one address is refused; the node keeps serving', async (t) => {
    const rate = 20
    const flood = await startGateway({ 'connect-rate-per-ip': String(rate) })
    t.teardown(() => flood.stop())
    const started = performance.now()
    const results = await Promise.allSettled(Array.from({ length: 200 }, () => flood.connect()))
    // Every upgrade has been answered, so every connection has been charged by now.
    const seconds = (performance.now() - started) / 1000
    const opened = results.filter((r) => r.status === 'fulfilled').map((r) => (r as PromiseFulfilledResult<TestClient>).value)
    // Each socket shows which way admission went: refused ones are closed on open without
    // reading anything, admitted ones answer a ping.
    for (const c of opened) if (c.closeCode === undefined) c.send({ type: 'ping', id: 'settle' })
    const answered = (c: TestClient) => c.messages.some((m) => m.type === 'pong' && m.id === 'settle')
    await until(() => opened.every((c) => answered(c) || c.closeCode !== undefined), 'every socket to be answered or closed')
    const kept = opened.filter((c) => answered(c) && c.closeCode === undefined)
    // A burst of twice the rate, plus what the bucket refilled while the flood came in (a
    // loaded machine takes longer to open 200 sockets).
    const bound = 2 * rate + Math.floor(rate * seconds)
    t.ok(kept.length <= bound, `at most a burst got in (${kept.length} of 200 in ${seconds.toFixed(2)} s; bound ${bound})`)
    t.ok(kept.length < opened.length, 'the flood was refused')
    const ok = await flood.connect(undefined, { localAddress: '127.0.0.4' })
    await ok.subscribe('after-flood')
    t.pass('another address still connects and subscribes')
  })

  t.test('raw garbage instead of an HTTP upgrade, and half-open handshakes', async (t) => {
    const garbage = [Buffer.from('GARBAGE\r\n\r\n'), Buffer.alloc(10_000, 0x41), Buffer.from('GET /ws/jobs HTTP/1.1\r\nUpgrade: websocket\r\n\r\n')]
    for (const bytes of garbage) {
      await new Promise<void>((resolve) => {
        const s = netConnect(gw.port, '127.0.0.1', () => s.end(bytes))
        s.on('error', () => resolve())
        s.on('close', () => resolve())
        s.resume()
      })
    }
    await aliceUpdate()
    t.match((await alice.nextOfType('job_update')).data, { step: aliceSeq - 1 })
  })

  t.test('forged and unsigned tokens never get a socket', async (t) => {
    for (const bad of [unsignedToken('alice', { role: 'admin' }), `${(await token('alice')).slice(0, -4)}AAAA`, 'a.b.c', 'x'.repeat(9000)]) {
      const result = await gw.connectAs(bad).then(() => 'connected', (e: Error) => e.message)
      t.equal(result, 'upgrade refused: 401')
    }
  })

  t.test('property: random messages never crash the node, never leak, never disturb alice', async (t) => {
    const attacker = await mallory()
    const attackerMp = await gw.connectAs(malloryToken, 'jobwire.msgpack')
    const jobIds = fc.oneof(fc.constant('alice-secret'), fc.constant('alice-secret '), fc.string({ maxLength: 140 }), fc.constantFrom('', '*', 'alice-*', '../alice-secret'))
    const message = fc.oneof(
      fc.record({ type: fc.constantFrom('subscribe_job', 'unsubscribe_job', 'job_status', 'ping', 'pong', 'job_update'), job_id: jobIds, id: fc.anything() }, { requiredKeys: ['type'] }),
      fc.anything(),
      fc.jsonValue(),
      fc.string({ maxLength: 300 }),
      fc.uint8Array({ maxLength: 300 }),
    )
    let runs = 0
    await fc.assert(fc.asyncProperty(fc.array(message, { maxLength: 25 }), async (batch) => {
      runs++
      for (const m of batch) {
        if (attacker.closeCode !== undefined) break
        if (m instanceof Uint8Array) {
          attacker.sendRaw(Buffer.from(m), true)
          attackerMp.sendRaw(Buffer.from(m), true)
        } else if (typeof m === 'string') {
          attacker.sendRaw(m, false)
        } else {
          let json: string | undefined
          try {
            json = JSON.stringify(m)
          } catch {
            json = undefined // BigInt and the like: not representable, skip
          }
          if (json !== undefined) attacker.sendRaw(json, false)
          try {
            attackerMp.sendRaw(pack(m), true)
          } catch {
            // not packable
          }
        }
      }
      await aliceUpdate()
      const update = await alice.nextOfType('job_update', 'alice-secret')
      return (update.data as { step: number }).step === aliceSeq - 1 && !leaked(attacker) && !leaked(attackerMp) && crashes.length === 0
    }), { numRuns: 60 })
    t.ok(runs >= 60)
    const steps = alice.all('job_update', 'alice-secret').map((m) => (m.data as { seq: number }).seq)
    t.ok(steps.every((s, i) => i === 0 || s > steps[i - 1]!), "alice's updates stayed in order")
    t.equal(crashes.length, 0, crashes.map((e) => e.stack).join('\n'))
  })
})
