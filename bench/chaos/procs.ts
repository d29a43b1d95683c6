// The processes the chaos and soak harnesses run, each of which they must be able to break on
// purpose and always clean up: a private redis-server that can be restarted with or without
// its data or frozen, and gateway nodes whose workers can be killed. Every process started here
// is registered, so one synchronous exit handler can end them whatever happened to the run.

import { spawn, type ChildProcess } from 'node:child_process'
import { createWriteStream, existsSync, readFileSync, rmSync, type WriteStream } from 'node:fs'
import { join } from 'node:path'
import { Redis } from 'ioredis'
import { projectPath } from '../../src/support/paths.js'
import { alive, killTracked, signal, track } from '../children.js'
import { childPids } from '../procstat.js'
import { freePort } from '../targets.js'

/** A stopped (SIGSTOP) Redis ignores SIGTERM until continued; the exit handler must know. */
const frozen = new Set<number>()

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** Ends every process this harness started, at once and synchronously (children.ts), frozen
 * ones continued first. */
export function killEverything(): void {
  for (const pid of frozen) signal(pid, 'SIGCONT')
  frozen.clear()
  killTracked()
}

/** SIGTERM (or the given signal), then SIGKILL if it has not exited within hardMs. */
export function stopProcess(proc: ChildProcess, sig: NodeJS.Signals = 'SIGTERM', hardMs = 8000): Promise<void> {
  return new Promise<void>((resolve) => {
    if (!alive(proc)) return resolve()
    const hard = setTimeout(() => {
      if (proc.pid !== undefined) for (const child of childPids(proc.pid)) signal(child, 'SIGKILL')
      proc.kill('SIGKILL')
    }, hardMs)
    proc.once('exit', () => {
      clearTimeout(hard)
      resolve()
    })
    proc.kill(sig)
  })
}

function exited(proc: ChildProcess, timeoutMs: number): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    if (!alive(proc)) return resolve(true)
    const timer = setTimeout(() => resolve(false), timeoutMs)
    proc.once('exit', () => {
      clearTimeout(timer)
      resolve(true)
    })
  })
}

/** A short-lived connection that gives up at once: for probes and one-off commands. */
function probeConnection(port: number): Redis {
  const redis = new Redis({ port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0, enableOfflineQueue: false })
  redis.on('error', () => undefined)
  return redis
}

/**
 * A private redis-server on a free loopback port, never the shared 6379. Persistence is off
 * (no save points, no AOF) so that no background fork competes for the two cores or stalls the
 * measurement; the one step that needs data to survive a restart asks for it explicitly with
 * SHUTDOWN SAVE, which writes the RDB file synchronously before exiting, and the successor on
 * the same port loads it at start: the same thing a deployment with persistence does on a
 * planned restart, without persistence running the rest of the time.
 */
export class RedisServer {
  private proc: ChildProcess | null = null
  private readonly rdb: string

  private constructor(readonly port: number, readonly dir: string) {
    this.rdb = join(dir, 'chaos.rdb')
  }

  static async start(dir: string): Promise<RedisServer> {
    const server = new RedisServer(await freePort(), dir)
    await server.launch()
    return server
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`
  }

  get pid(): number {
    return this.proc?.pid ?? 0
  }

  private async launch(): Promise<void> {
    const proc = track(spawn('redis-server', ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
      '--dir', this.dir, '--dbfilename', 'chaos.rdb', '--daemonize', 'no', '--loglevel', 'warning'], { stdio: 'ignore' }))
    this.proc = proc
    const deadline = Date.now() + 15_000
    for (let attempt = 0; attempt < 1000; attempt++) {
      if (!alive(proc)) throw new Error(`redis-server on ${this.port} exited with ${proc.exitCode} (port taken?)`)
      const probe = probeConnection(this.port)
      try {
        await probe.connect()
        // PING answers LOADING while the RDB file is read: not up yet.
        if ((await probe.ping()) === 'PONG') return
      } catch {
        // not up yet
      } finally {
        probe.disconnect()
      }
      if (Date.now() > deadline) break
      await sleep(50)
    }
    throw new Error(`redis-server on ${this.port} did not start within 15 s`)
  }

  /** SHUTDOWN SAVE, then the same server again on the same port, loading what was saved.
   * Resolves with the number of keys the new server loaded. */
  async restartKeepingData(): Promise<number> {
    await this.shutdown('SAVE')
    if (!existsSync(this.rdb)) throw new Error('SHUTDOWN SAVE left no RDB file')
    await this.launch()
    return this.dbsize()
  }

  /** SHUTDOWN NOSAVE and no RDB file: the successor starts empty, as after losing the data. */
  async restartEmpty(): Promise<number> {
    await this.shutdown('NOSAVE')
    rmSync(this.rdb, { force: true })
    await this.launch()
    return this.dbsize()
  }

  /** Freezes the server: connections stay open while nothing answers (a hung Redis). */
  pause(): void {
    if (this.proc?.pid === undefined) return
    frozen.add(this.proc.pid)
    this.proc.kill('SIGSTOP')
  }

  resume(): void {
    if (this.proc?.pid === undefined) return
    this.proc.kill('SIGCONT')
    frozen.delete(this.proc.pid)
  }

  async dbsize(): Promise<number> {
    const probe = probeConnection(this.port)
    try {
      await probe.connect()
      return await probe.dbsize()
    } finally {
      probe.disconnect()
    }
  }

  async stop(): Promise<void> {
    this.resume()
    if (this.proc) await stopProcess(this.proc, 'SIGTERM', 5000)
    this.proc = null
  }

  private async shutdown(mode: 'SAVE' | 'NOSAVE'): Promise<void> {
    const proc = this.proc
    if (proc === null) throw new Error('redis-server is not running')
    const probe = probeConnection(this.port)
    try {
      await probe.connect()
      // The server closes the connection instead of answering: the rejection is the success.
      await probe.call('SHUTDOWN', mode).catch(() => undefined)
    } finally {
      probe.disconnect()
    }
    if (!(await exited(proc, 15_000))) {
      proc.kill('SIGKILL')
      await exited(proc, 5000)
      throw new Error(`redis-server did not exit after SHUTDOWN ${mode}`)
    }
  }
}

export interface NodeOptions {
  readonly name: string
  readonly redisUrl: string
  readonly workers: number
  /** Gateway log lines (JSON) are appended here. */
  readonly logPath: string
  readonly extraArgs?: readonly string[]
}

/**
 * One gateway node: `node dist/src/cli.js serve` on a fixed loopback port, with its defaults
 * (only the port, Redis, the number of workers and the log level are set), so that what the
 * harness measures is what a deployment gets. It can be stopped and started again on the same
 * port, as a rolling restart would.
 */
export class GatewayNode {
  private proc: ChildProcess | null = null
  private log: WriteStream | null = null
  /** Workers this node has had, by pid, to tell a restarted worker from the original. */
  readonly seenWorkers = new Set<number>()

  private constructor(readonly options: NodeOptions, readonly port: number) {}

  static async start(options: NodeOptions): Promise<GatewayNode> {
    const node = new GatewayNode(options, await freePort())
    await node.start()
    return node
  }

  get name(): string {
    return this.options.name
  }

  get wsUrl(): string {
    return `ws://127.0.0.1:${this.port}/ws/jobs`
  }

