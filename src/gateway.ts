// The composition root: builds the uWS app, wires the broker to the hot path, the WebSocket
// behaviour and the HTTP routes, and owns startup and the shutdown order.

import type { TemplatedApp, us_listen_socket } from 'uWebSockets.js'
import { addAdminRoutes } from './http/admin.js'
import { LocalAdmission, type Admission } from './access/admission.js'
import { createAuthenticator, isLoopbackHost, type Authenticator } from './access/auth.js'
import type { Broker, BrokerState } from './broker/broker.js'
import { EmbeddedBroker } from './broker/embedded.js'
import { RedisBroker } from './broker/redis.js'
import { createBridge } from './stream/bridge.js'
import { ConfigError, type Config } from './support/config.js'
import { Connections, type ConnectionInfo } from './access/connections.js'
import { withDeadline } from './support/deadline.js'
import { encodeMessage, statusMessage, TOKEN_EXPIRED_MESSAGE } from './wire/frames.js'
import { addHttpRoutes, addNotFound } from './http/jobs.js'
import { rateLimitedLog, type Logger } from './support/log.js'
import { mergeSnapshots, Metrics, renderPrometheus, snapshotMetrics, type MetricsSnapshot } from './support/metrics.js'
import { addDemoRoutes, DemoProducer } from './http/demo.js'
import { addProducerRoute } from './http/producer.js'
import { addSseRoute, SseStreams } from './sse/streams.js'
import { addStaticRoutes } from './http/static.js'
import { CloseCode, ErrorCode } from './wire/protocol.js'
import { SnapshotReader, type Snapshot } from './stream/snapshot.js'
import { uWS } from './support/uws.js'
import { WatchedJobs } from './stream/watched-jobs.js'
import { createWsBehavior, type SocketData } from './ws/behavior.js'

export const WS_PATH = '/ws/jobs'
/** Snapshots read per broker round trip when resynchronising after an outage. */
const RESYNC_BATCH = 500

/** Questions asked of every gateway process of the node (see serve.ts). */
export type NodeRequest =
  | { kind: 'metrics' }
  | { kind: 'connections'; user?: string }
  | { kind: 'disconnect'; user: string }

export interface GatewayOptions {
  readonly config: Config
  readonly log: Logger
  /** Defaults to Redis when config.redisUrl is set, else the embedded broker. */
  readonly broker?: Broker
  /** Defaults to caps counted in this process; with --workers the primary counts (serve.ts). */
  readonly admission?: Admission
  /** Asks every process of the node; defaults to asking only this one. */
  readonly nodeQuery?: (request: NodeRequest) => Promise<unknown[]>
}

/** How often sockets whose token expired are told and closed. */
const EXPIRY_SWEEP_MS = 1000

/** The authenticator, after the secure-default rule: without a verification key, access
 * control is off, which is allowed on loopback only, unless --insecure-no-auth says otherwise
 * (and then every start says so in the log). Throws ConfigError. */
export function accessControl(config: Config, log: Logger): Authenticator {
  const auth = createAuthenticator(config)
  if (!auth.enabled && !isLoopbackHost(config.host)) {
    if (!config.insecureNoAuth) {
      throw new ConfigError(`--host ${config.host} is reachable from other machines, and no token verification is configured: ` +
        'set --jwt-secret, --jwt-public-key or --jwks-file, or pass --insecure-no-auth to let anyone who reaches it watch any job')
    }
    log.warn({ host: config.host }, 'INSECURE: access control is off on a non-loopback address (--insecure-no-auth); anyone who reaches it may watch any job')
  }
  return auth
}

export function createBroker(config: Config, log: Logger): Broker {
  const names = {
    channelPrefix: config.channelPrefix,
    keyPrefix: config.keyPrefix,
    stateTtlSec: config.stateTtlSec,
    terminalTtlSec: config.terminalTtlSec,
  }
  return config.redisUrl === ''
    ? new EmbeddedBroker(names)
    : new RedisBroker(config.redisUrl, names, log.child({ component: 'redis' }))
}

export class Gateway {
  readonly metrics = new Metrics()
  readonly broker: Broker
  readonly connections = new Connections()
  readonly auth: Authenticator
  private readonly admission: Admission
  private readonly config: Config
  private readonly log: Logger
  private readonly app: TemplatedApp
  private readonly watched: WatchedJobs
  private readonly snapshots: SnapshotReader
  private listenSocket: us_listen_socket | null = null
  private closing = false
  private patternLive = false
  private boundPort = 0
  private resyncRun = 0
  private readyWaiters: Array<() => void> = []
  private expirySweep: NodeJS.Timeout | null = null
  private readonly sse = new SseStreams()
  private readonly demo: DemoProducer | null

