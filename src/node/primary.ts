// The primary of `jobwire serve --workers N`: starts the workers, restarts those that die
// (with backoff, never giving up), owns the connection caps so they hold for the node, answers
// node-wide questions by asking every worker, and stops the workers on SIGTERM/SIGINT.

import { fork, type ChildProcess } from 'node:child_process'
import { LocalAdmission, type AdmissionRequest } from '../access/admission.js'
import { IdleCollector } from '../support/idle-gc.js'
import { accessControl } from '../access/policy.js'
import { backoffCeiling } from '../support/backoff.js'
import { ConfigError, workerLaunch, type Config } from '../support/config.js'
import { droppedLogLines, flushLogs, workerLogForwarder, type Logger } from '../support/log.js'
import { LATENCY_BUCKETS } from '../support/metrics.js'
import { ProcessSampler } from '../support/process-stats.js'
import type { NodeAnswer, NodeRequest } from './node-request.js'
import { NodeMetrics } from './node-metrics.js'
import { ensurePortFree } from './port-check.js'
import { Calls, isWorkerMessage, type PrimaryMessage } from './rpc.js'
import { announce } from './announce.js'
import { gatewayExecArgv } from './v8-flags.js'

export const WORKER_ENV = 'JOBWIRE_WORKER_INDEX'
const NODE_QUERY_TIMEOUT_MS = 1000
/** A worker that ran this long before dying is restarted at once; one that dies sooner waits
 * longer each time (capped), so a burst of fatal input costs a worker's capacity for a while
 * but never takes the node down. */
const HEALTHY_RUN_MS = 60_000
const RESTART_MIN_DELAY_MS = 250
const RESTART_MAX_DELAY_MS = 30_000

