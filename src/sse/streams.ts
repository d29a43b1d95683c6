// GET /jobs/<id>/events: Server-Sent Events, the fallback for clients that cannot open a
// WebSocket. The same messages as the socket (job_status, then job_update, each with `id:` =
// seq), the same access rule, the same connection caps. A stream that cannot keep up is not
// queued without bound: updates are skipped while it is congested and, once it drains, it gets
// a job_status with the latest state (so it loses intermediate updates, never the latest state).

import type { HttpResponse, TemplatedApp } from 'uWebSockets.js'
import type { Admission } from '../access/admission.js'
import { canWatch, FORBIDDEN_MESSAGE, principalFor, tokenFrom, type Authenticator, type Principal } from '../access/auth.js'
import type { Config } from '../support/config.js'
import type { ConnectionInfo } from '../access/connections.js'
import { frameBytes, statusMessage, TOKEN_EXPIRED_MESSAGE, type Frame } from '../wire/frames.js'
import { clientAddress, respondBadJobId, respondJson, safeDecode, trackAborted } from '../http/respond.js'
import type { Logger } from '../support/log.js'
import type { Metrics } from '../support/metrics.js'
import { isValidJobId, type JobPayload } from '../wire/protocol.js'
import type { Snapshot } from '../stream/snapshot.js'
import type { JobSink, WatchedJob, WatchedJobs } from '../stream/watched-jobs.js'

const HEARTBEAT_MS = 15_000
/** A stream congested this long is closed; EventSource reconnects and resynchronises. */
const MAX_CONGESTED_MS = 30_000

export interface SseContext {
  readonly config: Config
  readonly auth: Authenticator
  readonly admission: Admission
  readonly watched: WatchedJobs
  readonly metrics: Metrics
  readonly log: Logger
  isClosing(): boolean
  readSnapshot(jobId: string): Promise<Snapshot>
  /** Snapshot for a new watcher: waits until the job's channel is live. */
  readLiveSnapshot(job: WatchedJob): Promise<Snapshot>
}

/** SSE data lines cannot hold raw line breaks; in valid JSON they are only whitespace. */
function oneLine(json: string): string {
  return json.includes('\n') || json.includes('\r') ? json.replace(/[\r\n]+/g, ' ') : json
}

let nextStreamId = 1

export class SseStream implements JobSink {
  ended = false
  readonly id = nextStreamId++
  readonly connectedAt = Date.now()
  private congestedSince = 0

  constructor(
    private readonly res: HttpResponse,
    readonly job: WatchedJob,
    readonly principal: Principal | null,
    readonly ip: string,
    private readonly metrics: Metrics,
    /** Called once when the stream ends, whichever side ends it. */
    private readonly onEnd: () => void,
    /** The job's current snapshot, for a stream that drained after missing updates. */
    private readonly snapshot: () => Promise<Snapshot>,
  ) {}

  /** HOT PATH (per SSE stream). */
  update(jsonFrame: Frame, seq: number | undefined): void {
    if (this.ended || this.congestedSince !== 0) return
    this.write('job_update', typeof jsonFrame === 'string' ? jsonFrame : jsonFrame.toString('utf8'), seq)
  }

  resync(data: JobPayload | null): void {
    if (this.ended || this.congestedSince !== 0) return
    this.status(data)
  }

  status(data: JobPayload | null): void {
    const seq = typeof data?.seq === 'number' ? data.seq : undefined
    this.write('job_status', JSON.stringify(statusMessage(this.job.id, data)), seq)
  }

  heartbeat(now: number): void {
    if (this.ended) return
    if (this.congestedSince !== 0 && now - this.congestedSince > MAX_CONGESTED_MS) return this.end()
    if (this.congestedSince === 0) this.res.cork(() => this.res.write(': ping\n\n'))
  }

  expire(): void {
    if (this.ended) return
    // Not `event: error`: EventSource reports its own connection failures as 'error' events.
    this.write('jobwire_error', JSON.stringify(TOKEN_EXPIRED_MESSAGE), undefined)
    this.end()
  }

  end(): void {
    if (this.ended) return
    this.ended = true
    this.res.cork(() => this.res.end())
    this.onEnd()
  }

  private write(event: string, json: string, seq: number | undefined): void {
    if (this.ended) return
    const text = `event: ${event}\n${seq === undefined ? '' : `id: ${seq}\n`}data: ${oneLine(json)}\n\n`
    let ok = true
    this.res.cork(() => {
      ok = this.res.write(text)
    })
    this.metrics.framesOut++
    this.metrics.bytesOut += frameBytes(text)
    if (!ok) {
      this.congestedSince = Date.now()
      this.res.onWritable(() => {
        // Drained: skip what was missed, send where the job is now (read afresh: the stored
        // state, or what the channel delivered since).
        this.snapshot().then(
          (s) => {
            this.congestedSince = 0
            this.status(s.data)
          },
          () => this.end(), // the client reconnects and gets its snapshot then
        )
        return true
      })
    }
  }
}