  constructor(private readonly options: GatewayOptions) {
    this.config = options.config
    this.log = options.log
    this.auth = accessControl(this.config, this.log)
    this.admission = options.admission ?? new LocalAdmission(this.config)
    this.broker = options.broker ?? createBroker(this.config, this.log)
    this.watched = new WatchedJobs(this.broker, {
      mode: this.config.subscriptionMode,
      channelPrefix: this.config.channelPrefix,
      unsubscribeDelayMs: this.config.unsubscribeDelayMs,
    }, this.log.child({ component: 'subscriptions' }))
    this.snapshots = new SnapshotReader(this.broker, this.watched, this.metrics, this.log, this.config.brokerTimeoutMs)
    this.app = uWS.App()
    this.app.ws<SocketData>(WS_PATH, createWsBehavior({
      config: this.config,
      watched: this.watched,
      metrics: this.metrics,
      log: this.log.child({ component: 'ws' }),
      auth: this.auth,
      admission: this.admission,
      connections: this.connections,
      isClosing: () => this.closing,
      readSnapshot: (jobId) => this.readSnapshot(jobId),
      readLiveSnapshot: (job) => this.snapshots.readLive(job),
    }))
    addHttpRoutes(this.app, {
      log: this.log,
      auth: this.auth,
      isReady: () => this.isReady(),
      brokerState: () => this.broker.state,
      readSnapshot: (jobId) => this.readSnapshot(jobId),
      renderMetrics: () => this.renderMetrics(),
    })
    addSseRoute(this.app, {
      config: this.config,
      auth: this.auth,
      admission: this.admission,
      watched: this.watched,
      metrics: this.metrics,
      log: this.log.child({ component: 'sse' }),
      isClosing: () => this.closing,
      readSnapshot: (jobId) => this.readSnapshot(jobId),
      readLiveSnapshot: (job) => this.snapshots.readLive(job),
    }, this.sse)
    addProducerRoute(this.app, { broker: this.broker, auth: this.auth, log: this.log })
    this.demo = this.config.demo ? new DemoProducer({ broker: this.broker, auth: this.auth, log: this.log.child({ component: 'demo' }) }) : null
    if (this.demo) addDemoRoutes(this.app, { broker: this.broker, auth: this.auth, log: this.log }, this.demo)
    addStaticRoutes(this.app)
    addAdminRoutes(this.app, {
      auth: this.auth,
      log: this.log,
      connections: async (user) => (await this.nodeQuery({ kind: 'connections', ...(user ? { user } : {}) })).flat() as ConnectionInfo[],
      disconnectUser: async (user) => (await this.nodeQuery({ kind: 'disconnect', user })).reduce<number>((n, r) => n + (r as number), 0),
    })
    addNotFound(this.app)
  }

  get port(): number {
    return this.boundPort
  }

  /** Ready: listening, broker connected and, in pattern mode, the PSUBSCRIBE live. */
  isReady(): boolean {
    return this.listenSocket !== null && !this.closing && this.broker.state === 'ready' &&
      (this.config.subscriptionMode === 'per-job' || this.patternLive)
  }

  /** Resolves once isReady() holds (for tests and the worker supervisor). */
  whenReady(): Promise<void> {
    if (this.isReady()) return Promise.resolve()
    return new Promise((resolve) => this.readyWaiters.push(resolve))
  }

  async start(): Promise<number> {
    const malformed = rateLimitedLog(this.log.child({ component: 'bridge' }))
    const onMessage = createBridge(this.app, this.watched, this.metrics, this.config.channelPrefix.length,
      (jobId, reason) => malformed({ job: jobId, reason }, 'dropped a malformed producer payload'))
    this.broker.start({
      message: onMessage,
      state: (state) => this.onBrokerState(state),
      restored: () => this.onBrokerRestored(),
    })
    if (this.config.subscriptionMode === 'pattern') this.subscribePattern()

    this.listenSocket = await new Promise<us_listen_socket>((resolve, reject) => {
      this.app.listen(this.config.host, this.config.port, (token) => {
        if (token) resolve(token)
        else reject(new Error(`cannot listen on ${this.config.host}:${this.config.port} (in use, or not an address of this machine?)`))
      })
    })
    this.boundPort = uWS.us_socket_local_port(this.listenSocket as unknown as Parameters<typeof uWS.us_socket_local_port>[0])
    if (this.auth.enabled) this.expirySweep = setInterval(() => this.closeExpired(), EXPIRY_SWEEP_MS)
    this.checkReady()
    return this.boundPort
  }

  private subscribePattern(): void {
    this.broker.psubscribe(`${this.config.channelPrefix}*`).then(
      () => {
        this.patternLive = true
        this.watched.setPatternLive(true)
        this.checkReady()
      },
      (err: Error) => this.log.error({ err: err.message }, 'pattern subscription failed'),
    )
  }

  private onBrokerState(state: BrokerState): void {
    if (state === 'down') {
      this.patternLive = false
      this.watched.setPatternLive(false)
      this.watched.markAllDown()
    }
    this.checkReady()
  }

  private onBrokerRestored(): void {
    if (this.config.subscriptionMode === 'pattern') {
      this.patternLive = true
      this.watched.setPatternLive(true)
    } else {
      this.watched.markAllLive()
    }
    this.checkReady()
    void this.resync()
  }

