// `jobwire serve`: one gateway process, or a primary that runs --workers gateway processes on
// the same port (SO_REUSEPORT: the kernel spreads connections across them). Each worker has
// its own Redis subscription and file-descriptor limit; the primary restarts workers that die,
// aggregates /metrics across them and stops them on SIGTERM/SIGINT.

import { fork, type ChildProcess } from 'node:child_process'
import type { Config } from './config.js'
import { Gateway, WS_PATH } from './gateway.js'
import { createLogger, type Logger } from './log.js'
import type { MetricsSnapshot } from './metrics.js'
import { detectUwsRuntime } from './uws.js'

const WORKER_ENV = 'JOBWIRE_WORKER_INDEX'
const METRICS_TIMEOUT_MS = 1000
const RESTART_WINDOW_MS = 60_000
const MAX_RESTARTS_IN_WINDOW = 5

type WorkerMessage =
  | { type: 'listening'; port: number }
  | { type: 'metrics-request'; id: number }
  | { type: 'metrics-snapshot'; id: number; snapshot: MetricsSnapshot }
type PrimaryMessage =
  | { type: 'metrics-collect'; id: number }
  | { type: 'metrics-response'; id: number; snapshots: MetricsSnapshot[] }

export async function serve(config: Config, argv: readonly string[]): Promise<void> {
  const workerIndex = process.env[WORKER_ENV]
  const log = createLogger(config.logLevel, workerIndex === undefined ? {} : { worker: Number(workerIndex) })
  const uws = detectUwsRuntime()
  if (!uws.native) {
    log.fatal({ detail: uws.detail }, 'uWebSockets.js native binary did not load; refusing to run on its slow JavaScript fallback')
    process.exit(1)
  }
  if (workerIndex === undefined && config.workers > 1) return runPrimary(config, argv, log, uws.detail)
  return runGateway(config, log, uws.detail, workerIndex !== undefined)
}

async function runGateway(config: Config, log: Logger, uwsDetail: string, isWorker: boolean): Promise<void> {
  const pending = new Map<number, (snapshots: MetricsSnapshot[]) => void>()
  let nextRequest = 1
  let gateway: Gateway
  const nodeMetrics = isWorker
    ? () => new Promise<MetricsSnapshot[]>((resolve) => {
        const id = nextRequest++
        const timer = setTimeout(() => {
          pending.delete(id)
          resolve([gateway.metricsSnapshot()])
        }, METRICS_TIMEOUT_MS)
        pending.set(id, (snapshots) => {
          clearTimeout(timer)
          resolve(snapshots)
        })
        process.send!({ type: 'metrics-request', id } satisfies WorkerMessage)
      })
    : undefined
  gateway = new Gateway({ config, log, ...(nodeMetrics ? { nodeMetrics } : {}) })

  if (isWorker) {
    process.on('message', (message: PrimaryMessage) => {
      if (message.type === 'metrics-collect') {
        process.send!({ type: 'metrics-snapshot', id: message.id, snapshot: gateway.metricsSnapshot() } satisfies WorkerMessage)
      } else if (message.type === 'metrics-response') {
        pending.get(message.id)?.(message.snapshots)
        pending.delete(message.id)
      }
    })
    // The primary is gone: nobody will restart or stop us, so stop.
    process.on('disconnect', () => void shutdown('primary exited'))
  }

  let stopping = false
  async function shutdown(reason: string): Promise<void> {
    if (stopping) {
      log.warn('second signal: exiting now')
      process.exit(1)
    }
    stopping = true
    log.info({ reason }, 'shutting down')
    const hardStop = setTimeout(() => {
      log.error('graceful shutdown overran its bound; exiting')
      process.exit(1)
    }, config.shutdownTimeoutMs + 2000)
    hardStop.unref()
    await gateway.stop()
    log.info('stopped')
    process.exit(0)
  }
  process.on('SIGTERM', () => void shutdown('SIGTERM'))
  process.on('SIGINT', () => void shutdown('SIGINT'))

  let port: number
  try {
    port = await gateway.start()
  } catch (err) {
    log.fatal({ err: (err as Error).message }, 'gateway failed to start')
    process.exit(1)
  }
  if (isWorker) {
    process.send!({ type: 'listening', port } satisfies WorkerMessage)
    log.info({ port }, 'worker listening')
  } else {
    announce(log, config, port, uwsDetail, gateway.broker.kind, 1)
  }
}

