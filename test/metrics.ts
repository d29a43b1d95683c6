// GET /metrics: Prometheus text with the counters and gauges the README lists, and the
// producer-to-send histogram fed by payloads' ts.

import t from 'tap'
import { startGateway } from './fixtures/gateway.js'

function value(text: string, name: string): number {
  const match = new RegExp(`^${name} (\\S+)$`, 'm').exec(text)
  if (!match) throw new Error(`${name} missing from /metrics`)
  return Number(match[1])
}

t.test('metrics reflect what happened', async (t) => {
  const gw = await startGateway()
  t.teardown(() => gw.stop())
  const c = await gw.connect()
  await c.subscribe('m-1')
  await gw.gateway.broker.publishProgress('m-1', Buffer.from('{"progress":1}'))
  await c.nextOfType('job_update')
  await gw.gateway.broker.publish('progress:m-1', 'not json')
  await gw.gateway.broker.publish('progress:m-1', '{"progress":2}')
  await c.nextOfType('job_update')
  c.sendRaw('{nope', false)
  await c.nextOfType('error')

  const res = await fetch(`${gw.http}/metrics`)
  t.equal(res.status, 200)
  t.match(res.headers.get('content-type'), /text\/plain; version=0.0.4/)
  const text = await res.text()
  t.equal(value(text, 'jobwire_connections'), 1)
  t.equal(value(text, 'jobwire_subscriptions'), 1)
  t.equal(value(text, 'jobwire_jobs_watched'), 1)
  t.equal(value(text, 'jobwire_broker_up'), 1)
  t.equal(value(text, 'jobwire_broker_messages_total'), 3)
  t.equal(value(text, 'jobwire_producer_malformed_total'), 1)
  t.equal(value(text, 'jobwire_updates_published_total'), 2)
  t.ok(value(text, 'jobwire_frames_out_total') >= 4, 'status, two updates, an error')
  t.ok(value(text, 'jobwire_bytes_out_total') > 100)
  t.equal(value(text, 'jobwire_slow_consumer_closes_total'), 0)
  t.equal(value(text, 'jobwire_broker_reconnects_total'), 0)
  t.equal(value(text, 'jobwire_workers'), 1)
  t.match(text, /^jobwire_client_errors_total\{code="bad_json"\} 1$/m)
  t.match(text, /^# TYPE jobwire_producer_to_send_seconds histogram$/m)
  t.equal(value(text, 'jobwire_producer_to_send_seconds_count'), 1, 'one update carried ts (the plain publish did not)')
  const buckets = [...text.matchAll(/^jobwire_producer_to_send_seconds_bucket\{le="([^"]+)"\} (\d+)$/gm)].map((m) => Number(m[2]))
  t.ok(buckets.length >= 10 && buckets.every((b, i) => i === 0 || b >= buckets[i - 1]!), 'cumulative buckets')
  t.equal(buckets.at(-1), 1, '+Inf holds every observation')
  for (const line of text.split('\n').filter((l) => l && !l.startsWith('#'))) {
    t.match(line, /^jobwire_[a-z_]+(\{[a-z]+="[^"]*"(,[a-z]+="[^"]*")*\})? -?[\d.e+-]+$/, `well-formed: ${line}`)
  }
})