export async function runPrimary(config: Config, argv: readonly string[], log: Logger, uwsDetail: string): Promise<void> {
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
  if (!config.sharePort) {
    try {
      await ensurePortFree(config.host, config.port)
    } catch (err) {
      log.fatal({ err: (err as Error).message }, 'gateway failed to start')
      process.exit(1)
    }
  }
  const workers = new Array<ChildProcess | null>(config.workers).fill(null)
  const quickDeaths = new Array<number>(config.workers).fill(0)
  const startedAt = new Array<number>(config.workers).fill(0)
  let stopping = false
  let listening = 0
  const admission = new LocalAdmission(config)
  // The primary's heap grows with its workers' admissions and log lines; it is mostly quiet.
  new IdleCollector({ thresholdMb: config.idleGcMb, log })
  // What each worker holds admitted, by admission id, so a worker that dies gives its
  // connections back.
  const held = workers.map(() => new Map<number, AdmissionRequest>())
  const answers = new Calls<NodeAnswer | null>()

  const nodeMetrics = new NodeMetrics()
  const sampler = new ProcessSampler('primary')

  /** What the primary itself counts: the log lines it dropped (it writes the workers' output),
   * and its own process series. */
  function primaryMetrics(): NodeAnswer {
    return {
      kind: 'metrics',
      metrics: {
        counters: { log_lines_dropped_total: droppedLogLines() },
        labelled: {},
        gauges: {},
        latency: { counts: new Array<number>(LATENCY_BUCKETS.length + 1).fill(0), sum: 0, count: 0 },
        processes: [sampler.sample()],
      },
    }
  }

  async function collect(request: NodeRequest): Promise<NodeAnswer[]> {
    const live = workers.flatMap((w, index) => (w !== null && w.connected ? [{ w, index }] : []))
    const replies = await Promise.all(live.map(({ w }) => answers.ask(
      (id) => w.send({ type: 'node-request', id, request } satisfies PrimaryMessage), NODE_QUERY_TIMEOUT_MS, () => null)))
    if (request.kind !== 'metrics') return replies.filter((a): a is NodeAnswer => a !== null)
    const snapshots = nodeMetrics.scrape(live.map((l) => l.index), replies.map((a) => (a?.kind === 'metrics' ? a.metrics : null)))
    return [...snapshots.map((metrics): NodeAnswer => ({ kind: 'metrics', metrics })), primaryMetrics()]
  }

  function start(index: number): void {
    const launch = workerLaunch(argv, config, process.env)
    const child = fork(process.argv[1]!, launch.argv, {
      // One malloc arena: with one per helper thread, freed memory stays mapped and RSS grows
      // by ~0.6 KB per connection, and even a second arena keeps ~0.2 KB (measured, with no
      // CPU cost we could see; README, Performance).
      env: { MALLOC_ARENA_MAX: '1', ...launch.env, [WORKER_ENV]: String(index) },
      execArgv: gatewayExecArgv(process.execArgv),
      // The workers' output comes through the primary rather than straight to the shared
      // stdout: a process that exits restores its stdio's blocking mode (Node's ResetStdio),
      // which on a shared pipe would make the primary's next log write block for ever while
      // the reader stalls. Only the primary touches the real stdout.
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    })
    const forward = workerLogForwarder()
    child.stdout!.on('data', forward)
    child.stderr!.on('data', workerLogForwarder())
    workers[index] = child
    startedAt[index] = Date.now()
    const reply = (message: PrimaryMessage) => {
      if (child.connected) child.send(message)
    }
    child.on('message', (message: unknown) => {
      if (!isWorkerMessage(message)) return log.warn({ worker: index }, 'ignored a malformed message from a worker')
      switch (message.type) {
        case 'listening':
          if (++listening === config.workers) announce(log, config, message.port, uwsDetail, config.redisCluster !== '' ? 'cluster' : 'redis', config.workers)
          return
        case 'node-query':
          return void collect(message.request).then((all) => reply({ type: 'node-answers', id: message.id, answers: all }))
        case 'node-answer':
          return answers.answer(message.id, message.answer)
        case 'ping':
          return reply({ type: 'pong', id: message.id })
        case 'charge':
          return reply({ type: 'admit-result', id: message.id, result: admission.charge(message.address) })
        case 'admit': {
          const result = admission.admit(message.request)
          if (result.ok) held[index]!.set(message.id, message.request)
          return reply({ type: 'admit-result', id: message.id, result })
        }
        case 'release': {
          const request = held[index]!.get(message.id)
          if (request === undefined) return
          held[index]!.delete(message.id)
          return admission.release(request)
        }
      }
    })
    child.on('exit', (code, signal) => {
      workers[index] = null
      nodeMetrics.exited(index, !stopping)
      for (const request of held[index]!.values()) admission.release(request)
      held[index]!.clear()
      if (stopping) return
      quickDeaths[index] = Date.now() - startedAt[index]! >= HEALTHY_RUN_MS ? 0 : quickDeaths[index]! + 1
      const delayMs = quickDeaths[index] === 0 ? 0 : backoffCeiling(quickDeaths[index]! - 1, RESTART_MIN_DELAY_MS, RESTART_MAX_DELAY_MS)
      log.error({ worker: index, code, signal, restartInMs: delayMs, quickDeaths: quickDeaths[index] }, 'worker exited; restarting it')
      setTimeout(() => {
        if (!stopping) start(index)
      }, delayMs)
    })
  }

  /** Every worker gets the signal and stops within its own bound (after draining, on
   * SIGTERM); whatever is still alive at --drain-ms + --shutdown-timeout-ms is killed, so the
   * node as a whole ends within it. */
  async function stopAll(signal: 'SIGTERM' | 'SIGINT'): Promise<void> {
    stopping = true
    const deadline = Date.now() + (signal === 'SIGTERM' ? config.drainMs : 0) + config.shutdownTimeoutMs - 200
    const alive = workers.filter((w): w is ChildProcess => w !== null)
    const exited = alive.map((w) => new Promise<void>((resolve) => {
      if (w.exitCode !== null || w.signalCode !== null) return resolve()
      w.once('exit', () => resolve())
    }))
    for (const w of alive) w.kill(signal)
    const hardStop = setTimeout(() => {
      for (const w of alive) w.kill('SIGKILL')
    }, Math.max(0, deadline - Date.now()))
    await Promise.all(exited)
    clearTimeout(hardStop)
    log.info('all workers stopped')
    await flushLogs(Math.max(0, Math.min(150, deadline + 150 - Date.now())))
    process.exit(0)
  }

  let signalled = false
  const onSignal = (signal: 'SIGTERM' | 'SIGINT') => {
    if (signalled) {
      log.warn('second signal: exiting now')
      process.exit(1)
    }
    signalled = true
    log.info({ signal }, 'stopping workers')
    void stopAll(signal)
  }
  process.on('SIGTERM', () => onSignal('SIGTERM'))
  process.on('SIGINT', () => onSignal('SIGINT'))
  for (let i = 0; i < config.workers; i++) start(i)
}