function announce(log: Logger, config: Config, port: number, uwsDetail: string, broker: string, workers: number): void {
  const host = config.host.includes(':') ? `[${config.host}]` : config.host
  const url = `http://${host}:${port}`
  log.info({ url, ws: `ws://${host}:${port}${WS_PATH}`, broker, workers, uws: uwsDetail, subscriptionMode: config.subscriptionMode },
    `jobwire listening on ${url} (WebSocket ${WS_PATH}; broker: ${broker}; uWebSockets.js native ${uwsDetail}; workers: ${workers})`)
}

async function runPrimary(config: Config, argv: readonly string[], log: Logger, uwsDetail: string): Promise<void> {
  if (config.port === 0) {
    log.fatal('--workers > 1 needs a fixed --port: workers share it, and port 0 would give each its own')
    process.exit(1)
  }
  const workers: Array<ChildProcess | null> = new Array<ChildProcess | null>(config.workers).fill(null)
  const restarts: number[] = []
  let stopping = false
  let announced = false
  let listening = 0
  let nextCollect = 1
  const collections = new Map<number, { snapshots: MetricsSnapshot[]; expected: number; done: (s: MetricsSnapshot[]) => void }>()

  function collect(): Promise<MetricsSnapshot[]> {
    const live = workers.filter((w): w is ChildProcess => w !== null && w.connected)
    return new Promise((resolve) => {
      const id = nextCollect++
      const timer = setTimeout(() => finish(), METRICS_TIMEOUT_MS)
      const finish = () => {
        clearTimeout(timer)
        const entry = collections.get(id)
        collections.delete(id)
        resolve(entry?.snapshots ?? [])
      }
      collections.set(id, { snapshots: [], expected: live.length, done: finish })
      for (const w of live) w.send({ type: 'metrics-collect', id } satisfies PrimaryMessage)
      if (live.length === 0) finish()
    })
  }

  function start(index: number): void {
    const child = fork(process.argv[1]!, argv as string[], {
      env: { ...process.env, [WORKER_ENV]: String(index) },
      execArgv: process.execArgv,
    })
    workers[index] = child
    child.on('message', (message: WorkerMessage) => {
      if (message.type === 'listening') {
        listening++
        if (!announced && listening >= config.workers) {
          announced = true
          announce(log, config, message.port, uwsDetail, 'redis', config.workers)
        }
      } else if (message.type === 'metrics-request') {
        void collect().then((snapshots) => {
          if (child.connected) child.send({ type: 'metrics-response', id: message.id, snapshots } satisfies PrimaryMessage)
        })
      } else if (message.type === 'metrics-snapshot') {
        const entry = collections.get(message.id)
        if (entry === undefined) return
        entry.snapshots.push(message.snapshot)
        if (entry.snapshots.length >= entry.expected) entry.done(entry.snapshots)
      }
    })
    child.on('exit', (code, signal) => {
      workers[index] = null
      if (stopping) return
      const now = Date.now()
      restarts.push(now)
      while (restarts.length > 0 && restarts[0]! < now - RESTART_WINDOW_MS) restarts.shift()
      if (restarts.length > MAX_RESTARTS_IN_WINDOW) {
        log.fatal({ worker: index, code, signal }, `workers died ${restarts.length} times within a minute; giving up`)
        void stopAll(1)
        return
      }
      log.error({ worker: index, code, signal }, 'worker exited; restarting it')
      setTimeout(() => start(index), 250 * restarts.length)
    })
  }

  async function stopAll(exitCode: number): Promise<void> {
    stopping = true
    const alive = workers.filter((w): w is ChildProcess => w !== null)
    const exited = alive.map((w) => new Promise<void>((resolve) => {
      if (w.exitCode !== null || w.signalCode !== null) return resolve()
      w.once('exit', () => resolve())
    }))
    for (const w of alive) w.kill('SIGTERM')
    const hardStop = setTimeout(() => {
      for (const w of alive) w.kill('SIGKILL')
    }, config.shutdownTimeoutMs + 1000)
    await Promise.all(exited)
    clearTimeout(hardStop)
    log.info('all workers stopped')
    process.exit(exitCode)
  }

  let signalled = false
  const onSignal = (signal: string) => {
    if (signalled) {
      log.warn('second signal: exiting now')
      process.exit(1)
    }
    signalled = true
    log.info({ signal }, 'stopping workers')
    void stopAll(0)
  }
  process.on('SIGTERM', () => onSignal('SIGTERM'))
  process.on('SIGINT', () => onSignal('SIGINT'))
  for (let i = 0; i < config.workers; i++) start(i)
}
