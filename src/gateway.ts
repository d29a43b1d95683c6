// The composition root: builds the uWS app, wires the broker to the hot path, the WebSocket
// behaviour and the HTTP routes, and owns startup and the shutdown order.

import type { TemplatedApp, us_listen_socket } from 'uWebSockets.js'
import type { Broker, BrokerState } from './broker/broker.js'
import { EmbeddedBroker } from './broker/embedded.js'
import { RedisBroker } from './broker/redis.js'
import { createBridge } from './bridge.js'
import type { Config } from './config.js'
import { withDeadline } from './deadline.js'
import { encodeMessage, statusMessage } from './frames.js'
import { addHttpRoutes, addNotFound } from './http-routes.js'
import { rateLimitedLog, type Logger } from './log.js'
import { mergeSnapshots, Metrics, renderPrometheus, snapshotMetrics, type MetricsSnapshot } from './metrics.js'
import { CloseCode } from './protocol.js'
import { SnapshotReader, type Snapshot } from './snapshot.js'
import { uWS } from './uws.js'
import { WatchedJobs } from './watched-jobs.js'
import { createWsBehavior, type JobSocket, type SocketData } from './ws-handlers.js'

export const WS_PATH = '/ws/jobs'
/** Snapshots read per broker round trip when resynchronising after an outage. */
const RESYNC_BATCH = 500

export interface GatewayOptions {
  readonly config: Config
  readonly log: Logger
  /** Defaults to Redis when config.redisUrl is set, else the embedded broker. */
  readonly broker?: Broker
  /** Multi-process mode: how to produce the node-wide metrics page (see workers.ts). */
  readonly nodeMetrics?: () => Promise<MetricsSnapshot[]>
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
  readonly sockets = new Set<JobSocket>()
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

  constructor(private readonly options: GatewayOptions) {
    this.config = options.config
    this.log = options.log
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
      sockets: this.sockets,
      isClosing: () => this.closing,
      readSnapshot: (jobId) => this.readSnapshot(jobId),
    }))
    addHttpRoutes(this.app, {
      log: this.log,
      isReady: () => this.isReady(),
      brokerState: () => this.broker.state,
      readSnapshot: (jobId) => this.readSnapshot(jobId),
      renderMetrics: () => this.renderMetrics(),
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
          const snapshots = await this.snapshots.readMany(batch)
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
    for (const sink of job.sinks) sink.resync(snapshot.data)
  }

  readSnapshot(jobId: string): Promise<Snapshot> {
    return this.snapshots.read(jobId)
  }

  metricsSnapshot(): MetricsSnapshot {
    return snapshotMetrics(this.metrics, {
      jobsWatched: this.watched.size,
      brokerUp: this.broker.state === 'ready' ? 1 : 0,
      brokerReconnects: this.broker.reconnects,
    })
  }

  private async renderMetrics(): Promise<string> {
    if (this.options.nodeMetrics) return renderPrometheus(mergeSnapshots(await this.options.nodeMetrics()))
    return renderPrometheus(this.metricsSnapshot())
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
    for (const ws of [...this.sockets]) ws.end(CloseCode.GoingAway, 'server shutting down')
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
