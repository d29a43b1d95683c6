// The composition root of one gateway process: builds its parts, wires the broker to the hot
// path, registers the routes, and owns the start and stop order. Behaviour lives in the parts.

import type { TemplatedApp, us_listen_socket } from 'uWebSockets.js'
import { Access } from './access/access.js'
import { LocalAdmission, type Admission } from './access/admission.js'
import { Connections } from './access/connections.js'
import { accessControl } from './access/policy.js'
import type { Broker } from './broker/broker.js'
import { createBroker } from './broker/create.js'
import { addAdminRoutes } from './http/admin.js'
import { addDemoRoutes, DemoProducer } from './http/demo.js'
import { addHttpRoutes, addNotFound } from './http/jobs.js'
import { loopbackHostsOnly } from './http/host-guard.js'
import { addProducerRoute } from './http/producer.js'
import { addUserJobsRoute } from './http/user-jobs.js'
import { ownerIndexFor } from './producer/owner-index.js'
import { withHead } from './http/head.js'
import { VERSION } from './support/version.js'
import { connectionsUnder, openFilesLimit } from './support/file-limit.js'
import { addStaticRoutes } from './http/static.js'
import { answerNodeRequest, connectionsOf, disconnectedOf, historiesOf, metricsOf, workersOf, type NodeAnswer, type NodeQuery, type NodeRequest, type WorkerJobs } from './node/node-request.js'
import { History, mergeHistories } from './node/history.js'
import { Readiness, UNANSWERED_MS } from './node/readiness.js'
import { Sources } from './sources/router.js'
import { addSseRoute } from './sse/route.js'
import { createBridge } from './stream/bridge.js'
import { brokerListener, sourceHooks } from './stream/broker-events.js'
import { Fanout } from './stream/fanout.js'
import { Losses } from './stream/losses.js'
import { Recorder } from './stream/recorder.js'
import { Rereads } from './stream/rereads.js'
import { Resync } from './stream/resync.js'
import { SnapshotReader } from './stream/snapshot.js'
import { Stalls } from './stream/stalls.js'
import { UserJobs } from './stream/user-jobs.js'
import { Watches } from './stream/watch.js'
import { WatchedJobs, type WatchedJob } from './stream/watched-jobs.js'
import { createReauthorizer } from './stream/generations.js'
import { isOpen, type Config } from './support/config.js'
import { withDeadline } from './support/deadline.js'
import { droppedLogLines, rateLimitedLog, type Logger } from './support/log.js'
import { mergeSnapshots, Metrics, renderBuildInfo, renderPrometheus, snapshotMetrics, type MetricsSnapshot } from './support/metrics.js'
import { ProcessSampler } from './support/process-stats.js'
import { IdleCollector } from './support/idle-gc.js'
import { uWS } from './support/uws.js'
import { createWsBehavior } from './ws/behavior.js'
import { CatchUp } from './ws/catch-up.js'

export const WS_PATH = '/ws/jobs'
/** How often connections whose token expired are told and closed. */
const EXPIRY_SWEEP_MS = 1000

export interface GatewayOptions {
  readonly config: Config
  readonly log: Logger
  /** Defaults to Redis Cluster when config.redisCluster is set, Redis when config.redisUrl is, else the embedded broker. */
  readonly broker?: Broker
  /** Defaults to caps counted in this process; with --workers the primary counts (serve.ts). */
  readonly admission?: Admission
  /** Asks every process of the node; defaults to asking only this one. */
  readonly nodeQuery?: NodeQuery
  /** One round trip to the primary, for readiness (workers only). */
  readonly primaryPing?: () => Promise<unknown>
  /** How this process is named in per-process metrics: 'main', or a worker's index. */
  readonly processName?: string
}

const DRAIN_POLL_MS = 100
const READINESS_PROBE_JOB = 'jobwire-readiness-probe'
const CLOSE_SPREAD_MAX_MS = 2000
const CLOSE_SPREAD_STEP_MS = 50

