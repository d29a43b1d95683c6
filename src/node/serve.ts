// `jobwire serve`: one gateway process, or a primary that runs --workers gateway processes on
// the same port (SO_REUSEPORT: the kernel spreads connections across them). Each worker has
// its own Redis subscription and file-descriptor limit. The primary restarts workers that die,
// answers node-wide questions by asking every worker (/metrics, /admin), owns the connection
// caps so they hold for the node, and stops the workers on SIGTERM/SIGINT.

import { fork, type ChildProcess } from 'node:child_process'
import { LocalAdmission, type Admission, type AdmissionRequest, type AdmissionResult } from '../access/admission.js'
import { ConfigError, type Config } from '../support/config.js'
import { accessControl, Gateway, WS_PATH, type NodeRequest } from '../gateway.js'
import { createLogger, type Logger } from '../support/log.js'
import { detectUwsRuntime } from '../support/uws.js'

const WORKER_ENV = 'JOBWIRE_WORKER_INDEX'
const NODE_QUERY_TIMEOUT_MS = 1000
const ADMIT_TIMEOUT_MS = 1000
/** A worker that ran this long before dying is restarted at once; one that dies sooner waits
 * longer each time (capped), so a burst of fatal input costs a worker's capacity for a while
 * but never takes the node down. */
const HEALTHY_RUN_MS = 60_000
const RESTART_MIN_DELAY_MS = 250
const RESTART_MAX_DELAY_MS = 30_000

type WorkerMessage =
  | { type: 'listening'; port: number }
  | { type: 'node-request'; id: number; request: NodeRequest }
  | { type: 'node-reply'; id: number; result: unknown }
  | { type: 'admit'; id: number; request: AdmissionRequest }
  | { type: 'release'; id: number }
type PrimaryMessage =
  | { type: 'node-collect'; id: number; request: NodeRequest }
  | { type: 'node-response'; id: number; results: unknown[] }
  | { type: 'admit-result'; id: number; result: AdmissionResult }

/** A request/response channel over IPC, with a deadline; what a timeout resolves to is the
 * caller's choice. */
