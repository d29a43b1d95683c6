// `jobwire serve`: one gateway process, or a primary that runs --workers gateway processes on
// the same port (SO_REUSEPORT: the kernel spreads connections across them). This file is the
// worker side and the entry point; primary.ts supervises the workers.

import { ADMITTED, countedFor, rateLimited, type Admission, type AdmissionLimits, type AdmissionRequest, type AdmissionResult } from '../access/admission.js'
import { ConfigError, type Config } from '../support/config.js'
import { Gateway } from '../gateway.js'
import { accessLog, createLogger, flushLogs, type Logger } from '../support/log.js'
import { detectUwsRuntime } from '../support/uws.js'
import type { NodeAnswer, NodeRequest } from './node-request.js'
import { ensurePortFree } from './port-check.js'
import { announce } from './announce.js'
import { runPrimary, WORKER_ENV } from './primary.js'
import { Calls, isPrimaryMessage, type WorkerMessage } from './rpc.js'

const NODE_QUERY_TIMEOUT_MS = 2000
/** Part of --shutdown-timeout-ms kept for exiting itself (and, in a worker, for the primary,
 * which kills what is left at the bound). */
export const EXIT_MARGIN_MS = 500
/** How long the last log lines may take to reach stdout before exit. */
const LOG_FLUSH_MS = 200
const ADMIT_TIMEOUT_MS = 1000
const ADMIT_RETRY_MS = 1000
const PING_TIMEOUT_MS = 2000

export async function serve(config: Config, argv: readonly string[]): Promise<void> {
  const workerIndex = process.env[WORKER_ENV]
  const log = createLogger(config.logLevel, workerIndex === undefined ? {} : { worker: Number(workerIndex) }, config.logBufferBytes, config.logFormat)
  if (workerIndex === undefined) {
    for (const note of config.notes) log.info(note)
    for (const warning of config.warnings) log.warn(warning)
  }
  const uws = detectUwsRuntime()
  if (!uws.native) {
    log.fatal({ detail: uws.detail }, 'uWebSockets.js native binary did not load; refusing to run on its slow JavaScript fallback')
    process.exit(1)
  }
  if (workerIndex === undefined && config.workers > 1) return runPrimary(config, argv, log, uws.detail)
  return runGateway(config, log, uws.detail, workerIndex !== undefined)
}

/** A worker's view of the primary: connection caps counted node-wide, and node-wide queries.
 * A connection the primary would not count (its caps off, or its address a trusted proxy's)
 * is admitted here without a round trip: with every cap off, a worker's connections cost the
 * primary nothing, where a ticket held for each cost about 0.2 KB per connection over the two
 * processes (bench/heap.ts --sample --workers 3). */
function primaryLink(log: Logger, local: () => Gateway, limits: AdmissionLimits) {
  const admits = new Calls<AdmissionResult>()
  const queries = new Calls<NodeAnswer[]>()
  const pings = new Calls<boolean>()
  const send = (message: WorkerMessage) => process.send!(message)
  // Each admission has an id, its ticket: a release frees exactly what the primary counted
  // for that id, and nothing when the primary had refused it.
  const ticketIds = new WeakMap<AdmissionRequest, number>()
  // If the primary does not answer in time the connection is refused (the limits must hold;
  // the client retries), and a late count is given back.
  const failClosed = (): AdmissionResult => {
    log.error('the primary did not answer an admission request in time; refusing the connection')
    return { ok: false, reason: 'the node is busy; retry shortly', retryAfterMs: ADMIT_RETRY_MS, cause: 'node_busy' }
  }
  const admitOnPrimary = async (request: AdmissionRequest): Promise<AdmissionResult> => {
    let ticket = 0
    const result = await admits.ask((id) => {
      ticket = id
      // A plain copy: the request may be a class instance whose fields IPC would not carry.
      send({ type: 'admit', id, request: { userId: request.userId, address: request.address } })
    }, ADMIT_TIMEOUT_MS, () => {
      send({ type: 'release', id: ticket })
      return failClosed()
    })
    if (result.ok) ticketIds.set(request, ticket)
    return result
  }
  const admission: Admission = {
    charge: (address) => rateLimited(limits, address) ? admits.ask((id) => send({ type: 'charge', id, address }), ADMIT_TIMEOUT_MS, failClosed) : ADMITTED,
    admit: (request) => {
      const counted = countedFor(limits, request)
      return counted.ip === null && counted.user === null ? ADMITTED : admitOnPrimary(request)
    },
    release: (request) => {
      const id = ticketIds.get(request)
      if (id !== undefined) send({ type: 'release', id })
    },
  }
  const nodeQuery = (request: NodeRequest) =>
    queries.ask((id) => send({ type: 'node-query', id, request }), NODE_QUERY_TIMEOUT_MS, () => [local().handleNodeRequest(request)])
  process.on('message', (message: unknown) => {
    if (!isPrimaryMessage(message)) return log.warn('ignored a malformed message from the primary')
    switch (message.type) {
      case 'node-request':
        return send({ type: 'node-answer', id: message.id, answer: local().handleNodeRequest(message.request) })
      case 'node-answers':
        return queries.answer(message.id, message.answers)
      case 'admit-result':
        return admits.answer(message.id, message.result)
      case 'pong':
        return pings.answer(message.id, true)
    }
  })
  // Unanswered pings resolve false after a while, so none is held for ever.
  const ping = () => pings.ask((id) => send({ type: 'ping', id }), PING_TIMEOUT_MS, () => false).then((answered) => {
    if (!answered) throw new Error('the primary did not answer')
  })
  return { admission, nodeQuery, send, ping }
}

