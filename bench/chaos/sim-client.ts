// One simulated browser tab: a WebSocket that behaves as src/client/jobs-client.ts does, so
// that what the harness measures is what users would see. That file cannot be imported here
// (it is built for the DOM, outside the main tsconfig), so its rules are restated, each with
// the line of behaviour it mirrors:
// - a view per job kept across reconnects; job_status replaces it; job_update is applied when
//   its epoch differs from the held one, or (same epoch) its seq is higher; a skipped seq asks
//   for a fresh job_status (JobView.applyUpdate's 'gap');
// - the close policy of closeDecision(); reconnect with full-jitter backoff (0.5 s doubling to
//   20 s), reset once a connection opens; 1013 waits for the advised delay; every job is
//   subscribed again on each new connection;
// - `unavailable` for a subscribe is retried after max(retry_after_ms, backoff);
// - an application ping every 25 s, and a connection without a pong 10 s later is dead.
// Not modelled: the SSE/polling fallback after three failed attempts (these tabs keep trying
// WebSocket with backoff, which the real client also does every 30 s from the fallback), and
// token renewal (the gateways run without access control).

import WebSocket from 'ws'
import { backoff } from '../../src/support/backoff.js'
import { closeDecision, CloseCode, Subprotocol, type ErrorCode, type JobPayload } from '../../src/wire/protocol.js'

/** What a tab holds for one job: the fields the harness compares with the stored state. */
export interface View {
  known: boolean
  /** The last applied frame had data (a job_status may say null: no state). */
  hasData: boolean
  seq: number | undefined
  epoch: number | undefined
  status: string | undefined
}

export interface TabEvents {
  opened(tab: SimTab): void
  closed(tab: SimTab, code: number): void
  /** A job_status arrived; `requested` when the tab asked for it after a gap. */
  status(tab: SimTab, jobId: string, requested: boolean): void
  update(tab: SimTab, jobId: string): void
  error(tab: SimTab, code: string): void
  /** A job_update whose data is not a state the producer script wrote (it always sets an
   * integer seq and epoch and a numeric ts): a hostile or malformed producer message reached
   * a browser. */
  foreign(tab: SimTab, jobId: string): void
  /** The close policy said stop: this tab would give up for good. */
  gaveUp(tab: SimTab, code: number, reason: string): void
}

export interface TabOptions {
  readonly minReconnectDelayMs?: number
  readonly maxReconnectDelayMs?: number
  readonly pingIntervalMs?: number
  readonly pongTimeoutMs?: number
}

const HEARTBEAT_LOST = 4000
const UNAVAILABLE = 'unavailable' satisfies ErrorCode

interface Watched {
  readonly view: View
  /** job_status received on the current connection: the subscription is live again. */
  acknowledged: boolean
  retries: number
  retryTimer: NodeJS.Timeout | null
  /** A job_status request after a gap is outstanding. */
  asked: boolean
}

export class SimTab {
  private ws: WebSocket | null = null
  private readonly jobs = new Map<string, Watched>()
  private attempts = 0
  private reconnectTimer: NodeJS.Timeout | null = null
  private pingTimer: NodeJS.Timeout | null = null
  private pongTimer: NodeJS.Timeout | null = null
  private stopped = false
  private lastError: ErrorCode | undefined
  private lastRetryAfterMs: number | undefined
  private readonly o: Required<TabOptions>
  /** Connections opened, closes seen, and whether the close policy made it stop. */
  private readonly deaf = new Set<string>()
  opens = 0
  closes = 0
  gaveUp = false

  constructor(readonly id: number, readonly url: string, jobIds: readonly string[], private readonly events: TabEvents, options: TabOptions = {}) {
    this.o = {
      minReconnectDelayMs: options.minReconnectDelayMs ?? 500,
      maxReconnectDelayMs: options.maxReconnectDelayMs ?? 20_000,
      pingIntervalMs: options.pingIntervalMs ?? 25_000,
      pongTimeoutMs: options.pongTimeoutMs ?? 10_000,
    }
    for (const jobId of jobIds) this.watch(jobId)
  }

  get jobIds(): IterableIterator<string> {
    return this.jobs.keys()
  }

  get isOpen(): boolean {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN
  }

  view(jobId: string): View | undefined {
    return this.jobs.get(jobId)?.view
  }

  /** Open on the current connection and every job's job_status received on it. */
  acknowledged(jobId: string): boolean {
    return this.isOpen && this.jobs.get(jobId)?.acknowledged === true
  }

  /** Resolves when the first connection opened, or rejects after timeoutMs. */
  start(timeoutMs: number): Promise<void> {
    this.stopped = false
    this.open()
    return new Promise((resolve, reject) => {
      const deadline = Date.now() + timeoutMs
      const check = setInterval(() => {
        if (this.opens > 0) {
          clearInterval(check)
          resolve()
        } else if (Date.now() > deadline || this.gaveUp) {
          clearInterval(check)
          reject(new Error(`tab ${this.id} did not connect to ${this.url} within ${timeoutMs} ms`))
        }
      }, 20)
    })
  }

