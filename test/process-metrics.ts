// /metrics shows each gateway process's memory and event-loop delay, as the bench sees them.

import t from 'tap'
import { readFileSync } from 'node:fs'
import { SEMI_SPACE_FLAG } from '../src/node/v8-flags.js'
import { startGateway } from './fixtures/gateway.js'
import { freePort } from './fixtures/ports.js'
import { reap, serveProcess } from './fixtures/process.js'
import { startRedis } from './fixtures/redis.js'
import { until } from './fixtures/until.js'

const value = (text: string, series: string) => Number(new RegExp(`^${series.replace(/[{}]/g, '\\$&')} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN)

t.test('one process: RSS, heap and an event-loop delay histogram', async (t) => {
  const gw = await startGateway()
  t.teardown(() => gw.stop())
  let text = ''
  await until(async () => {
    text = await (await fetch(`${gw.http}/metrics`)).text()
    return value(text, 'jobwire_event_loop_delay_seconds_count{process="main"}') > 0
  }, 'event-loop samples')
  t.ok(value(text, 'jobwire_process_resident_memory_bytes{process="main"}') > 10_000_000, 'RSS in bytes')
  t.ok(value(text, 'jobwire_process_heap_used_bytes{process="main"}') > 1_000_000, 'heap in bytes')
  t.ok(value(text, 'jobwire_process_heap_committed_bytes{process="main"}') >= value(text, 'jobwire_process_heap_used_bytes{process="main"}'), 'the committed heap holds the used heap')
  const buckets = [...text.matchAll(/^jobwire_event_loop_delay_seconds_bucket\{process="main",le="([^"]+)"\} (\d+)$/gm)].map((m) => Number(m[2]))
  t.ok(buckets.length >= 10 && buckets.every((b, i) => i === 0 || b >= buckets[i - 1]!), 'cumulative buckets')
  t.equal(buckets.at(-1), value(text, 'jobwire_event_loop_delay_seconds_count{process="main"}'), '+Inf holds every sample')
  // perf_hooks' ticks are 10 ms apart; an idle loop is late by far less than that, so at least
  // half the samples sit below 10 ms (buckets[3] is le="0.01") once the interval is subtracted.
  t.ok(buckets[3]! >= buckets.at(-1)! / 2, `an idle loop's delay excludes the 10 ms sampling interval (${buckets[3]} of ${buckets.at(-1)} samples <= 10 ms)`)
})

t.test('with workers: one series per worker', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const port = await freePort()
  const served = serveProcess(['--port', String(port), '--workers', '2', '--redis', redis.url])
  t.teardown(() => reap(served))
  await served.waitFor(/jobwire listening/, 20_000)
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()
  for (const worker of ['worker-0', 'worker-1']) {
    t.ok(value(text, `jobwire_process_resident_memory_bytes{process="${worker}"}`) > 0, `${worker} RSS`)
  }
  // The workers run with the young-generation cap (src/node/v8-flags.ts), given by the primary.
  const children = readFileSync(`/proc/${served.proc.pid}/task/${served.proc.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean)
  t.equal(children.length, 2, 'two workers')
  for (const pid of children) {
    t.ok(readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes(SEMI_SPACE_FLAG), `worker ${pid} runs with ${SEMI_SPACE_FLAG}`)
  }
})
