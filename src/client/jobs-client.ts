import {
  closeDecision,
  CloseCode,
  isValidJobId,
  JOB_ID_RULE,
  Subprotocol,
  type ClientMessage,
  type ErrorCode,
  type ErrorMessage,
  type JobPayload,
  type ServerMessage,
  type StatusReason,
} from '../wire/protocol.js'
import { backoff } from '../support/backoff.js'
import { FallbackWatch } from './fallback.js'
import { JobView } from './job-view.js'

export type ClientState = 'connecting' | 'open' | 'reconnecting' | 'fallback' | 'closed'

export interface JobHandlers {
  /** The job's state after a job_update newer than anything seen for it (a plain PUBLISH of
   * some fields merged into the state held). */
  onUpdate?(data: JobPayload, jobId: string): void
  /** The job's state after its snapshot: on subscribe, after every reconnect or
   * resynchronisation. A final state held is kept when the server's is behind it or gone.
   * `status`: what the gateway said beside the state (why it sent it; whether the job is
   * stalled: silent past its stall time). */
  onStatus?(data: JobPayload | null, jobId: string, status: StatusInfo): void
  /** The server refused something about this job (forbidden, too_many_subscriptions, ...). */
  onError?(error: JobsClientError, jobId: string): void
}

/** What a job_status said beside the job's state. */
export interface StatusInfo {
  /** Absent from gateways older than it. */
  readonly reason: StatusReason | undefined
  readonly stalled: boolean
}

export interface UserJobsHandlers {
  /** The user's job ids, most recently updated first: when the watch starts, and again after
   * every reconnect or resynchronisation. */
  onJobs?(jobIds: string[], user: string): void
  /** A new job of the user. */
  onJob?(jobId: string, user: string): void
  onError?(error: JobsClientError, user: string): void
}

export interface JobsClientOptions {
  /** ws(s)://host[:port]/ws/jobs */
  readonly url: string
  /** A fixed token; or getToken, called before every connection and after token_expired. */
  readonly token?: string
  readonly getToken?: () => string | Promise<string>
  readonly minReconnectDelayMs?: number
  readonly maxReconnectDelayMs?: number
  readonly pingIntervalMs?: number
  /** No pong within this long after a ping: the connection is dead. */
  readonly pongTimeoutMs?: number
  /** Failed WebSocket attempts in a row (never opened) before falling back to SSE/polling. */
  readonly fallbackAfterFailures?: number
  /** While in fallback, how often to try WebSocket again. */
  readonly wsRetryIntervalMs?: number
  readonly pollIntervalMs?: number
  readonly connect?: boolean
  /** Injected for tests and unusual runtimes; default to the globals. */
  readonly WebSocket?: typeof WebSocket
  readonly EventSource?: typeof EventSource | null
  readonly fetch?: typeof fetch
}

/** The close code for a connection the heartbeat found dead: no standard code says "no pong",
 * so one of the private-use range, which closeDecision reconnects on. */
const HEARTBEAT_LOST = 4000
/** The error code of a subscribe the server could not complete (its broker is down); a literal
 * checked against the contract's codes, so the bundle does not carry the whole table. */
const UNAVAILABLE = 'unavailable' satisfies ErrorCode
/** Also the answer for a job that has no state yet (a task not started): retried when the
 * server says it may be (`retry_ms`), at most FORBIDDEN_RETRIES times in a row. */
const FORBIDDEN = 'forbidden' satisfies ErrorCode
const FORBIDDEN_RETRIES = 5

/** Why a value getToken returned cannot be a token, or null when it can: a string of at most
 * 8,192 characters without whitespace, quotes or angle brackets (an HTML error page, or
 * `undefined`, must not be sent as one). An empty string means "no token" (a gateway without
 * access control). */