  private checkReady(): void {
    if (!this.isReady()) return
    const waiters = this.readyWaiters
    this.readyWaiters = []
    for (const resolve of waiters) resolve()
  }

  /** After an outage, messages may have been missed: every watched job's subscribers get a
   * fresh job_status, published to the job's topics like an update. Retried until it
   * succeeds or a newer outage starts its own run. */
  private async resync(): Promise<void> {
    const run = ++this.resyncRun
    const jobs = [...this.watched.values()].map((job) => job.id)
    this.metrics.resyncs++
    for (let i = 0; i < jobs.length; i += RESYNC_BATCH) {
      const batch = jobs.slice(i, i + RESYNC_BATCH)
      for (let attempt = 1; ; attempt++) {
        if (run !== this.resyncRun || this.closing) return
        try {
          const snapshots = await this.snapshots.readBatch(batch)
          batch.forEach((jobId, k) => this.publishStatus(jobId, snapshots[k]!))
          break
        } catch (err) {
          this.log.warn({ attempt, jobs: batch.length, err: (err as Error).message }, 'resync snapshot read failed; retrying')
          await new Promise((resolve) => setTimeout(resolve, Math.min(250 * attempt, 2000)))
        }
      }
    }
    this.log.info({ jobs: jobs.length }, 'resynchronised subscribers after broker outage')
  }

  private publishStatus(jobId: string, snapshot: Snapshot): void {
    const job = this.watched.get(jobId)
    if (job === undefined) return
    const message = statusMessage(jobId, snapshot.data)
    for (const [topic, encoding] of [[job.jsonTopic, 'json'], [job.msgpackTopic, 'msgpack']] as const) {
      const subscribers = this.app.numSubscribers(topic)
      if (subscribers === 0) continue
      this.app.publish(topic, encodeMessage(encoding, message), encoding === 'msgpack')
      this.metrics.framesOut += subscribers
    }
    for (const sink of [...job.sinks]) sink.resync(snapshot.data)
  }

  readSnapshot(jobId: string): Promise<Snapshot> {
    return this.snapshots.read(jobId)
  }

  /** Tells sockets whose token expired, then closes them with 1008; clients reconnect with a
   * fresh token (the browser client's getToken hook). */
  private closeExpired(): void {
    this.sse.expire(Date.now())
    for (const ws of this.connections.takeExpired(Date.now())) {
      const data = ws.getUserData()
      if (data.closed) continue
      this.metrics.countClientError(ErrorCode.TokenExpired)
      ws.cork(() => {
        ws.send(encodeMessage(data.encoding, TOKEN_EXPIRED_MESSAGE), data.encoding === 'msgpack')
        ws.end(CloseCode.PolicyViolation, 'token expired')
      })
    }
  }

  /** This process's answer to a node-wide question. */
  handleNodeRequest(request: NodeRequest): unknown {
    switch (request.kind) {
      case 'metrics':
        return this.metricsSnapshot()
      case 'connections':
        return [...this.connections.list(request.user), ...this.sse.list(request.user)]
      case 'disconnect': {
        const sockets = this.connections.ofUser(request.user)
        const streams = this.sse.ofUser(request.user)
        for (const ws of sockets) ws.end(CloseCode.PolicyViolation, 'disconnected by an administrator')
        for (const stream of streams) stream.end()
        return sockets.length + streams.length
      }
    }
  }

  private nodeQuery(request: NodeRequest): Promise<unknown[]> {
    return this.options.nodeQuery ? this.options.nodeQuery(request) : Promise.resolve([this.handleNodeRequest(request)])
  }

  metricsSnapshot(): MetricsSnapshot {
    return snapshotMetrics(this.metrics, {
      jobsWatched: this.watched.size,
      brokerUp: this.broker.state === 'ready' ? 1 : 0,
      brokerReconnects: this.broker.reconnects,
    })
  }

  private async renderMetrics(): Promise<string> {
    return renderPrometheus(mergeSnapshots((await this.nodeQuery({ kind: 'metrics' })) as MetricsSnapshot[]))
  }

  /** Graceful shutdown, in this order: refuse new connections, close every socket with 1001
   * (clients reconnect elsewhere), stop watching jobs, quit the broker, close what is left.
   * Bounded by shutdownTimeoutMs: whatever has not finished by then is cut. */
  async stop(): Promise<void> {
    if (this.closing) return
    this.closing = true
    if (this.listenSocket !== null) {
      uWS.us_listen_socket_close(this.listenSocket)
      this.listenSocket = null
    }
    if (this.expirySweep !== null) clearInterval(this.expirySweep)
    this.demo?.stop()
    for (const ws of [...this.connections.all]) ws.end(CloseCode.GoingAway, 'server shutting down')
    this.sse.closeAll()
    this.watched.dispose()
    try {
      await withDeadline(this.broker.close(), this.config.shutdownTimeoutMs, 'broker close')
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'broker did not close in time')
    }
    // Ends whatever is still open (HTTP keep-alive connections), so the process can exit.
    ;(this.app as TemplatedApp & { close(): void }).close()
  }
}
