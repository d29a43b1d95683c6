// /metrics shows each gateway process's memory, CPU, descriptors and event-loop delay, as the bench sees them, and node counters that survive worker restarts and pauses.

import t from 'tap'
import { readFileSync } from 'node:fs'
import WebSocket from 'ws'
import { SEMI_SPACE_FLAG } from '../src/node/v8-flags.js'
import { foldLoopDelays, LOOP_DELAY_BUCKETS } from '../src/support/process-stats.js'
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
})

t.test("perf_hooks' 10 ms sampling interval is not counted as delay", (t) => {
  // What perf_hooks reports for a loop that is never late: every tick 10 ms apart, a little over.
  const onTime = { count: 100, mean: 10.2e6, percentiles: new Map([[0, 10.1e6], [50, 10.2e6], [99, 10.3e6], [100, 10.3e6]]) }
  const counts = new Array<number>(LOOP_DELAY_BUCKETS.length + 1).fill(0)
  const folded = foldLoopDelays(counts, onTime)
  t.equal(folded.count, 100, 'every sample placed')
  t.equal(counts[0], 100, 'all in the first bucket (<= 1 ms), not in le=0.025')
  t.ok(Math.abs(folded.sumSeconds - 100 * 0.0002) < 1e-9, 'the sum counts 0.2 ms a sample')
  // A loop 30 ms late once in a hundred ticks.
  const late = { count: 100, mean: 10.5e6, percentiles: new Map([[0, 10.1e6], [98, 10.2e6], [100, 40e6]]) }
  const more = new Array<number>(LOOP_DELAY_BUCKETS.length + 1).fill(0)
  foldLoopDelays(more, late)
  t.same([more[0], more[LOOP_DELAY_BUCKETS.indexOf(0.05)]], [98, 2], '98 on time, the late tail in le=0.05')
  t.end()
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

t.test('node counters never go backwards: a killed worker stays counted, a paused one is marked stale', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const port = await freePort()
  const served = serveProcess(['--port', String(port), '--workers', '2', '--redis', redis.url, '--connect-rate-per-ip', '0', '--max-connections-per-ip', '0'])
  t.teardown(() => reap(served))
  await served.waitFor(/jobwire listening/, 20_000)
  const scrape = async () => (await fetch(`http://127.0.0.1:${port}/metrics`)).text()
  // Connections spread over both workers (SO_REUSEPORT), each counted by the one that took it.
  for (let i = 0; i < 40; i++) {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws/jobs`, 'jobwire.json')
    await new Promise((resolve, reject) => {
      ws.on('open', resolve)
      ws.on('error', reject)
    })
    ws.close()
  }
  let before = 0
  await until(async () => (before = value(await scrape(), 'jobwire_connections_opened_total')) === 40, 'every open counted', 5_000)
  const first = await scrape()
  t.ok(value(first, 'jobwire_process_cpu_seconds_total{process="worker-0"}') > 0, 'CPU per process')
  t.ok(value(first, 'jobwire_process_open_fds{process="worker-0"}') > 0, 'open descriptors per process')
  t.ok(value(first, 'jobwire_process_max_fds{process="worker-0"}') > 0, 'their limit')
  t.ok(value(first, 'jobwire_process_start_time_seconds{process="primary"}') > 1.7e9, 'start time, the primary included')
  t.ok(value(first, 'jobwire_process_resident_memory_bytes{process="primary"}') > 0, "the primary's memory")
  t.match(first, /^jobwire_build_info\{version="[^"]+",node="v\d+[^"]*"\} 1$/m, 'build info')
  t.equal(value(first, 'jobwire_worker_restarts_total'), 0)

  const children = readFileSync(`/proc/${served.proc.pid}/task/${served.proc.pid}/children`, 'utf8').trim().split(/\s+/).map(Number)
  process.kill(children[0]!, 'SIGKILL')
  // A kept-alive connection to the killed worker fails once: retried.
  const tryScrape = () => scrape().catch(() => '')
  await until(async () => value(await tryScrape(), 'jobwire_worker_restarts_total') === 1, 'the worker restarted', 15_000, 100)
  await until(async () => value(await tryScrape(), 'jobwire_workers') === 2, 'both workers reporting again', 15_000, 100)
  t.equal(value(await scrape(), 'jobwire_connections_opened_total'), before, 'the killed worker\'s connections are still counted')

  const live = readFileSync(`/proc/${served.proc.pid}/task/${served.proc.pid}/children`, 'utf8').trim().split(/\s+/).map(Number)
  process.kill(live[1]!, 'SIGSTOP')
  t.teardown(() => {
    try {
      process.kill(live[1]!, 'SIGCONT')
    } catch {}
  })
  // A scrape that lands on the paused worker itself cannot be answered; one that lands on the
  // other is, with the paused one at its last figures.
  let answered = ''
  await until(async () => {
    const res = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(3_000) }).catch(() => null)
    if (res === null) return false
    answered = await res.text()
    return true
  }, 'a scrape answered by the running worker', 20_000, 50)
  t.equal(value(answered, 'jobwire_workers_stale'), 1, 'the paused worker is marked stale')
  t.equal(value(answered, 'jobwire_connections_opened_total'), before, 'and its counts are still in the sum')
  process.kill(live[1]!, 'SIGCONT')
})
