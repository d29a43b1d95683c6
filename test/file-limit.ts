// A process near its open-files limit: before, with `prlimit --nofile=2000` and 2,300 sockets,
// accept() failed with EMFILE in a busy loop (97% of a core), 323 clients waited in the accept
// queue until they gave up, and /healthz, /readyz and /metrics went unanswered. Now the gateway
// stops admitting a margin below the limit: the surplus gets 503 at_capacity at once, counted,
// and the health routes keep answering.

import t from 'tap'
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import WebSocket from 'ws'
import { connectionsUnder, fileHeadroom, openFilesLimit } from '../src/support/file-limit.js'
import { CLI } from './fixtures/process.js'
import { freePort } from './fixtures/ports.js'
import { until } from './fixtures/until.js'

t.test('the limit is read from /proc and leaves a margin', async (t) => {
  t.equal(openFilesLimit('Limit                     Soft Limit           Hard Limit           Units\nMax open files            2000                 20000                files\n'), 2000)
  t.equal(openFilesLimit('Max open files            unlimited            unlimited            files\n'), null)
  t.equal(openFilesLimit('nothing here'), null)
  t.type(openFilesLimit(), 'number', 'this machine says')
  t.equal(fileHeadroom(2000), 100)
  t.equal(fileHeadroom(400), 64, 'never less than 64')
  t.equal(fileHeadroom(1_048_576), 1024, 'never more than 1024')
  t.equal(connectionsUnder(20_000), 19_000)
})

/** CPU seconds (user + system) the process has used so far. */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')
  return (Number(fields[11]) + Number(fields[12])) / 100
}

t.test('past the cap: 503 at_capacity at once, health answered, no spinning', async (t) => {
  const port = await freePort()
  const LIMIT = 400
  const CAP = connectionsUnder(LIMIT)
  const proc = spawn('prlimit', [`--nofile=${LIMIT}:${LIMIT}`, 'node', CLI, 'serve', '--open', '--port', String(port), '--drain-ms', '0',
    '--connect-rate-per-ip', '0', '--max-connections-per-ip', '0', '--log-level', 'warn'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, _TAPJS_PROCESSINFO_COVERAGE_: '0' } })
  let output = ''
  proc.stdout.on('data', (d: Buffer) => (output += d))
  proc.stderr.on('data', (d: Buffer) => (output += d))
  t.teardown(() => {
    if (proc.exitCode === null) proc.kill('SIGKILL')
  })
  await until(async () => (await fetch(`http://127.0.0.1:${port}/healthz`).catch(() => null))?.status === 200, 'the gateway up', 15_000, 100)
  const nodePid = Number(readFileSync(`/proc/${proc.pid}/task/${proc.pid}/children`, 'utf8').trim() || proc.pid)

  const TOTAL = CAP + 150
  const outcomes = { open: 0, refused: 0, other: 0 }
  const sockets: WebSocket[] = []
  t.teardown(() => sockets.forEach((s) => s.terminate()))
  await Promise.all(Array.from({ length: TOTAL }, () => new Promise<void>((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws/jobs`, 'jobwire.json')
    sockets.push(ws)
    const timer = setTimeout(() => {
      outcomes.other++
      resolve()
    }, 10_000)
    ws.on('open', () => {
      clearTimeout(timer)
      outcomes.open++
      resolve()
    })
    ws.on('unexpected-response', (req, res) => {
      clearTimeout(timer)
      req.destroy()
      if (res.statusCode === 503) outcomes.refused++
      else outcomes.other++
      resolve()
    })
    ws.on('error', () => undefined)
  })))
  t.equal(outcomes.open, CAP, `${CAP} connected (the limit ${LIMIT} less the margin)`)
  t.equal(outcomes.refused, TOTAL - CAP, 'every other one answered 503 at once')
  t.equal(outcomes.other, 0, 'none left waiting')

  const before = cpuSeconds(nodePid)
  await new Promise((resolve) => setTimeout(resolve, 1000))
  const used = cpuSeconds(nodePid) - before
  t.ok(used < 0.5, `at capacity the process idles (${used.toFixed(2)} CPU s in 1 s; the accept loop spun at ~0.97)`)
  for (const path of ['/healthz', '/readyz', '/metrics']) {
    t.equal((await fetch(`http://127.0.0.1:${port}${path}`)).status, 200, `${path} answered at capacity`)
  }
  const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()
  t.match(metrics, new RegExp(`jobwire_upgrades_rejected_total\\{reason="at_capacity"\\} ${TOTAL - CAP}`))
})