export class Gateway {
  readonly metrics = new Metrics()
  readonly broker: Broker
  readonly connections = new Connections()
  private readonly config: Config
  private readonly log: Logger
  private readonly app: TemplatedApp = uWS.App()
  private readonly watched: WatchedJobs
  /** Celery and BullMQ jobs, read from their queues' own Redis keys. */
  private readonly sources: Sources
  private readonly fanout: Fanout
  private readonly resync: Resync
  private readonly reauthorize: ((job: WatchedJob) => void) | null
  private readonly readiness: Readiness
  private readonly nodeQuery: NodeQuery
  private readonly access: Access
  private readonly demo: DemoProducer | null
  private readonly stopSse: () => void
  private readonly catchUp: CatchUp
  private readonly recorder: Recorder
  /** Reads a PUBLISH-only job again a moment after answering a subscribe from a record. */
  private readonly rereads: Rereads
  /** Begins a new epoch on a job whose stored state went back (Redis lost writes). */
  private readonly losses: Losses
  private readonly sampler: ProcessSampler
  private readonly idleCollector: IdleCollector
  private readonly userJobs: UserJobs
  private readonly ownerIndex: { close(): Promise<void> }
  private listenSocket: us_listen_socket | null = null
  private stopped = false
  /** The last ten minutes, for the admin page. */
  private readonly history: History
  /** Connections this process holds at most (--max-connections, or under its file limit). */
  readonly connectionCap: number
  private boundPort = 0
  private expirySweep: NodeJS.Timeout | null = null

  constructor(options: GatewayOptions) {
    const { config, log } = options
    this.config = config
    this.log = log
    const files = openFilesLimit()
    this.connectionCap = config.maxConnections ?? (files === null ? Number.POSITIVE_INFINITY : connectionsUnder(files))
    if (config.maxConnections !== null && files !== null && config.maxConnections > connectionsUnder(files)) {
      log.warn({ maxConnections: config.maxConnections, openFilesLimit: files },
        `--max-connections ${config.maxConnections} is above what this process's open-files limit (${files}) leaves room for (${connectionsUnder(files)}): ` +
        'past that, accept() fails and the process stops answering; raise the limit (LimitNOFILE=, ulimit -n) or lower --max-connections')
    }
    this.nodeQuery = options.nodeQuery ?? (async (request) => [this.handleNodeRequest(request)])
    // The primary said what access control allows, once for the node; its workers stay quiet
    // about it (their warnings would repeat the primary's word for word).
    const policyLog = options.processName?.startsWith('worker') ? log.child({}, { level: 'error' }) : log
    const access = (this.access = new Access(accessControl(config, policyLog), this.metrics))
    const admission = options.admission ?? new LocalAdmission(config)
    this.broker = options.broker ?? createBroker(config, log)
    this.sources = new Sources(config, log.child({ component: 'sources' }))
    // A stalled job's watchers are told through the fan-out, as after a resync.
    // Not while a new generation's watchers are checked: the job_status that follows the check
    // carries the flag (snapshot.ts).
    const stalls = new Stalls(config.stallAfterSec * 1000, (job, state) => {
      if (!job.reauthorizing) this.fanout.status(job, state, 'stalled', true)
    })
    this.watched = new WatchedJobs(this.broker, {
      mode: config.subscriptionMode, channelPrefix: config.channelPrefix, unsubscribeDelayMs: config.unsubscribeDelayMs, sources: this.sources, stalls,
    }, log.child({ component: 'subscriptions' }))
    const losses = (this.losses = new Losses(this.broker, this.metrics, log.child({ component: 'losses' })))
    const snapshots = new SnapshotReader(this.broker, this.watched, this.metrics, log, config.brokerTimeoutMs, config.outageHoldMs, this.sources, losses.report)
    const watches = new Watches(this.watched, snapshots, this.metrics, log)
    const owners = (this.ownerIndex = ownerIndexFor(this.broker, config.redisUrl, config.keyPrefix))
    this.userJobs = new UserJobs(this.broker, owners.index, this.app, this.metrics, log.child({ component: 'user-jobs' }), {
      keyPrefix: config.keyPrefix, unsubscribeDelayMs: config.unsubscribeDelayMs, timeoutMs: config.brokerTimeoutMs, holdMs: config.outageHoldMs,
    })
    this.fanout = new Fanout(this.app, this.metrics)
    this.recorder = new Recorder(this.broker, this.metrics, log.child({ component: 'recorder' }), undefined, (job) => this.watched.get(job.id) === job)
    this.sampler = new ProcessSampler(options.processName ?? 'main')
    this.history = new History(this.metrics, () => this.readiness.lastBrokerRttMs)
    this.idleCollector = new IdleCollector({ thresholdMb: config.idleGcMb, log, onCollect: () => this.metrics.idleCollections++ })
    this.reauthorize = access.enabled
      ? createReauthorizer({ connections: this.connections, snapshots, fanout: this.fanout, watched: this.watched, metrics: this.metrics, log, holdMs: config.outageHoldMs })
      : null
    this.resync = new Resync(this.watched, snapshots, this.fanout, this.metrics, log, this.reauthorize)
    const rereads = (this.rereads = new Rereads(this.watched, snapshots, this.fanout))
    watches.unsettled = (job, data) => rereads.schedule(job, data)
    watches.behind = (jobId, since) => losses.verifyClaim(jobId, since.epoch, since.seq)
    this.readiness = new Readiness(this.broker, this.watched, config.subscriptionMode, config.outageHoldMs, {
      // Any read answers "is Redis answering?"; the id names no job a producer would use.
      broker: () => withDeadline(this.broker.readJobs([READINESS_PROBE_JOB]), UNANSWERED_MS, 'readiness probe'),
      ...(options.primaryPing ? { primary: options.primaryPing } : {}),
    })
    const isClosing = () => this.readiness.closing
    const atCapacity = () => this.connections.size >= this.connectionCap
    const shared = { config, access, admission, watched: this.watched, watches, metrics: this.metrics, connections: this.connections, isClosing, atCapacity }

    // Route handlers see the app through the host guard while open (http/host-guard.ts), and
    // every GET route answers HEAD too (http/head.ts).
    const routes = withHead(isOpen(config) && !config.insecureNoAuth ? loopbackHostsOnly(this.app, this.metrics) : this.app)
    // --catch-up-bytes 0: never parked, so a slow socket meets only the hard cap.
    this.catchUp = new CatchUp(this.connections, this.watched, watches, this.metrics, config.catchUpBytes === 0 ? Number.POSITIVE_INFINITY : config.catchUpBytes, config.maxBackpressureBytes)
    this.fanout.published = this.catchUp.published
    routes.ws(WS_PATH, createWsBehavior({ ...shared, log: log.child({ component: 'ws' }), delivery: this.fanout.delivery, catchUp: this.catchUp, userJobs: this.userJobs, fanout: this.fanout }))
    addHttpRoutes(routes, {
      access,
      watches,
      allowedOrigins: config.allowedOrigins,
      allowPrivateNetwork: config.allowPrivateNetwork,
      addressRule: config,
      log: log.child({ component: 'http' }),
      isReady: () => this.readiness.ready,
      notReadyReason: () => this.readiness.reason,
      brokerState: () => this.broker.state,
      renderMetrics: async () => renderPrometheus(mergeSnapshots(metricsOf(await this.nodeQuery({ kind: 'metrics' })))) + renderBuildInfo(VERSION),
    })
    this.stopSse = addSseRoute(routes, { ...shared, snapshots, log: log.child({ component: 'sse' }) })
    addProducerRoute(routes, { broker: this.broker, access, log, addressRule: config, allowedOrigins: config.allowedOrigins })
    this.demo = config.demo ? new DemoProducer({ broker: this.broker, access, log: log.child({ component: 'demo' }) }) : null
    if (this.demo) addDemoRoutes(routes, { broker: this.broker, access, log }, this.demo)
    addStaticRoutes(routes)
    addUserJobsRoute(routes, { access, userJobs: this.userJobs, allowedOrigins: config.allowedOrigins })
    addAdminRoutes(routes, {
      access,
      log,
      addressRule: config,
      connections: async (user) => connectionsOf(await this.nodeQuery({ kind: 'connections', ...(user ? { user } : {}) })),
      disconnectUser: async (user) => disconnectedOf(await this.nodeQuery({ kind: 'disconnect', user })),
      workers: async (top) => workersOf(await this.nodeQuery({ kind: 'jobs', top })),
      history: async () => mergeHistories(historiesOf(await this.nodeQuery({ kind: 'history' }))),
    })
    addNotFound(routes)
  }