async function runGateway(config: Config, log: Logger, uwsDetail: string, isWorker: boolean): Promise<void> {
  let gateway: Gateway
  const link = isWorker ? primaryLink(log, () => gateway, config) : null
  try {
    gateway = new Gateway({ config, log, processName: isWorker ? `worker-${process.env[WORKER_ENV]}` : 'main', ...(link ? { admission: link.admission, nodeQuery: link.nodeQuery, primaryPing: link.ping } : {}) })
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`jobwire: bad configuration: ${err.message}\n`)
      process.exit(2)
    }
    throw err
  }
  // The primary is gone: nobody will restart or stop us, so stop.
  if (isWorker) process.on('disconnect', () => void shutdown('primary exited'))

  let stopping = false
  async function shutdown(reason: string, drain = false): Promise<void> {
    if (stopping) {
      log.warn('second signal: exiting now')
      process.exit(1)
    }
    stopping = true
    // Every close of this shutdown is logged, not sampled.
    accessLog.unsampled = true
    if (drain && config.drainMs > 0) {
      log.info({ reason, drainMs: config.drainMs, connections: gateway.connectionCount }, 'draining: /readyz answers 503 and new clients are refused while connected ones keep streaming')
      await gateway.drain(config.drainMs)
    }
    log.info({ reason }, 'shutting down')
    // Whatever is stuck (a hung Redis, a stalled stdout), the process ends within the bound:
    // nothing on this path waits without a deadline, and logging never blocks.
    const deadline = Date.now() + config.shutdownTimeoutMs - EXIT_MARGIN_MS
    const hardStop = setTimeout(() => {
      log.error('graceful shutdown overran its bound; exiting')
      process.exit(1)
    }, Math.max(0, deadline - Date.now()))
    hardStop.unref()
    await gateway.stop()
    log.info('stopped')
    await flushLogs(Math.max(0, Math.min(LOG_FLUSH_MS, deadline - Date.now())))
    process.exit(0)
  }
  // SIGTERM is how orchestrators and the primary stop a gateway: drain first. SIGINT is a
  // person at a terminal: stop now.
  process.on('SIGTERM', () => void shutdown('SIGTERM', true))
  process.on('SIGINT', () => void shutdown('SIGINT'))

  let port: number
  try {
    if (!link && !config.sharePort) await ensurePortFree(config.host, config.port)
    port = await gateway.start()
  } catch (err) {
    log.fatal({ err: (err as Error).message }, 'gateway failed to start')
    process.exit(1)
  }
  if (link) {
    link.send({ type: 'listening', port })
    log.info({ port }, 'worker listening')
  } else {
    announce(log, config, port, uwsDetail, gateway.broker.kind, 1)
  }
}