  get httpUrl(): string {
    return `http://127.0.0.1:${this.port}`
  }

  get running(): boolean {
    return this.proc !== null && alive(this.proc)
  }

  /** The primary (or the only process) and its workers. */
  pids(): number[] {
    const pid = this.proc?.pid
    if (pid === undefined || !this.running) return []
    return [pid, ...this.workerPids()]
  }

  /** The gateway processes holding sockets: the workers, or the single process. */
  workerPids(): number[] {
    const pid = this.proc?.pid
    if (pid === undefined || !this.running) return []
    if (this.options.workers <= 1) return [pid]
    const workers = childPids(pid)
    for (const w of workers) this.seenWorkers.add(w)
    return workers
  }

  async start(): Promise<void> {
    if (this.running) throw new Error(`${this.name} is already running`)
    this.log ??= createWriteStream(this.options.logPath, { flags: 'a' })
    const proc = track(spawn('node', [projectPath('dist', 'src', 'cli.js'), 'serve', '--open', '--host', '127.0.0.1', '--port', String(this.port),
      '--redis', this.options.redisUrl, '--workers', String(this.options.workers), '--log-level', 'warn', ...(this.options.extraArgs ?? [])],
    { stdio: ['ignore', 'pipe', 'pipe'] }))
    proc.stdout!.pipe(this.log, { end: false })
    proc.stderr!.pipe(this.log, { end: false })
    this.proc = proc
    await this.waitReady(20_000)
    this.workerPids()
  }

  /** SIGTERM (a graceful stop: sockets are closed with 1001), bounded. */
  async stop(): Promise<void> {
    if (this.proc) await stopProcess(this.proc, 'SIGTERM', 10_000)
    this.proc = null
  }

  /** The last lines of this node's log, for a failure report. */
  logTail(lines = 20): string {
    try {
      return readFileSync(this.options.logPath, 'utf8').trimEnd().split('\n').slice(-lines).join('\n')
    } catch {
      return ''
    }
  }

  /** GET /metrics as name -> value (labelled series keep their labels in the name). */
  async metrics(): Promise<Map<string, number>> {
    const out = new Map<string, number>()
    const res = await fetch(`${this.httpUrl}/metrics`, { signal: AbortSignal.timeout(3000) })
    for (const line of (await res.text()).split('\n')) {
      if (line === '' || line.startsWith('#')) continue
      const at = line.lastIndexOf(' ')
      out.set(line.slice(0, at), Number(line.slice(at + 1)))
    }
    return out
  }

  private async waitReady(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs
    const url = `${this.httpUrl}/readyz`
    let readyAnswers = 0
    // With workers, one answer proves one of them; ask until every worker has had its chance.
    const wanted = this.options.workers > 1 ? this.options.workers * 4 : 1
    for (let attempt = 0; attempt < 10_000 && readyAnswers < wanted; attempt++) {
      if (this.proc === null || !alive(this.proc)) throw new Error(`${this.name} exited during start:\n${this.logTail()}`)
      if (Date.now() > deadline) throw new Error(`${this.name} not ready after ${timeoutMs} ms:\n${this.logTail()}`)
      const workersUp = this.options.workers <= 1 || childPids(this.proc.pid!).length >= this.options.workers
      try {
        if (workersUp && (await fetch(url, { signal: AbortSignal.timeout(2000) })).status === 200) readyAnswers++
      } catch {
        // not up yet
      }
      if (readyAnswers < wanted) await sleep(50)
    }
  }
}

/** The soft limit on open files of this process (each client socket is one). */
export function openFileLimit(): number {
  try {
    const match = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'))
    if (match?.[1] === 'unlimited') return Number.MAX_SAFE_INTEGER
    return match ? Number(match[1]) : 1024
  } catch {
    return 1024
  }
}