  /** Closes every connection with 1001, spread over up to CLOSE_SPREAD_MAX_MS (1 ms per
   * connection, at most a quarter of the shutdown bound), so that their reconnects reach the
   * other nodes as a ramp rather than one spike. */
  private async closeSpread(): Promise<void> {
    const open = this.connections.all()
    const windowMs = Math.min(open.length, CLOSE_SPREAD_MAX_MS, this.config.shutdownTimeoutMs / 4)
    const steps = Math.max(1, Math.floor(windowMs / CLOSE_SPREAD_STEP_MS))
    const perStep = Math.ceil(open.length / steps)
    for (let i = 0; i < open.length; i += perStep) {
      if (i > 0) await new Promise((resolve) => setTimeout(resolve, CLOSE_SPREAD_STEP_MS))
      for (const connection of open.slice(i, i + perStep)) connection.shutdown()
    }
  }

  /** Open WebSocket and SSE connections of this process. */
  get connectionCount(): number {
    return this.connections.size
  }

  get port(): number {
    return this.boundPort
  }

  isReady(): boolean {
    return this.readiness.ready
  }

  /** Resolves once ready (for tests and the worker supervisor). */
  whenReady(): Promise<void> {
    return this.readiness.whenReady()
  }

  async start(): Promise<number> {
    const malformed = rateLimitedLog(this.log.child({ component: 'bridge' }))
    const bridge = createBridge(this.watched, this.fanout, this.metrics, this.config.channelPrefix.length,
      (jobId, reason) => malformed({ job: jobId, reason }, 'dropped a malformed producer payload'), this.reauthorize, this.recorder, this.losses)
    const parts = { watched: this.watched, userJobs: this.userJobs, resync: this.resync, readiness: this.readiness, channelPrefix: this.config.channelPrefix }
    this.broker.start(brokerListener(parts, bridge))
    this.sources.start(sourceHooks(parts, bridge, (jobId, reason) => {
      this.metrics.malformedPayloads++
      malformed({ job: jobId, reason }, 'dropped a source message')
    }))
    if (this.config.subscriptionMode === 'pattern') {
      this.watched.subscribePattern().then(() => this.readiness.check(),
        (err: Error) => this.log.error({ err: err.message }, 'pattern subscription failed'))
    }
    this.listenSocket = await new Promise<us_listen_socket>((resolve, reject) => {
      this.app.listen(this.config.host, this.config.port, (token) => {
        if (token) resolve(token)
        else reject(new Error(`cannot listen on ${this.config.host}:${this.config.port} (in use, or not an address of this machine?)`))
      })
    })
    this.boundPort = uWS.us_socket_local_port(this.listenSocket)
    if (this.access.enabled) {
      this.expirySweep = setInterval(() => {
        for (const connection of this.connections.takeExpired(Date.now())) connection.expire()
      }, EXPIRY_SWEEP_MS)
    }
    this.readiness.setListening(true)
    return this.boundPort
  }