  stop(): void {
    this.stopped = true
    this.clearTimers()
    for (const w of this.jobs.values()) if (w.retryTimer !== null) clearTimeout(w.retryTimer)
    const ws = this.ws
    this.ws = null
    ws?.terminate()
  }

  /** The tab is closed by its user (close 1000, no reconnect) until rejoin(). */
  leave(): void {
    this.stopped = true
    this.clearTimers()
    const ws = this.ws
    if (ws === null) return
    if (ws.readyState === WebSocket.OPEN) ws.close(CloseCode.Normal)
    else ws.terminate()
  }

  /** The page is opened again: a new connection that subscribes every watched job. */
  rejoin(): void {
    if (!this.stopped) return
    this.stopped = false
    if (this.ws === null) this.open()
    // else: the old socket is still closing; its close event reconnects (stopped is false)
  }

  /** Starts watching a job (JobsClient.subscribe). */
  watch(jobId: string): void {
    if (this.jobs.has(jobId)) return
    this.jobs.set(jobId, {
      view: { known: false, hasData: false, seq: undefined, epoch: undefined, status: undefined },
      acknowledged: false, retries: 0, retryTimer: null, asked: false,
    })
    this.send({ type: 'subscribe_job', job_id: jobId })
  }

  /** Stops watching a job (the function JobsClient.subscribe returned). */
  unwatch(jobId: string): void {
    const w = this.jobs.get(jobId)
    if (w === undefined) return
    this.jobs.delete(jobId)
    if (w.retryTimer !== null) clearTimeout(w.retryTimer)
    this.send({ type: 'unsubscribe_job', job_id: jobId })
  }

  /** Drops every frame about this job from now on, as if the gateway had stopped sending
   * them: CHAOS_SELF_TEST uses it to prove the harness reports such a view as lost. */
  deafen(jobId: string): void {
    this.deaf.add(jobId)
  }

  /** Stops reading the socket (the TCP receive window fills, the gateway's send buffer grows),
   * as a tab whose main thread is blocked would. */
  pauseReading(): boolean {
    if (!this.isOpen) return false
    this.ws!.pause()
    return true
  }

  resumeReading(): void {
    this.ws?.resume()
  }

  private open(): void {
    if (this.stopped || this.ws !== null) return
    this.clearTimers()
    const ws = new WebSocket(this.url, Subprotocol.Json, { perMessageDeflate: false, handshakeTimeout: 10_000, followRedirects: false })
    this.ws = ws
    for (const w of this.jobs.values()) w.acknowledged = false
    // Events of a socket that was replaced (a dead heartbeat) must not touch the new one.
    ws.on('open', () => {
      if (ws !== this.ws) return
      this.opens++
      this.attempts = 0
      this.lastError = undefined
      this.lastRetryAfterMs = undefined
      this.events.opened(this)
      for (const jobId of this.jobs.keys()) this.send({ type: 'subscribe_job', job_id: jobId })
      this.pingTimer = setInterval(() => this.ping(), this.o.pingIntervalMs)
    })
    ws.on('message', (data: WebSocket.RawData, isBinary: boolean) => {
      if (ws !== this.ws || isBinary) return
      let message: unknown
      try {
        message = JSON.parse(data.toString())
      } catch {
        return
      }
      this.receive(message)
    })
    ws.on('error', () => undefined) // 'close' follows with 1006
    ws.on('close', (code: number, reason: Buffer) => {
      if (ws !== this.ws) return
      this.ws = null
      this.closed(code, reason.toString())
    })
  }

