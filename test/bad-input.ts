// Bad input from clients and producers gets a clear error, loses nothing, and never disturbs
// other clients.

import t from 'tap'
import { pack } from 'msgpackr'
import { startGateway } from './fixtures/gateway.js'
import { connect } from './fixtures/ws-client.js'

t.test('bad input', async (t) => {
  const gw = await startGateway({ 'max-subscriptions': '3', 'max-message-bytes': '512' })
  t.teardown(() => gw.stop())
  const broker = gw.gateway.broker

  t.test('malformed client messages get the contract error codes and the socket stays open', async (t) => {
    const c = await gw.connect()
    const cases: Array<[string, string]> = [
      ['{not json', 'bad_json'],
      ['', 'bad_json'],
      ['[1,2]', 'bad_message'],
      ['"subscribe_job"', 'bad_message'],
      ['null', 'bad_message'],
      ['{}', 'bad_message'],
      ['{"type":7}', 'bad_message'],
      ['{"type":"explode"}', 'bad_message'],
      ['{"type":"subscribe_job"}', 'bad_message'],
      ['{"type":"subscribe_job","job_id":42}', 'bad_message'],
      ['{"type":"subscribe_job","job_id":""}', 'bad_job_id'],
      ['{"type":"subscribe_job","job_id":"a b"}', 'bad_job_id'],
      ['{"type":"subscribe_job","job_id":"../etc/passwd"}', 'bad_job_id'],
      [JSON.stringify({ type: 'job_status', job_id: 'x'.repeat(129) }), 'bad_job_id'],
      ['{"type":"unsubscribe_job","job_id":"é"}', 'bad_job_id'],
      ['{"type":"ping","id":{"a":1}}', 'bad_message'],
      [JSON.stringify({ type: 'ping', id: 'x'.repeat(200) }), 'bad_message'],
    ]
    for (const [raw, code] of cases) {
      c.sendRaw(raw, false)
      const error = await c.nextOfType('error')
      t.equal(error.code, code, `${raw.slice(0, 40)} -> ${code}`)
      t.type(error.message, 'string')
    }
    c.sendRaw(Buffer.from([0xde, 0xad, 0xbe, 0xef]), true)
    t.match(await c.nextOfType('error'), { code: 'bad_json', message: /text frames/ })
    c.send({ type: 'ping', id: 'still-open' })
    t.same(await c.nextOfType('pong'), { type: 'pong', id: 'still-open' })
    t.ok(gw.gateway.metricsSnapshot().labelled.client_errors_total!.bad_job_id! >= 5, 'errors are counted by code')
  })

  t.test('msgpack sockets: text frames and undecodable binary get bad_json', async (t) => {
    const c = await gw.connect('jobwire.msgpack')
    c.sendRaw('{"type":"ping"}', false)
    t.match(await c.nextOfType('error'), { code: 'bad_json' })
    c.sendRaw(Buffer.from([0xc1, 0xff, 0x00]), true)
    t.match(await c.nextOfType('error'), { code: 'bad_json' })
    c.sendRaw(pack(['a']), true)
    t.match(await c.nextOfType('error'), { code: 'bad_message' })
    c.sendRaw(pack({ type: 'subscribe_job', job_id: 'mp-bad-1' }), true)
    t.match(await c.nextOfType('job_status'), { job_id: 'mp-bad-1', data: null })
  })

  t.test('a message over the size limit closes the socket with 1009', async (t) => {
    const c = await gw.connect()
    c.sendRaw(JSON.stringify({ type: 'ping', id: 'x'.repeat(600) }), false)
    t.equal(await c.closed, 1009)
    t.match(c.closeReason, /larger than 512 bytes/)
  })

  t.test('the per-socket subscription cap answers too_many_subscriptions; the others keep working', async (t) => {
    const c = await gw.connect()
    for (const id of ['cap-1', 'cap-2', 'cap-3']) await c.subscribe(id)
    c.send({ type: 'subscribe_job', job_id: 'cap-4' })
    t.match(await c.nextOfType('error'), { code: 'too_many_subscriptions', job_id: 'cap-4' })
    await broker.publishProgress('cap-3', Buffer.from('{"progress":1}'))
    t.match(await c.nextOfType('job_update', 'cap-3'), { data: { progress: 1 } })
    c.send({ type: 'unsubscribe_job', job_id: 'cap-1' })
    await c.nextOfType('unsubscribed')
    t.match(await c.subscribe('cap-4'), { job_id: 'cap-4' }, 'room again after an unsubscribe')
  })

  t.test('upgrades: unsupported subprotocol is refused with 400, other paths with 404', async (t) => {
    await t.rejects(connect(gw.wsUrl, 'chat.v2'), { message: 'upgrade refused: 400' })
    await t.rejects(connect(`ws://127.0.0.1:${gw.port}/ws/other`), { message: 'upgrade refused: 404' })
    const c = await connect(gw.wsUrl, ['chat.v2', 'jobwire.json'])
    t.equal(c.ws.protocol, 'jobwire.json', 'the first supported one offered is chosen')
    await c.close()
  })

  t.test('malformed producer payloads are dropped and counted; subscribers see only valid frames', async (t) => {
    const c = await gw.connect()
    const m = await gw.connect('jobwire.msgpack')
    await c.subscribe('prod-bad')
    await m.subscribe('prod-bad')
    const before = gw.gateway.metricsSnapshot().counters.producer_malformed_total!
    const garbage: Array<string | Buffer> = [
      'not json', '[1,2,3]', '"a string"', '42', 'null', '{"a":', '',
      Buffer.from([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xff, 0x22, 0x7d]), // {"a":"\xff"}
      pack({ a: 1 }).subarray(0, 3), Buffer.concat([pack({ a: 1 }), Buffer.from([0x00])]), pack([1, 2]),
    ]
    for (const g of garbage) await broker.publish('progress:prod-bad', g)
    await broker.publish('progress:prod-bad', '{"ok":true}')
    t.same((await c.nextOfType('job_update', 'prod-bad')).data, { ok: true })
    t.same((await m.nextOfType('job_update', 'prod-bad')).data, { ok: true })
    t.equal(c.all('job_update').length, 1, 'JSON client saw only the valid frame')
    t.equal(m.all('job_update').length, 1, 'msgpack client saw only the valid frame')
    t.equal(gw.gateway.metricsSnapshot().counters.producer_malformed_total! - before, garbage.length)
  })

  t.test('a client spraying garbage does not disturb a well-behaved client', async (t) => {
    const good = await gw.connect()
    await good.subscribe('calm-1')
    const noisy = await gw.connect()
    const spray = (async () => {
      for (let i = 0; i < 2000; i++) noisy.sendRaw(i % 2 ? '{garbage' : '{"type":"nope"}', false)
    })()
    for (let i = 1; i <= 200; i++) await broker.publishProgress('calm-1', Buffer.from(JSON.stringify({ progress: i / 2 })))
    await spray
    await good.next((m) => m.type === 'job_update' && (m.data as { seq: number }).seq === 200)
    const seqs = good.all('job_update', 'calm-1').map((m) => (m.data as { seq: number }).seq)
    t.same(seqs, Array.from({ length: 200 }, (_, i) => i + 1), 'every update, in order')
    t.equal(good.all('error').length, 0)
    noisy.send({ type: 'ping' })
    await noisy.nextOfType('pong')
  })
})