export class SseStreams {
  readonly all = new Set<SseStream>()

  add(stream: SseStream): void {
    this.all.add(stream)
  }

  remove(stream: SseStream): void {
    this.all.delete(stream)
  }

  ofUser(userId: string): SseStream[] {
    return [...this.all].filter((s) => s.principal?.userId === userId)
  }

  /** For the admin endpoint: SSE streams look like connections with one subscription. */
  list(userId?: string): ConnectionInfo[] {
    return [...this.all].filter((s) => userId === undefined || s.principal?.userId === userId).map((s) => ({
      id: s.id,
      transport: 'sse' as const,
      user: s.principal?.userId ?? null,
      ip: s.ip,
      encoding: 'json',
      connectedAt: new Date(s.connectedAt).toISOString(),
      subscriptions: [s.job.id],
    }))
  }
  private readonly timer: NodeJS.Timeout

  constructor() {
    this.timer = setInterval(() => {
      const now = Date.now()
      for (const s of this.all) s.heartbeat(now)
    }, HEARTBEAT_MS)
    this.timer.unref()
  }

  /** Streams whose token has expired are told and ended. */
  expire(now: number): void {
    for (const s of this.all) {
      const exp = s.principal?.expiresAt
      if (exp != null && exp <= now) s.expire()
    }
  }

  closeAll(): void {
    clearInterval(this.timer)
    for (const s of this.all) s.end()
  }
}

export function addSseRoute(app: TemplatedApp, ctx: SseContext, streams: SseStreams): void {
  app.get('/jobs/:id/events', (res, req) => {
    const jobId = safeDecode(req.getParameter(0))
    const token = tokenFrom(req.getHeader('authorization'), req.getQuery('token') ?? '')
    const ip = clientAddress(res, ctx.config.trustProxy ? req.getHeader('x-forwarded-for') : '')
    if (ctx.isClosing()) return respondJson(res, 503, { error: 'shutting_down' }, { 'retry-after': '1' })
    if (!isValidJobId(jobId)) return respondBadJobId(res)
    const aborted = trackAborted(res)
    void (async () => {
      let principal: Principal | null
      try {
        principal = await principalFor(ctx.auth, token)
      } catch (err) {
        if (!aborted.aborted) respondJson(res, 401, { error: 'unauthorized', message: (err as Error).message }, { 'www-authenticate': 'Bearer' })
        return
      }
      const who = { userId: principal?.userId ?? null, ip }
      const admitted = await ctx.admission.admit(who)
      if (!admitted.ok) {
        if (!aborted.aborted) respondJson(res, 429, { error: 'rate_limited', message: admitted.reason, retry_after_ms: admitted.retryAfterMs }, { 'retry-after': String(Math.ceil(admitted.retryAfterMs / 1000)) })
        return
      }
      const job = ctx.watched.acquire(jobId)
      let stream: SseStream | null = null
      let released = false
      const release = () => {
        if (released) return
        released = true
        ctx.watched.release(job)
        ctx.admission.release(who)
        if (stream !== null) {
          stream.ended = true
          job.sinks.delete(stream)
          streams.remove(stream)
          ctx.metrics.sseStreams--
        }
      }
      try {
        const snapshot = await ctx.readLiveSnapshot(job)
        if (aborted.aborted) return release()
        if (!canWatch(principal, jobId, snapshot.owner)) {
          release()
          return respondJson(res, 403, { error: 'forbidden', message: FORBIDDEN_MESSAGE })
        }
        stream = new SseStream(res, job, principal, ip, ctx.metrics, release, () => ctx.readSnapshot(jobId))
        res.onAborted(() => {
          aborted.aborted = true
          release()
        })
        res.cork(() => {
          res.writeStatus('200 OK')
            .writeHeader('content-type', 'text/event-stream')
            .writeHeader('cache-control', 'no-store')
            .writeHeader('x-accel-buffering', 'no')
            .write('retry: 2000\n\n')
        })
        // Joining the job's sinks and sending the snapshot in one synchronous step: nothing the
        // channel delivers from now on can come before it.
        job.sinks.add(stream)
        streams.add(stream)
        ctx.metrics.sseStreams++
        stream.status(snapshot.data)
      } catch (err) {
        release()
        ctx.log.warn({ job: jobId, err: (err as Error).message }, 'SSE subscribe failed')
        if (!aborted.aborted) respondJson(res, 503, { error: 'unavailable', message: 'job state is unavailable right now' }, { 'retry-after': '1' })
      }
    })()
  })
}
