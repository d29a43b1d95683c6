// The processes a benchmark runs: its own redis-server, jobwire (1 or N workers) and the
// baseline. Each is started fresh for a scenario and stopped after it.

import { spawn, type ChildProcess } from 'node:child_process'
import { createServer } from 'node:net'
import { gatewayExecArgv } from '../src/node/v8-flags.js'
import { projectPath } from '../src/support/paths.js'
import { track } from './children.js'
import { childPids } from './procstat.js'

export interface Running {
  readonly name: string
  readonly port: number
  /** Several nodes behind one name (a fleet without a balancer): their ports, the load
   * generators spread over them. Absent for one node. */
  readonly ports?: readonly number[]
  readonly proc: ChildProcess
  /** Every process doing the target's work (a primary and its workers). */
  pids(): number[]
  stop(): Promise<void>
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0))
    })
  })
}

async function waitHttp(url: string, proc: ChildProcess, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`${url}: process exited with ${proc.exitCode}`)
    try {
      if ((await fetch(url)).status === 200) return
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error(`${url} not ready after ${timeoutMs} ms`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

function stopper(proc: ChildProcess): () => Promise<void> {
  return () => new Promise<void>((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) return resolve()
    const hard = setTimeout(() => proc.kill('SIGKILL'), 8000)
    proc.once('exit', () => {
      clearTimeout(hard)
      resolve()
    })
    proc.kill('SIGTERM')
  })
}

export async function startRedis(): Promise<Running & { url: string }> {
  const port = await freePort()
  const proc = track(spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
    '--loglevel', 'warning', '--client-output-buffer-limit', 'pubsub 256mb 128mb 60'], { stdio: 'ignore' }))
  const deadline = Date.now() + 10_000
  const { Redis } = await import('ioredis')
  for (;;) {
    const probe = new Redis({ port, lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 })
    probe.on('error', () => undefined)
    try {
      await probe.connect()
      await probe.ping()
      probe.disconnect()
      break
    } catch {
      probe.disconnect()
      if (proc.exitCode !== null || Date.now() > deadline) throw new Error('redis-server did not start')
      await new Promise((r) => setTimeout(r, 50))
    }
  }
  return { name: 'redis', port, proc, url: `redis://127.0.0.1:${port}`, pids: () => [proc.pid!], stop: stopper(proc) }
}

/** Where --profile leaves the gateway's V8 CPU profiles (one per process). */
export const PROFILE_DIR = projectPath('bench', 'results', 'profiles')

/** Both gateways run as deployed: glibc limited to one malloc arena (otherwise each helper
 * thread's arena keeps freed memory and RSS grows by ~0.6 KB per connection; src/node/primary.ts). */
const ENV = { ...process.env, MALLOC_ARENA_MAX: process.env.MALLOC_ARENA_MAX ?? '1' }

export async function startJobwire(redisUrl: string, workers: number, extra: string[] = [], profile = false, extraNodeArgs: readonly string[] = []): Promise<Running> {
  const port = await freePort()
  // As `jobwire serve` starts (src/node/v8-flags.ts): the workers get it from the primary.
  const nodeArgs = gatewayExecArgv([...(profile ? ['--cpu-prof', `--cpu-prof-dir=${PROFILE_DIR}`] : []), ...extraNodeArgs])
  // The caps on connections and messages per address are off: all the load comes from a few
  // loopback addresses, which the defaults would (rightly) treat as a flood.
  const proc = track(spawn('node', [...nodeArgs, projectPath('dist', 'src', 'cli.js'), 'serve', '--open', '--port', String(port), '--redis', redisUrl,
    '--workers', String(workers), '--log-level', 'warn', '--idle-timeout', '120', '--max-connections-per-ip', '0',
    '--connect-rate-per-ip', '0', '--max-messages-per-sec', '0', '--drain-ms', '0', ...extra],
  { stdio: ['ignore', 'ignore', 'inherit'], env: ENV }))
  await waitHttp(`http://127.0.0.1:${port}/readyz`, proc)
  // With workers, readyz answered by one of them; give the others the same chance.
  if (workers > 1) {
    const deadline = Date.now() + 10_000
    while (childPids(proc.pid!).length < workers && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
    for (let i = 0; i < workers * 4; i++) await waitHttp(`http://127.0.0.1:${port}/readyz`, proc)
  }
  return {
    name: workers === 1 ? 'jobwire' : `jobwire ${workers}w`,
    port,
    proc,
    pids: () => [proc.pid!, ...childPids(proc.pid!)],
    stop: stopper(proc),
  }
}

export async function startBaseline(redisUrl: string): Promise<Running> {
  const port = await freePort()
  const proc = track(spawn('node', [projectPath('dist', 'bench', 'baselines', 'ws-baseline.js'), '--port', String(port), '--redis', redisUrl],
    { stdio: ['ignore', 'ignore', 'inherit'], env: ENV }))
  await waitHttp(`http://127.0.0.1:${port}/healthz`, proc)
  return { name: 'baseline (ws)', port, proc, pids: () => [proc.pid!], stop: stopper(proc) }
}

/** The floor: bench/native/floor.c, the least a Redis -> WebSocket fan-out can do (one epoll
 * thread, one prebuilt frame and one write() per subscriber), to measure the others against. */
export async function startFloor(redisUrl: string): Promise<Running> {
  const port = await freePort()
  const redis = new URL(redisUrl)
  const proc = track(spawn(projectPath('dist', 'bench', 'native', 'floor'), [String(port), redis.hostname, redis.port || '6379'],
    { stdio: ['ignore', 'ignore', 'inherit'] }))
  await waitHttp(`http://127.0.0.1:${port}/healthz`, proc)
  return { name: 'floor (C)', port, proc, pids: () => [proc.pid!], stop: stopper(proc) }
}

/** `nodes` jobwire nodes of one worker each on one Redis, as separate machines behind a load
 * balancer would run them (issue 10): one target whose sockets the load generators spread over
 * the nodes, whose CPU and memory are the sum of the nodes'. */
export async function startJobwireNodes(redisUrl: string, nodes: number, extra: string[] = []): Promise<Running> {
  const started: Running[] = []
  try {
    for (let n = 0; n < nodes; n++) started.push(await startJobwire(redisUrl, 1, extra))
  } catch (err) {
    await Promise.all(started.map((node) => node.stop()))
    throw err
  }
  return {
    name: `jobwire ${nodes} nodes`,
    port: started[0]!.port,
    ports: started.map((node) => node.port),
    proc: started[0]!.proc,
    pids: () => started.flatMap((node) => node.pids()),
    stop: async () => {
      await Promise.all(started.map((node) => node.stop()))
    },
  }
}