class Pending<T> {
  private next = 1
  private readonly waiting = new Map<number, (value: T) => void>()
  ask(send: (id: number) => void, timeoutMs: number, onTimeout: () => T): Promise<T> {
    const id = this.next++
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id)
        resolve(onTimeout())
      }, timeoutMs)
      this.waiting.set(id, (value) => {
        clearTimeout(timer)
        resolve(value)
      })
      send(id)
    })
  }
  answer(id: number, value: T): void {
    this.waiting.get(id)?.(value)
    this.waiting.delete(id)
  }
}

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
  let gateway: Gateway
  const queries = new Pending<unknown[]>()
  const admits = new Pending<AdmissionResult>()
  const send = (message: WorkerMessage) => process.send!(message)
  // In a worker, connection caps are counted by the primary for the whole node; if it does not
  // answer in time the connection is let in (availability over a cap) and the miss is logged.
  // Each admission has an id, its ticket: a release frees exactly what the primary counted
  // for that id, and nothing when the primary had refused it.
  const ticketIds = new WeakMap<AdmissionRequest, number>()
  const admission: Admission | undefined = isWorker
    ? {
        admit: (request) => admits.ask((id) => {
          ticketIds.set(request, id)
          send({ type: 'admit', id, request })
        }, ADMIT_TIMEOUT_MS, () => {
          log.error('the primary did not answer an admission request; admitting')
          return { ok: true }
        }),
        release: (request) => {
          const id = ticketIds.get(request)
          if (id !== undefined) send({ type: 'release', id })
        },
      }
    : undefined
  const nodeQuery = isWorker
    ? (request: NodeRequest) => queries.ask((id) => send({ type: 'node-request', id, request }), NODE_QUERY_TIMEOUT_MS * 2,
        () => [gateway.handleNodeRequest(request)])
    : undefined
  try {
    gateway = new Gateway({ config, log, ...(admission ? { admission } : {}), ...(nodeQuery ? { nodeQuery } : {}) })
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`jobwire: bad configuration: ${err.message}\n`)
      process.exit(2)
    }
    throw err
  }

  if (isWorker) {
    process.on('message', (message: PrimaryMessage) => {
      if (message.type === 'node-collect') {
        send({ type: 'node-reply', id: message.id, result: gateway.handleNodeRequest(message.request) })
      } else if (message.type === 'node-response') {
        queries.answer(message.id, message.results)
      } else if (message.type === 'admit-result') {
        admits.answer(message.id, message.result)
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
  try {
    accessControl(config, log) // fail here, once, rather than in every worker
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err
    process.stderr.write(`jobwire: bad configuration: ${err.message}\n`)
    process.exit(2)
  }
  if (config.port === 0) {
    log.fatal('--workers > 1 needs a fixed --port: workers share it, and port 0 would give each its own')
    process.exit(1)
  }
  const workers: Array<ChildProcess | null> = new Array<ChildProcess | null>(config.workers).fill(null)
  const quickDeaths = new Array<number>(config.workers).fill(0)
  const startedAt = new Array<number>(config.workers).fill(0)
  let stopping = false
  let announced = false
  let listening = 0
  const admission = new LocalAdmission(config)
  // What each worker holds admitted, by admission id, so a worker that dies gives its
  // connections back.
  const held = workers.map(() => new Map<number, AdmissionRequest>())
  let nextCollect = 1
  const collections = new Map<number, { results: unknown[]; expected: number; done: () => void }>()

  function collect(request: NodeRequest): Promise<unknown[]> {
    const live = workers.filter((w): w is ChildProcess => w !== null && w.connected)
    return new Promise((resolve) => {
      const id = nextCollect++
      const entry = { results: [] as unknown[], expected: live.length, done: () => finish() }
      const timer = setTimeout(() => finish(), NODE_QUERY_TIMEOUT_MS)
      const finish = () => {
        clearTimeout(timer)
        collections.delete(id)
        resolve(entry.results)
      }
      collections.set(id, entry)
      for (const w of live) w.send({ type: 'node-collect', id, request } satisfies PrimaryMessage)
      if (live.length === 0) finish()
    })
  }

  function start(index: number): void {
    const child = fork(process.argv[1]!, argv as string[], {
      // Two malloc arenas: with one per helper thread, freed memory stays mapped and RSS grows
      // by ~0.6 KB per connection (measured; see README, Performance).
      env: { MALLOC_ARENA_MAX: '2', ...process.env, [WORKER_ENV]: String(index) },
      execArgv: process.execArgv,
    })
    workers[index] = child
    startedAt[index] = Date.now()
    child.on('message', (message: WorkerMessage) => {
      switch (message.type) {
        case 'listening':
          listening++
          if (!announced && listening >= config.workers) {
            announced = true
            announce(log, config, message.port, uwsDetail, 'redis', config.workers)
          }
          break
        case 'node-request':
          void collect(message.request).then((results) => {
            if (child.connected) child.send({ type: 'node-response', id: message.id, results } satisfies PrimaryMessage)
          })
          break
        case 'node-reply': {
          const entry = collections.get(message.id)
          if (entry === undefined) break
          entry.results.push(message.result)
          if (entry.results.length >= entry.expected) entry.done()
          break
        }
        case 'admit': {
          const result = admission.admit(message.request)
          if (result.ok) held[index]!.set(message.id, message.request)
          if (child.connected) child.send({ type: 'admit-result', id: message.id, result } satisfies PrimaryMessage)
          break
        }
        case 'release': {
          const request = held[index]!.get(message.id)
          if (request === undefined) break
          held[index]!.delete(message.id)
          admission.release(request)
          break
        }
      }
    })
    child.on('exit', (code, signal) => {
      workers[index] = null
      for (const request of held[index]!.values()) admission.release(request)
      held[index]!.clear()
      if (stopping) return
      quickDeaths[index] = Date.now() - startedAt[index]! >= HEALTHY_RUN_MS ? 0 : quickDeaths[index]! + 1
      const delayMs = quickDeaths[index] === 0 ? 0
        : Math.min(RESTART_MAX_DELAY_MS, RESTART_MIN_DELAY_MS * 2 ** Math.min(quickDeaths[index]! - 1, 16))
      log.error({ worker: index, code, signal, restartInMs: delayMs, quickDeaths: quickDeaths[index] }, 'worker exited; restarting it')
      setTimeout(() => {
        if (!stopping) start(index)
      }, delayMs)
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