  /** This process's answer to a node-wide question. */
  handleNodeRequest(request: NodeRequest): NodeAnswer {
    return answerNodeRequest(request, this.connections, () => this.metricsSnapshot(), (top) => this.workerJobs(top), () => this.history.list())
  }

  /** For the admin page: this process's most watched jobs. */
  private workerJobs(top: number): WorkerJobs {
    return { pid: process.pid, connections: this.connections.size, jobsWatched: this.watched.size, top: this.watched.mostWatched(top) }
  }

  metricsSnapshot(): MetricsSnapshot {
    return snapshotMetrics(this.metrics, {
      jobsWatched: this.watched.size,
      brokerUp: this.broker.state === 'ready' ? 1 : 0,
      brokerReconnects: this.broker.reconnects,
      logLinesDropped: droppedLogLines(),
      process: this.sampler.sample(),
    })
  }

  /** Graceful shutdown, in this order: refuse new connections, close every connection (1001:
   * clients reconnect elsewhere), stop watching jobs, quit the broker, close what is left.
   * Bounded by shutdownTimeoutMs: whatever has not finished by then is cut. */
  /**
   * Stops taking new clients while the connected ones keep streaming: /readyz answers 503 at
   * once (the listener stays up to say so), and upgrades and SSE get 503 shutting_down, so a
   * load balancer takes the node out before its sockets are closed. Resolves after `ms`, or
   * as soon as no connection is left.
   */
  async drain(ms: number): Promise<void> {
    this.readiness.setStopping()
    const end = Date.now() + ms
    while (Date.now() < end && this.connections.size > 0) {
      await new Promise((resolve) => setTimeout(resolve, Math.min(DRAIN_POLL_MS, end - Date.now())))
    }
  }

  async stop(): Promise<void> {
    if (this.stopped) return
    this.stopped = true
    this.readiness.setStopping()
    if (this.listenSocket !== null) {
      uWS.us_listen_socket_close(this.listenSocket)
      this.listenSocket = null
    }
    if (this.expirySweep !== null) clearInterval(this.expirySweep)
    this.demo?.stop()
    this.resync.stop()
    await this.closeSpread()
    this.stopSse()
    this.catchUp.stop()
    this.recorder.stop()
    this.rereads.stop()
    this.sampler.stop()
    this.history.stop()
    this.idleCollector.stop()
    this.watched.dispose()
    this.userJobs.dispose()
    try {
      // Leaves a second of the bound for closing what is left and exiting.
      await withDeadline(Promise.all([this.broker.close(), this.sources.close()]), Math.max(100, this.config.shutdownTimeoutMs - 1000), 'broker close')
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'broker did not close in time')
    }
    await this.ownerIndex.close()
    // Ends whatever is still open (HTTP keep-alive connections), so the process can exit. The
    // binary has close(); the package's type declarations lack it.
    ;(this.app as TemplatedApp & { close(): void }).close()
  }
}
