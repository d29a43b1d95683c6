import type { ErrorCode, JobPayload, ServerMessage } from '../wire/protocol.js'

/** Where fallback frames go: the same handler the WebSocket feeds. */
export type FrameSink = (message: ServerMessage) => void

export interface FallbackOptions {
  /** http(s)://host[:port], without a trailing slash. */
  readonly httpBase: string
  readonly token: () => Promise<string | undefined>
  /** Forgets the token so the next token() asks getToken again; null without getToken. */
  readonly refreshToken: (() => void) | null
  readonly pollIntervalMs: number
  readonly EventSource: typeof EventSource | undefined
  readonly fetch: typeof fetch
  /** An HTTP error the caller must hear about (401/403: stop; others: keep trying), with the
   * JSON body's code and message when it had them. */
  readonly onHttpError: (jobId: string, status: number, body: { code?: string; message?: string } | null) => void
}

/** Checked against the contract by its type; the ErrorCode table itself would only add bytes
 * to the bundle. */
const TOKEN_EXPIRED = 'token_expired' satisfies ErrorCode

/** 403s with retry_ms in a row after which polling gives up (as the WebSocket client does). */
const FORBIDDEN_POLLS = 5

/** The longest wait between polls refused with 401. */
const MAX_UNAUTHORIZED_WAIT_MS = 30_000

/** SSE errors in a row before a job falls back further, to polling. */
const SSE_FAILURES_BEFORE_POLLING = 3

/**
 * One job watched without WebSocket: Server-Sent Events from GET /jobs/<id>/events, or, where
 * EventSource is missing or keeps failing, polling GET /jobs/<id>. Both deliver the same
 * messages the WebSocket would (job_status, job_update), so the caller sees no difference.
 */
export class FallbackWatch {
  private source: EventSource | null = null
  private pollTimer: ReturnType<typeof setTimeout> | null = null
  private sseFailures = 0
  /** 403s in a row. */
  private forbidden = 0
  /** 401s in a row: each doubles the wait before the next poll (a refused token must not be
   * asked for, and sent, every interval). */
  private unauthorized = 0
  private stopped = false

  constructor(private readonly jobId: string, private readonly options: FallbackOptions, private readonly sink: FrameSink) {
    if (options.EventSource) void this.openSse()
    else this.poll()
  }

  stop(): void {
    this.stopped = true
    this.source?.close()
    this.source = null
    if (this.pollTimer !== null) clearTimeout(this.pollTimer)
  }

  private async openSse(): Promise<void> {
    const token = await this.options.token()
    if (this.stopped) return
    const url = `${this.options.httpBase}/jobs/${encodeURIComponent(this.jobId)}/events${token ? `?token=${encodeURIComponent(token)}` : ''}`
    const source = new this.options.EventSource!(url)
    this.source = source
    const forward = (event: MessageEvent) => {
      this.sseFailures = 0
      try {
        this.sink(JSON.parse(event.data as string) as ServerMessage)
      } catch {
        // a malformed event: ignore it, the next one carries the whole state again
      }
    }
    source.addEventListener('job_status', forward as EventListener)
    source.addEventListener('job_update', forward as EventListener)
    source.addEventListener('jobwire_error', ((event: MessageEvent) => {
      forward(event)
      // The stream ends after token_expired: reopen it with a fresh token.
      if (this.options.refreshToken && String(event.data).includes(`"${TOKEN_EXPIRED}"`)) {
        this.options.refreshToken()
        source.close()
        if (source === this.source) void this.openSse()
      }
    }) as EventListener)
    source.onerror = () => {
      if (this.stopped || source !== this.source) return
      // EventSource retries by itself; a stream that keeps failing (or was refused: the
      // browser does not say with which status) moves this job to polling.
      if (++this.sseFailures >= SSE_FAILURES_BEFORE_POLLING || source.readyState === 2) {
        source.close()
        this.source = null
        this.poll()
      }
    }
  }

  private poll(): void {
    if (this.stopped) return
    void (async () => {
      try {
        const token = await this.options.token()
        const res = await this.options.fetch(`${this.options.httpBase}/jobs/${encodeURIComponent(this.jobId)}`, {
          headers: token ? { authorization: `Bearer ${token}` } : {},
          cache: 'no-store',
        })
        if (this.stopped) return
        if (res.status === 200) {
          const body = (await res.json()) as { data: JobPayload | null }
          this.sink({ type: 'job_status', job_id: this.jobId, data: body.data })
        } else if (res.status === 404) {
          this.sink({ type: 'job_status', job_id: this.jobId, data: null })
        } else {
          const body = (await res.json().catch(() => null)) as { code?: string; message?: string; retry_ms?: unknown } | null
          this.options.onHttpError(this.jobId, res.status, body)
          // A 401 with getToken: a fresh token at the next poll, later each time.
          if (res.status === 401 && this.options.refreshToken) {
            this.options.refreshToken()
            this.unauthorized++
          }
          // A 403 with retry_ms may be a job without a state yet: asked again, a few times.
          const retryable = res.status === 403 && this.forbidden++ < FORBIDDEN_POLLS && typeof body?.retry_ms === 'number'
          if ((res.status === 401 && !this.options.refreshToken) || (res.status === 403 && !retryable)) return
        }
        if (res.status !== 403) this.forbidden = 0
        if (res.status !== 401) this.unauthorized = 0
      } catch {
        // offline or refused: try again at the next interval
      }
      if (!this.stopped) this.pollTimer = setTimeout(() => this.poll(), Math.min(MAX_UNAUTHORIZED_WAIT_MS, this.options.pollIntervalMs * 2 ** this.unauthorized))
    })()
  }
}
