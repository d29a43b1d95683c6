// jobwire behind a real HAProxy (Debian's 2.6) with the very block docs/deploy.md ships: the
// test extracts it, points it at two gateways on free ports (plain HTTP: the certificate is
// not what is under test), and checks that HAProxy's health check finds both nodes up (the
// check the doc used to ship sent HTTP/1.0, which uWS 20.30 never answers: every node was
// taken out), that a node whose /readyz fails is taken out, and that requests and a WebSocket
// subscribe go through.

import t from 'tap'
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { projectPath } from '../src/support/paths.js'
import { startGateway } from './fixtures/gateway.js'
import { freePort } from './fixtures/ports.js'
import { until } from './fixtures/until.js'

const HAPROXY = ['/usr/sbin/haproxy', '/usr/bin/haproxy'].find((p) => existsSync(p)) ?? 'haproxy'

/** The ```haproxy-style block under "### HAProxy" in docs/deploy.md. */
function shippedConfig(): string {
  const doc = readFileSync(projectPath('docs', 'deploy.md'), 'utf8')
  const section = doc.slice(doc.indexOf('### HAProxy'))
  const block = /```\n([\s\S]*?)```/.exec(section)?.[1]
  if (block === undefined || !block.includes('backend jobwire')) throw new Error('docs/deploy.md has no HAProxy block under ### HAProxy')
  return block
}

/** The shipped block with only what a test must change; each replacement must match. */
function localise(config: string, to: { front: number; nodes: readonly number[]; stats: string }): string {
  const edits: Array<[RegExp, string]> = [
    [/bind :443 ssl crt \S+/, `bind 127.0.0.1:${to.front}`],
    [/server node1 10\.0\.0\.11:8080 /, `server node1 127.0.0.1:${to.nodes[0]} `],
    [/server node2 10\.0\.0\.12:8080 /, `server node2 127.0.0.1:${to.nodes[1]} `],
    // Checks every 2 s would make the test slow; the check itself is unchanged.
    [/check inter 2s fall 2 rise 2/g, 'check inter 200ms fall 2 rise 1'],
  ]
  for (const [pattern, replacement] of edits) {
    if (!pattern.test(config)) throw new Error(`the HAProxy block in docs/deploy.md no longer has ${pattern}; update test/haproxy.ts`)
    config = config.replace(pattern, replacement)
  }
  return `global\n    stats socket ${to.stats} mode 600 level admin\n\ndefaults\n    timeout connect 2s\n\n${config}`
}

/** One command on HAProxy's stats socket. */
function stats(socketPath: string, command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(socketPath, () => socket.end(`${command}\n`))
    let out = ''
    socket.on('data', (d: Buffer) => (out += d.toString()))
    socket.on('end', () => resolve(out))
    socket.on('error', reject)
  })
}

/** node name -> UP/DOWN/... from `show stat`. */
async function serverStatus(socketPath: string): Promise<Record<string, string>> {
  const csv = await stats(socketPath, 'show stat')
  const rows = csv.split('\n').filter((l) => l.startsWith('jobwire,node'))
  return Object.fromEntries(rows.map((r) => {
    const f = r.split(',')
    return [f[1]!, f[17]!]
  }))
}

t.test('jobwire behind HAProxy with the config docs/deploy.md ships', async (t) => {
  const shipped = shippedConfig()
  t.match(shipped, /http-check send meth GET uri \/readyz ver HTTP\/1\.1/, 'the shipped health check speaks HTTP/1.1')
  const dir = mkdtempSync(join(tmpdir(), 'jobwire-haproxy-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const a = await startGateway()
  t.teardown(() => a.stop())
  const b = await startGateway()
  t.teardown(() => b.stop())
  const front = await freePort()
  const statsSocket = join(dir, 'stats.sock')
  writeFileSync(join(dir, 'haproxy.cfg'), localise(shipped, { front, nodes: [a.port, b.port], stats: statsSocket }))
  const check = spawn(HAPROXY, ['-c', '-f', join(dir, 'haproxy.cfg')], { stdio: ['ignore', 'pipe', 'pipe'] })
  let checkOut = ''
  check.stdout.on('data', (d: Buffer) => (checkOut += d))
  check.stderr.on('data', (d: Buffer) => (checkOut += d))
  const checked = await new Promise<number | null>((resolve) => check.on('exit', resolve))
  t.equal(checked, 0, `haproxy -c accepts the config: ${checkOut.trim()}`)

  const haproxy = spawn(HAPROXY, ['-db', '-f', join(dir, 'haproxy.cfg')], { stdio: ['ignore', 'pipe', 'pipe'] })
  let log = ''
  haproxy.stdout.on('data', (d: Buffer) => (log += d))
  haproxy.stderr.on('data', (d: Buffer) => (log += d))
  t.teardown(async () => {
    if (haproxy.exitCode === null) {
      haproxy.kill('SIGTERM')
      await new Promise((resolve) => haproxy.once('exit', resolve))
    }
  })
  await until(() => existsSync(statsSocket), 'HAProxy started', 10_000)

  t.test('its health check finds both nodes up', async (t) => {
    await until(async () => {
      const s = await serverStatus(statsSocket)
      return s.node1 === 'UP' && s.node2 === 'UP'
    }, 'both nodes UP', 10_000)
    t.same(await serverStatus(statsSocket), { node1: 'UP', node2: 'UP' }, log)
  })

  t.test('requests and a WebSocket subscribe go through', async (t) => {
    const health = await fetch(`http://127.0.0.1:${front}/healthz`)
    t.equal(health.status, 200)
    await a.gateway.broker.publishProgress('haproxy-1', Buffer.from('{"status":"processing","progress":5}'))
    await b.gateway.broker.publishProgress('haproxy-1', Buffer.from('{"status":"processing","progress":5}'))
    const { WebSocket } = await import('ws')
    const socket = new WebSocket(`ws://127.0.0.1:${front}/ws/jobs`, 'jobwire.json', { headers: { host: `localhost:${front}` } })
    t.teardown(() => socket.close())
    const status = await new Promise<{ type: string; data: { progress: number } }>((resolve, reject) => {
      socket.on('open', () => socket.send(JSON.stringify({ type: 'subscribe_job', job_id: 'haproxy-1' })))
      socket.on('message', (m: Buffer) => {
        const frame = JSON.parse(m.toString()) as { type: string; data: { progress: number } }
        if (frame.type === 'job_status') resolve(frame)
      })
      socket.on('error', reject)
    })
    t.equal(status.data.progress, 5, 'the snapshot, through HAProxy')
  })

  t.test('a node that is not ready is taken out, and comes back', async (t) => {
    // Readiness as the node reports it (node/readiness.ts), forced false on this instance
    // and given back by deleting the override.
    const readiness = (b.gateway as unknown as { readiness: object }).readiness
    Object.defineProperty(readiness, 'ready', { configurable: true, get: () => false })
    t.teardown(() => void delete (readiness as { ready?: boolean }).ready)
    t.equal((await fetch(`http://127.0.0.1:${b.port}/readyz`)).status, 503, 'the node answers 503')
    await until(async () => (await serverStatus(statsSocket)).node2 === 'DOWN', 'node2 taken out', 10_000)
    t.pass('node2 DOWN while its /readyz answers 503')
    delete (readiness as { ready?: boolean }).ready
    await until(async () => (await serverStatus(statsSocket)).node2 === 'UP', 'node2 back', 10_000)
    t.pass('node2 UP again')
  })
})