function tokenProblem(value: unknown): string | null {
  if (typeof value !== 'string') return `getToken returned ${value === null ? 'null' : typeof value}, not a token (a string)`
  if (value.length > 8192 || /[\s"'<>]/.test(value)) return `getToken returned something that is not a token: ${JSON.stringify(value.slice(0, 40))}${value.length > 40 ? '…' : ''}`
  return null
}

/** A 401's body as the client reports it: its code (token_expired, else token_invalid) and
 * the gateway's reason. */
function refusedToken(body: { code?: string; message?: string } | null, otherwise: string): JobsClientError {
  return new JobsClientError(body?.code === 'token_expired' ? 'token_expired' : 'token_invalid', body?.message ?? otherwise)
}

export class JobsClientError extends Error {
  constructor(
    readonly code: string,
    message: string,
    /** The client asks again after this many ms (a retryable refusal); undefined: it will not. */
    readonly retryInMs?: number,
  ) {
    super(message)
    this.name = 'JobsClientError'
  }
}

interface Watched {
  readonly view: JobView
  readonly handlers: Set<JobHandlers>
  fallback: FallbackWatch | null
  /** Subscribes answered `unavailable` or `forbidden` in a row, and the pending retry. */
  retries: number
  retryTimer: ReturnType<typeof setTimeout> | null
  readonly maxHz: number | undefined
}

/**
 * Watches jobs over one WebSocket, with reconnect (exponential backoff, full jitter),
 * resubscription, heartbeat, the contract's close-code policy and a transparent SSE/polling
 * fallback. Per job it keeps the latest state and applies frames by seq, so callers see a
 * monotonic view. Events: `statechange` (detail {oldState, newState}), `error` (detail
 * JobsClientError), `pong` (detail {rttMs}), `message` (detail: every frame received).
 */
export class JobsClient extends EventTarget {
  private current: ClientState = 'closed'
  private ws: WebSocket | null = null
  private readonly jobs = new Map<string, Watched>()
  /** Users whose jobs are watched, by the name asked for ('me' or a user id). */
  private readonly users = new Map<string, Set<UserJobsHandlers>>()
  /** Whom the server resolved 'me' to. */
  private me: string | undefined
  private attempts = 0
  private failedInARow = 0
  private opened = false
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null
  private pingTimer: ReturnType<typeof setInterval> | null = null
  private pongTimer: ReturnType<typeof setTimeout> | null = null
  private pingSent = new Map<number, number>()
  private nextPing = 1
  private lastError: ErrorMessage | null = null
  private stopped = true
  /** An attempt is between its start and the creation of its socket (getToken may be slow). */
  private opening = false
  private inFallback = false
  private tokenCache: string | undefined
  /** The token the current attempt used (undefined: none). */
  private attemptToken: string | undefined
  /** The auth refusal last reported (code:message), so it is said once, not per attempt. */
  private authReported: string | null = null
  /** The token ('' for none) a probe found fine since the last open: not probed again. */
  private credentialsFine: string | undefined
  private readonly o: Required<Omit<JobsClientOptions, 'token' | 'getToken' | 'WebSocket' | 'EventSource' | 'fetch' | 'connect'>>
  private readonly onOnline = () => this.reconnectNow()
  private readonly onOffline = () => this.ws?.close()

  /** Round-trip time of the last ping, in ms. */
  rttMs: number | undefined

  constructor(private readonly options: JobsClientOptions) {
    super()
    this.o = {
      url: options.url,
      minReconnectDelayMs: options.minReconnectDelayMs ?? 500,
      maxReconnectDelayMs: options.maxReconnectDelayMs ?? 20_000,
      pingIntervalMs: options.pingIntervalMs ?? 25_000,
      pongTimeoutMs: options.pongTimeoutMs ?? 10_000,
      fallbackAfterFailures: options.fallbackAfterFailures ?? 3,
      wsRetryIntervalMs: options.wsRetryIntervalMs ?? 30_000,
      pollIntervalMs: options.pollIntervalMs ?? 2000,
    }
    this.tokenCache = options.token
    if (options.connect !== false) this.connect()
  }

  get state(): ClientState {
    return this.current
  }

  /** The latest state known for a job, or undefined when it is not watched or not yet known. */
  job(jobId: string): { data: JobPayload | null; seq: number | undefined } | undefined {
    const w = this.jobs.get(jobId)
    return w?.view.known ? { data: w.view.data, seq: w.view.seq } : undefined
  }

  /** Watches a job; returns the function that stops watching it. `maxHz`: at most this many
   * updates a second (a progress bar rarely needs more than a few); the newest always
   * arrives, terminal states at once. The first subscriber of a job sets it. */
  subscribe(jobId: string, handlers: JobHandlers = {}, options: { maxHz?: number } = {}): () => void {
    if (!isValidJobId(jobId)) throw new TypeError(`'${String(jobId).slice(0, 140)}' is not a job id (${JOB_ID_RULE})`)
    let w = this.jobs.get(jobId)
    if (w === undefined) {
      w = { view: new JobView(), handlers: new Set(), fallback: null, retries: 0, retryTimer: null, maxHz: options.maxHz }
      this.jobs.set(jobId, w)
      if (this.current === 'open') this.sendSubscribe(jobId, w)
      else if (this.inFallback) w.fallback = this.watchWithoutWebSocket(jobId)
    } else if (w.view.known) {
      handlers.onStatus?.(w.view.data, jobId, { reason: undefined, stalled: false })
    }
    w.handlers.add(handlers)
    return () => this.unsubscribe(jobId, handlers)
  }

  /** Watches a user's jobs (yours by default: `me`; others' need an admin token): the list,
   * then every new job as it appears. Needs WebSocket: in fallback nothing is announced.
   * Returns the function that stops watching. */
  watchUserJobs(handlers: UserJobsHandlers = {}, user = 'me'): () => void {
    let set = this.users.get(user)
    if (set === undefined) {
      set = new Set()
      this.users.set(user, set)
      if (this.current === 'open') this.sendUserJobs('subscribe_user_jobs', user)
    }
    set.add(handlers)
    return () => {
      if (!set.delete(handlers) || set.size > 0 || this.users.get(user) !== set) return
      this.users.delete(user)
      if (this.current === 'open') this.sendUserJobs('unsubscribe_user_jobs', user)
    }
  }

  connect(): void {
    this.stopped = false // an attempt still awaiting getToken goes ahead with this
    if (this.ws !== null || this.opening) return
    if (typeof addEventListener === 'function') {
      addEventListener('online', this.onOnline)
      addEventListener('offline', this.onOffline)
    }
    void this.open()
  }

  /** Stops everything: the socket, fallbacks, timers. Subscriptions are kept for connect(). */
  close(): void {
    this.stopped = true
    this.clearTimers()
    if (typeof removeEventListener === 'function') {
      removeEventListener('online', this.onOnline)
      removeEventListener('offline', this.onOffline)
    }
    this.leaveFallback()
    const ws = this.ws
    this.ws = null
    ws?.close(CloseCode.Normal)
    this.setState('closed')
  }

  /** Sends an application ping; its pong updates rttMs and fires a `pong` event. */
  ping(): void {
    const id = this.nextPing++
    this.pingSent.set(id, now())
    this.send({ type: 'ping', id })
    if (this.pongTimer === null) {
      this.pongTimer = setTimeout(() => this.dead('no pong within ' + this.o.pongTimeoutMs + ' ms'), this.o.pongTimeoutMs)
    }
  }

  private setState(next: ClientState): void {
    if (next === this.current) return
    const oldState = this.current
    this.current = next
    this.dispatchEvent(new CustomEvent('statechange', { detail: { oldState, newState: next } }))
  }

  private async token(): Promise<string | undefined> {
    if (this.options.getToken && this.tokenCache === undefined) {
      const given: unknown = await this.options.getToken()
      const problem = tokenProblem(given)
      if (problem !== null) throw new JobsClientError('token_invalid', problem)
      this.tokenCache = given as string
    }
    return this.tokenCache
  }

  /** An auth refusal, said once (until a connection succeeds or the reason changes), to the
   * client's error listeners and every job's onError. */
  private reportAuth(error: JobsClientError): void {
    const key = `${error.code}:${error.message}`
    if (this.authReported === key) return
    this.authReported = key
    this.emitError(error)
    for (const [jobId, w] of this.jobs) for (const h of [...w.handlers]) h.onError?.(error, jobId)
  }

  /** Why the last upgrade was refused, when it was its credentials: a browser sees a refused
   * upgrade only as 1006, so the same credentials are shown to GET /jobs, whose 401 it can
   * read. Null when that is not it (the gateway is unreachable, or the token is fine). */
  private async refusedCredentials(token: string | undefined): Promise<JobsClientError | null> {
    const fetcher = this.options.fetch ?? globalThis.fetch?.bind(globalThis)
    if (fetcher === undefined) return null
    try {
      // limit=1: the credentials are what is asked about; the list costs the gateway a read.
      const res = await fetcher(`${this.httpBase()}/jobs?owner=me&limit=1`, { headers: token ? { authorization: `Bearer ${token}` } : {}, cache: 'no-store' })
      if (res.status !== 401) return null
      const body = (await res.json().catch(() => null)) as { code?: string; message?: string } | null
      return refusedToken(body, 'the gateway refused the token')
    } catch {
      return null
    }
  }

  private async open(): Promise<void> {
    if (this.ws !== null || this.opening) return // one attempt at a time
    this.opening = true
    this.clearTimers()
    if (!this.inFallback) this.setState(this.attempts === 0 && !this.opened ? 'connecting' : 'reconnecting')
    let token: string | undefined
    try {
      token = await this.token()
    } catch (err) {
      this.opening = false
      this.reportAuth(err instanceof JobsClientError ? err : new JobsClientError('get_token_failed', `getToken failed: ${(err as Error).message}`))
      return this.scheduleReconnect()
    }
    this.attemptToken = token
    this.opening = false
    if (this.stopped) return
    const Ws = this.options.WebSocket ?? globalThis.WebSocket
    const url = token ? `${this.o.url}${this.o.url.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}` : this.o.url
    let ws: WebSocket
    try {
      ws = new Ws(url, Subprotocol.Json)
    } catch (err) {
      this.emitError(new JobsClientError('connect', (err as Error).message))
      return this.scheduleReconnect()
    }
    this.ws = ws
    let openedThis = false
    // Every handler first checks that its socket is still the current one: events of a socket
    // we replaced (after a dead heartbeat, say) must not touch the new one.
    ws.onopen = () => {
      if (ws !== this.ws) return
      openedThis = true
      this.opened = true
      this.authReported = null
      this.credentialsFine = undefined
      this.attempts = 0
      this.failedInARow = 0
      this.lastError = null
      this.leaveFallback()
      this.setState('open')
      for (const [jobId, w] of this.jobs) this.sendSubscribe(jobId, w)
      for (const user of this.users.keys()) this.sendUserJobs('subscribe_user_jobs', user)
      this.pingTimer = setInterval(() => this.ping(), this.o.pingIntervalMs)
    }
    ws.onmessage = (event: MessageEvent) => {
      if (ws !== this.ws || typeof event.data !== 'string') return
      let message: ServerMessage
      try {
        message = JSON.parse(event.data) as ServerMessage
      } catch {
        return
      }
      this.receive(message)
    }
    ws.onclose = (event: CloseEvent) => {
      if (ws !== this.ws) return
      this.ws = null
      this.closed(event.code, event.reason, openedThis)
    }
  }

  /** One frame from the server, by WebSocket or by a fallback transport. */
  private receive(message: ServerMessage): void {
    this.dispatchEvent(new CustomEvent('message', { detail: message }))
    switch (message.type) {
      case 'job_status':
      case 'job_update': {
        const w = this.jobs.get(message.job_id)
        if (w === undefined) return
        if (message.type === 'job_status') {
          w.retries = 0
          w.view.applyStatus(message.data, message.relation)
          const info: StatusInfo = { reason: message.reason, stalled: message.stalled === true }
          // The view's state: the server's, or the one held when the server's is behind it.
          for (const h of [...w.handlers]) h.onStatus?.(w.view.data, message.job_id, info)
          return
        }
        const applied = w.view.applyUpdate(message.data, message.prev_seq)
        if (applied === 'stale') return
        for (const h of [...w.handlers]) h.onUpdate?.(w.view.data!, message.job_id)
        if (applied === 'gap' && this.current === 'open') this.send(this.withSince({ type: 'job_status', job_id: message.job_id }, w))
        return
      }
      case 'pong': {
        if (this.pongTimer !== null) clearTimeout(this.pongTimer)
        this.pongTimer = null
        const sent = typeof message.id === 'number' ? this.pingSent.get(message.id) : undefined
        this.pingSent.clear()
        if (sent !== undefined) {
          this.rttMs = now() - sent
          this.dispatchEvent(new CustomEvent('pong', { detail: { rttMs: this.rttMs } }))
        }
        return
      }
      case 'user_jobs':
        for (const h of this.userHandlers(message.user)) h.onJobs?.(message.job_ids, message.user)
        return
      case 'user_job':
        for (const h of this.userHandlers(message.user)) h.onJob?.(message.job_id, message.user)
        return
      case 'error': {
        this.lastError = message
        const error = new JobsClientError(message.code, message.message)
        if (message.user !== undefined) {
          const user = message.user
          if (message.code === UNAVAILABLE) {
            setTimeout(() => {
              for (const [asked] of this.users) if ((asked === user || asked === 'me') && this.current === 'open') this.sendUserJobs('subscribe_user_jobs', asked)
            }, Math.max(message.retry_after_ms ?? 0, this.o.minReconnectDelayMs))
          }
          const handlers = this.userHandlers(user)
          if (handlers.length > 0) for (const h of handlers) h.onError?.(error, user)
          else this.emitError(error)
          return
        }
        const w = message.job_id === undefined ? undefined : this.jobs.get(message.job_id)
        // The server's broker is down, or the job may not exist yet: ask again after the
        // advised wait, backing off (a forbidden only so many times).
        const advised = message.code === UNAVAILABLE ? message.retry_after_ms ?? 0 : message.code === FORBIDDEN ? message.retry_ms : undefined
        let reported = error
        if (w !== undefined && advised !== undefined && (message.code !== FORBIDDEN || w.retries < FORBIDDEN_RETRIES)) {
          const wait = Math.max(advised, backoff(w.retries++, this.o.minReconnectDelayMs, this.o.maxReconnectDelayMs))
          reported = new JobsClientError(message.code, message.message, wait)
          const jobId = message.job_id!
          if (w.retryTimer !== null) clearTimeout(w.retryTimer)
          w.retryTimer = setTimeout(() => {
            w.retryTimer = null
            if (this.jobs.get(jobId) === w && this.current === 'open') this.sendSubscribe(jobId, w)
          }, wait)
        }
        if (w !== undefined && w.handlers.size > 0) for (const h of [...w.handlers]) h.onError?.(reported, message.job_id!)
        else this.emitError(reported)
        return
      }
      default:
        return // unknown types are ignored, as the contract asks
    }
  }

  /** Acts on the contract's closeDecision; only how long to wait is decided here. */
  private closed(code: number, reason: string, openedThis: boolean): void {
    this.stopHeartbeat()
    const last = this.lastError
    this.lastError = null
    if (this.stopped) return this.setState('closed')
    const decision = closeDecision(code, reason, last?.code)
    if (decision === 'renew_token' && this.options.getToken) {
      this.tokenCache = undefined
      return this.scheduleReconnect(0) // a fresh token, then straight back
    }
    if (decision !== 'reconnect') {
      // A fixed token that expired cannot be renewed: that ends like any refusal.
      return this.stop(code === CloseCode.MessageTooBig
        ? new JobsClientError('message_too_big', reason || `message too big (${code})`)
        : new JobsClientError('auth', reason || `the server refused this connection (${code})`))
    }
    const advised = code === CloseCode.TryAgainLater ? advisedDelay(reason) ?? last?.retry_after_ms : undefined
    if (openedThis) return this.scheduleReconnect(advised)
    // Refused before it opened: its credentials, or anything else (down, a proxy)? Asked
    // before the attempt counts towards the fallback, which no transport would get past with
    // the same token.
    const token = this.attemptToken
    // Asked once per token: when these credentials were fine, the failures that follow (a
    // gateway restarting, at capacity) are not theirs, and each probe costs the gateway a read.
    const alreadyFine = this.credentialsFine === (token ?? '')
    this.opening = true // no other attempt meanwhile
    void (alreadyFine ? Promise.resolve(null) : this.refusedCredentials(token)).then((refusal) => {
      this.opening = false
      if (this.stopped) return
      if (refusal === null) this.credentialsFine = token ?? ''
      if (refusal !== null) {
        if (!this.options.getToken) return this.stop(refusal) // a fixed token will not change
        this.reportAuth(refusal)
        this.tokenCache = undefined // getToken again, after the usual backoff
        return this.scheduleReconnect()
      }
      if (!this.inFallback && ++this.failedInARow >= this.o.fallbackAfterFailures) this.enterFallback()
      this.scheduleReconnect(advised)
    })
  }

  private stop(error: JobsClientError): void {
    this.emitError(error)
    for (const [jobId, w] of this.jobs) for (const h of [...w.handlers]) h.onError?.(error, jobId)
    this.close()
  }

  private scheduleReconnect(delayMs?: number): void {
    if (this.stopped) return
    const wait = delayMs ?? (this.inFallback ? this.o.wsRetryIntervalMs : backoff(this.attempts++, this.o.minReconnectDelayMs, this.o.maxReconnectDelayMs))
    if (!this.inFallback) this.setState('reconnecting')
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer)
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null
      if (typeof navigator !== 'undefined' && navigator.onLine === false) return // 'online' will call us
      void this.open()
    }, wait)
  }

  private reconnectNow(): void {
    if (this.stopped || this.current === 'open') return
    this.attempts = 0
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer)
    this.reconnectTimer = null
    if (this.ws === null && !this.opening) void this.open()
  }

  /** The heartbeat saw no pong: the connection is dead even if the browser has not noticed. */
  private dead(why: string): void {
    this.pongTimer = null
    const ws = this.ws
    if (ws === null) return
    this.ws = null
    ws.close(HEARTBEAT_LOST, why)
    this.closed(HEARTBEAT_LOST, why, true)
  }

  private enterFallback(): void {
    this.inFallback = true
    this.setState('fallback')
    for (const [jobId, w] of this.jobs) w.fallback ??= this.watchWithoutWebSocket(jobId)
  }

  private leaveFallback(): void {
    if (!this.inFallback) return
    this.inFallback = false
    for (const w of this.jobs.values()) {
      w.fallback?.stop()
      w.fallback = null
    }
  }

  /** The gateway's HTTP origin (and path prefix), from its WebSocket URL. */
  private httpBase(): string {
    return this.o.url.replace(/^ws/, 'http').replace(/\/ws\/jobs.*$/, '')
  }

  private watchWithoutWebSocket(jobId: string): FallbackWatch {
    return new FallbackWatch(jobId, {
      httpBase: this.httpBase(),
      token: () => this.token(),
      refreshToken: this.options.getToken ? () => (this.tokenCache = undefined) : null,
      pollIntervalMs: this.o.pollIntervalMs,
      EventSource: this.options.EventSource === null ? undefined : this.options.EventSource ?? globalThis.EventSource,
      fetch: this.options.fetch ?? globalThis.fetch.bind(globalThis),
      onHttpError: (id, status, body) => {
        if (status === 401) {
          return this.reportAuth(refusedToken(body, `GET /jobs/${id} answered 401`))
        }
        const code = status === 403 ? 'forbidden' : 'http'
        const error = new JobsClientError(code, body?.message ?? `GET /jobs/${id} answered ${status}`)
        const w = this.jobs.get(id)
        if (w) for (const h of [...w.handlers]) h.onError?.(error, id)
      },
    }, (message) => this.receive(message))
  }

  /** With the state held as `since` (after a reconnect, say): the server says how its state
   * relates to it, and the view keeps a final state the server is behind. */
  private sendSubscribe(jobId: string, w: Watched): void {
    this.send(this.withSince(w.maxHz === undefined ? { type: 'subscribe_job', job_id: jobId } : { type: 'subscribe_job', job_id: jobId, max_hz: w.maxHz }, w))
  }

  private withSince<M extends { type: 'subscribe_job' | 'job_status'; job_id: string }>(message: M, w: Watched): M {
    const since = w.view.known ? w.view.since : undefined
    return since === undefined ? message : { ...message, since }
  }

  private unsubscribe(jobId: string, handlers: JobHandlers): void {
    const w = this.jobs.get(jobId)
    if (w === undefined || !w.handlers.delete(handlers) || w.handlers.size > 0) return
    this.jobs.delete(jobId)
    w.fallback?.stop()
    if (w.retryTimer !== null) clearTimeout(w.retryTimer)
    if (this.current === 'open') this.send({ type: 'unsubscribe_job', job_id: jobId })
  }

  /** The handlers a user's message is for: those who asked for the user by name, and those
   * who asked for 'me' once the server has said who that is (its first answer names it). */
  private userHandlers(user: string): UserJobsHandlers[] {
    const out = [...(this.users.get(user) ?? [])]
    const mine = this.users.get('me')
    if (mine !== undefined && (this.me === user || (this.me === undefined && !this.users.has(user)))) {
      this.me = user
      out.push(...mine)
    }
    return out
  }

  private sendUserJobs(type: 'subscribe_user_jobs' | 'unsubscribe_user_jobs', user: string): void {
    this.send(user === 'me' ? { type } : { type, user })
  }

  private send(message: ClientMessage): void {
    if (this.ws !== null && this.ws.readyState === 1) this.ws.send(JSON.stringify(message))
  }

  private emitError(error: JobsClientError): void {
    this.dispatchEvent(new CustomEvent('error', { detail: error }))
  }

  private stopHeartbeat(): void {
    if (this.pingTimer !== null) clearInterval(this.pingTimer)
    if (this.pongTimer !== null) clearTimeout(this.pongTimer)
    this.pingTimer = null
    this.pongTimer = null
    this.pingSent.clear()
  }

  private clearTimers(): void {
    this.stopHeartbeat()
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer)
    this.reconnectTimer = null
  }
}

/** The delay a server advised in a 1013's close reason `retry-after-ms=N`, if any. */
export function advisedDelay(reason: string): number | undefined {
  const match = /retry-after-ms=(\d+)/.exec(reason)
  return match ? Number(match[1]) : undefined
}

function now(): number {
  return typeof performance !== 'undefined' ? performance.now() : Date.now()
}
