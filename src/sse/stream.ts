// One Server-Sent Events stream: a JobSink of one job, and a Connection for the registry. A
// stream that cannot keep up is not queued without bound: updates are skipped while it is
// congested and, once it drains, it gets a job_status with the latest state (so it loses
// intermediate updates, never the latest state).

import type { HttpResponse } from 'uWebSockets.js'
import { FORBIDDEN_MESSAGE, type Principal } from '../access/auth.js'
import type { Connection } from '../access/connections.js'
import type { Snapshot } from '../stream/snapshot.js'
import type { JobSink } from '../stream/watched-jobs.js'
import type { Metrics } from '../support/metrics.js'
import { statusMessage, TOKEN_EXPIRED_MESSAGE } from '../wire/frames.js'
import { ErrorCode, FORBIDDEN_RETRY_MS, type JobPayload, type StatusReason } from '../wire/protocol.js'
import { sseEvent } from './event.js'

/** A stream congested this long is closed; EventSource reconnects and resynchronises. */
const MAX_CONGESTED_MS = 30_000
/** The reconnect delay every stream sets with `retry:` (route.ts). */
export const SSE_RETRY_MS = 2000

export class SseStream implements JobSink, Connection {
  ended = false
  readonly connectedAt = Date.now()
  private congestedSince = 0

  constructor(
    readonly id: number,
    private readonly res: HttpResponse,
    readonly jobId: string,
    readonly principal: Principal | null,
    readonly ip: string,
    private readonly metrics: Metrics,
    /** Called once when the stream ends, whichever side ends it. */
    private readonly onEnd: () => void,
    /** The job's current snapshot, for a stream that drained after missing updates. */
    private readonly snapshot: () => Promise<Snapshot>,
  ) {}

  get transport(): 'sse' {
    return 'sse'
  }

  get encoding(): 'json' {
    return 'json'
  }

  subscriptions(): string[] {
    return [this.jobId]
  }

  watches(jobId: string): boolean {
    return jobId === this.jobId
  }

  /** Either way the stream ends. After `unavailable` EventSource reconnects by itself (the
   * stream's `retry:`), and the new stream is checked and sent the job's state afresh. */
  revoke(_jobId?: string, reason: 'forbidden' | 'unavailable' = 'forbidden'): void {
    if (this.ended) return
    const error = reason === 'forbidden'
      ? { type: 'error', code: ErrorCode.Forbidden, message: FORBIDDEN_MESSAGE, job_id: this.jobId, retry_ms: FORBIDDEN_RETRY_MS }
      : { type: 'error', code: ErrorCode.Unavailable, message: "the job's owner cannot be read right now; reconnect shortly", job_id: this.jobId, retry_after_ms: SSE_RETRY_MS }
    this.write(sseEvent('jobwire_error', JSON.stringify(error), undefined))
    this.end()
  }

  /** HOT PATH (per SSE stream): the event text is shared by every stream of the job. */
  send(event: string): void {
    if (this.ended || this.congestedSince !== 0) return
    this.write(event)
  }

  resync(event: string): void {
    this.send(event)
  }

  status(data: JobPayload | null, reason: StatusReason, stalled = false): void {
    this.write(sseEvent('job_status', JSON.stringify(statusMessage(this.jobId, data, reason, stalled ? { stalled } : undefined)), typeof data?.seq === 'number' ? data.seq : undefined))
  }

  heartbeat(now: number): void {
    if (this.ended) return
    if (this.congestedSince !== 0 && now - this.congestedSince > MAX_CONGESTED_MS) {
      this.metrics.slowConsumerCloses++
      return this.end()
    }
    if (this.congestedSince === 0) this.res.cork(() => this.res.write(': ping\n\n'))
  }

  expire(): void {
    if (this.ended) return
    // Not `event: error`: EventSource reports its own connection failures as 'error' events.
    this.write(sseEvent('jobwire_error', JSON.stringify(TOKEN_EXPIRED_MESSAGE), undefined))
    this.end()
  }

  disconnect(): void {
    this.end()
  }

  shutdown(): void {
    this.end()
  }

  /** The client went away: the response must not be touched again. */
  gone(): void {
    if (this.ended) return
    this.ended = true
    this.onEnd()
  }

  end(): void {
    if (this.ended) return
    this.ended = true
    this.res.cork(() => this.res.end())
    this.onEnd()
  }

  private write(text: string): void {
    if (this.ended) return
    let ok = true
    this.res.cork(() => {
      ok = this.res.write(text)
    })
    this.metrics.framesOut++
    this.metrics.bytesOut += Buffer.byteLength(text)
    if (!ok && this.congestedSince === 0) {
      this.congestedSince = Date.now()
      this.metrics.slowConsumersParked++
      this.res.onWritable(() => {
        // Drained: skip what was missed, send where the job is now (read afresh: the stored
        // state, or what the channel delivered since).
        this.snapshot().then(
          (s) => {
            if (this.ended) return
            this.congestedSince = 0
            this.metrics.slowConsumersCaughtUp++
            this.metrics.catchUpStatuses++
            this.status(s.data, 'caught_up', s.stalled === true)
          },
          () => this.end(), // the client reconnects and gets its snapshot then
        )
        return true
      })
    }
  }
}
