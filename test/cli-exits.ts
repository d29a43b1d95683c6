// The CLI never exits silently: a Redis Cluster whose slot has no master used to end
// `jobwire publish` with exit code 13 and no output in 0.2 s (a pending await); a gateway URL
// with a path prefix used to lose it; the hint for an unreachable gateway names every way to
// point publish elsewhere.

import t from 'tap'
import { execFile } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { spawn } from 'node:child_process'
import { producerUrl } from '../src/producer/producer-url.js'
import { CLI } from './fixtures/process.js'
import { freePort } from './fixtures/ports.js'
import { until } from './fixtures/until.js'

function cli(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('node', [CLI, ...args], { env: { ...process.env, JOBWIRE_GATEWAY: '', REDIS_URL: '', REDIS_CLUSTER: '', ...env }, timeout: 30_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr })
    })
  })
}

t.test('a cluster slot without a master: a message and exit code 2, not 13 and silence', async (t) => {
  const port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), 'jobwire-deadslot-'))
  const redis = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--cluster-enabled', 'yes', '--cluster-config-file', join(dir, 'nodes.conf'),
    '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: 'ignore' })
  t.teardown(() => {
    redis.kill('SIGKILL')
    rmSync(dir, { recursive: true, force: true })
  })
  await until(async () => (await cli(['--version'])).code === 0 && await new Promise<boolean>((resolve) => {
    execFile('redis-cli', ['-p', String(port), 'ping'], (err, out) => resolve(!err && out.trim() === 'PONG'))
  }), 'redis-server up', 10_000, 100)
  // Half the slots: the cluster is down, and no slot above 8000 has a master.
  await new Promise((resolve, reject) => execFile('redis-cli', ['-p', String(port), 'cluster', 'addslotsrange', '0', '8000'], (err) => (err ? reject(err) : resolve(null))))
  const result = await cli(['publish', 'dead-slot-job', '--progress', '5', '--redis-cluster', `127.0.0.1:${port}`])
  t.equal(result.code, 2, 'a failure code')
  t.match(result.stderr, /^jobwire: cannot (reach|publish to) Redis Cluster at 127\.0\.0\.1:\d+: no answer within 10 s: the cluster does not serve this job's slot/)
})

t.test('--gateway keeps a path prefix', async (t) => {
  t.equal(producerUrl('http://host:81/jobwire', 'a/b').href, 'http://host:81/jobwire/jobs/a%2Fb/progress')
  t.equal(producerUrl('http://host/jobwire/', 'x').href, 'http://host/jobwire/jobs/x/progress')
  t.equal(producerUrl('http://host', 'x').href, 'http://host/jobs/x/progress')
  const paths: string[] = []
  const server = createServer((req, res) => {
    paths.push(req.url ?? '')
    res.writeHead(200, { 'content-type': 'application/json' }).end('{"seq":7}')
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => server.close())
  const { port } = server.address() as { port: number }
  const result = await cli(['publish', 'prefixed', '--progress', '1', '--gateway', `http://127.0.0.1:${port}/jobwire`])
  t.equal(result.code, 0, result.stderr)
  t.same(paths, ['/jobwire/jobs/prefixed/progress'])
  t.match(result.stdout, /published prefixed seq=7/)
})

t.test('an unreachable gateway: the hint names --gateway, JOBWIRE_GATEWAY and --redis', async (t) => {
  const port = await freePort()
  const result = await cli(['publish', 'nobody', '--progress', '1', '--gateway', `http://127.0.0.1:${port}`])
  t.equal(result.code, 2)
  t.match(result.stderr, /connection refused/)
  t.match(result.stderr, /--gateway http:\/\/host:port or JOBWIRE_GATEWAY/)
  t.match(result.stderr, /--redis redis:\/\/host:port or REDIS_URL/)
})