  private receive(message: unknown): void {
    if (typeof message !== 'object' || message === null) return
    const m = message as { type?: unknown; job_id?: unknown; data?: unknown; code?: unknown; retry_after_ms?: unknown }
    if (typeof m.job_id === 'string' && this.deaf.has(m.job_id) && (m.type === 'job_status' || m.type === 'job_update')) return
    const w = typeof m.job_id === 'string' ? this.jobs.get(m.job_id) : undefined
    switch (m.type) {
      case 'job_status': {
        if (w === undefined) return
        const requested = w.asked
        w.asked = false
        w.retries = 0
        w.acknowledged = true
        applyStatus(w.view, (m.data ?? null) as JobPayload | null)
        this.events.status(this, m.job_id as string, requested)
        return
      }
      case 'job_update': {
        if (w === undefined || typeof m.data !== 'object' || m.data === null) return
        const data = m.data as JobPayload
        if (integer(data.seq) === undefined || integer(data.epoch) === undefined || typeof data.ts !== 'number') this.events.foreign(this, m.job_id as string)
        const applied = applyUpdate(w.view, data)
        if (applied === 'stale') return
        this.events.update(this, m.job_id as string)
        if (applied === 'gap' && this.isOpen) {
          w.asked = true
          this.send({ type: 'job_status', job_id: m.job_id as string })
        }
        return
      }
      case 'pong':
        if (this.pongTimer !== null) clearTimeout(this.pongTimer)
        this.pongTimer = null
        return
      case 'error': {
        const code = typeof m.code === 'string' ? m.code : 'unknown'
        this.lastError = code as ErrorCode
        this.lastRetryAfterMs = typeof m.retry_after_ms === 'number' ? m.retry_after_ms : undefined
        this.events.error(this, code)
        if (w !== undefined && code === UNAVAILABLE && w.retryTimer === null) {
          const jobId = m.job_id as string
          const advised = typeof m.retry_after_ms === 'number' ? m.retry_after_ms : 0
          const wait = Math.max(advised, backoff(w.retries++, this.o.minReconnectDelayMs, this.o.maxReconnectDelayMs))
          w.retryTimer = setTimeout(() => {
            w.retryTimer = null
            if (this.isOpen) this.send({ type: 'subscribe_job', job_id: jobId })
          }, wait)
        }
        return
      }
      default:
        return
    }
  }

  private closed(code: number, reason: string): void {
    this.stopHeartbeat()
    this.closes++
    for (const w of this.jobs.values()) w.acknowledged = false
    this.events.closed(this, code)
    const lastError = this.lastError
    const lastRetryAfterMs = this.lastRetryAfterMs
    this.lastError = undefined
    this.lastRetryAfterMs = undefined
    if (this.stopped) return
    const decision = closeDecision(code, reason, lastError)
    if (decision === 'stop') {
      this.gaveUp = true
      this.events.gaveUp(this, code, reason)
      return
    }
    const advised = code === CloseCode.TryAgainLater ? advisedDelay(reason) ?? lastRetryAfterMs : undefined
    this.scheduleReconnect(decision === 'renew_token' ? 0 : advised)
  }

  private scheduleReconnect(delayMs?: number): void {
    if (this.stopped) return
    const wait = delayMs ?? backoff(this.attempts++, this.o.minReconnectDelayMs, this.o.maxReconnectDelayMs)
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer)
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null
      this.open()
    }, wait)
  }

  private ping(): void {
    this.send({ type: 'ping', id: Date.now() })
    if (this.pongTimer === null) this.pongTimer = setTimeout(() => this.dead(), this.o.pongTimeoutMs)
  }

  /** No pong in time: the connection is dead even if TCP has not noticed. */
  private dead(): void {
    this.pongTimer = null
    const ws = this.ws
    if (ws === null) return
    this.ws = null
    ws.terminate()
    this.closed(HEARTBEAT_LOST, 'no pong')
  }

  private send(message: object): void {
    if (this.isOpen) this.ws!.send(JSON.stringify(message))
  }

  private stopHeartbeat(): void {
    if (this.pingTimer !== null) clearInterval(this.pingTimer)
    if (this.pongTimer !== null) clearTimeout(this.pongTimer)
    this.pingTimer = null
    this.pongTimer = null
  }

  private clearTimers(): void {
    this.stopHeartbeat()
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer)
    this.reconnectTimer = null
  }
}

/** job_status replaces the view (JobView.applyStatus). */
export function applyStatus(view: View, data: JobPayload | null): void {
  view.known = true
  view.hasData = data !== null
  view.seq = integer(data?.seq)
  view.epoch = integer(data?.epoch)
  view.status = typeof data?.status === 'string' ? data.status : undefined
}

/** JobView.applyUpdate: a different epoch is a new truth; within one, only a higher seq. */
export function applyUpdate(view: View, data: JobPayload): 'applied' | 'stale' | 'gap' {
  const seq = integer(data.seq)
  const epoch = integer(data.epoch)
  const newEpoch = epoch !== undefined && view.epoch !== undefined && epoch !== view.epoch
  if (!newEpoch && seq !== undefined && view.seq !== undefined && seq <= view.seq) return 'stale'
  const gap = !newEpoch && seq !== undefined && view.seq !== undefined && seq > view.seq + 1
  view.hasData = true
  view.status = typeof data.status === 'string' ? data.status : undefined
  if (seq !== undefined) view.seq = seq
  if (epoch !== undefined) view.epoch = epoch
  return gap ? 'gap' : 'applied'
}

function integer(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isSafeInteger(value) ? value : undefined
}

/** The delay a 1013's reason `retry-after-ms=N` advises (jobs-client.ts advisedDelay). */
function advisedDelay(reason: string): number | undefined {
  const match = /retry-after-ms=(\d+)/.exec(reason)
  return match ? Number(match[1]) : undefined
}
