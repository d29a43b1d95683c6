// Slow readers are caught up, not cut. For progress only the latest state matters, so a
// socket whose unsent bytes pass --catch-up-bytes is parked: taken off its jobs' uWS topics
// (it stops costing memory), its jobs held. Once it has drained below a quarter of that, each
// parked job is sent its current state as a job_status and the socket rejoins the topic in the
// same synchronous step (the watch flow), so nothing is lost and terminal states are never
// skipped. Only a socket past the hard cap (--max-backpressure-bytes, uWS closes it) or that
// takes nothing for --idle-timeout is closed.
//
// uWS has no per-socket signal for "this socket is falling behind" (no dropped handler in
// 20.30), so sockets are sampled: a round-robin pass over the open sockets every PASS_MS,
// skipped entirely while nothing was sent, and parked sockets every tick.

import type { Connection, Connections } from '../access/connections.js'
import type { Watches } from '../stream/watch.js'
import type { WatchedJobs } from '../stream/watched-jobs.js'
import type { Metrics } from '../support/metrics.js'
import { SocketConnection } from './connection.js'

const TICK_MS = 50
/** A full pass over the open sockets takes at most this long while frames flow. */
const PASS_MS = 250

export class CatchUp {
  /** The pass under way, a live iterator over the registry: a pass copies nothing (a copy of
   * every connection four times a second is garbage that outlives young-generation GCs, and
   * what outlives them grows V8's young generation). */
  private pass: Iterator<Connection> | null = null
  private lastFramesOut = -1
  private readonly parked = new Set<SocketConnection>()
  private readonly timer: NodeJS.Timeout

  constructor(
    private readonly connections: Connections,
    private readonly watched: WatchedJobs,
    private readonly watches: Watches,
    private readonly metrics: Metrics,
    private readonly thresholdBytes: number,
  ) {
    this.timer = setInterval(() => this.tick(), TICK_MS)
    this.timer.unref()
  }

  stop(): void {
    clearInterval(this.timer)
  }

  /** A parked socket closed, or left a parked job: its holds go. */
  release(conn: SocketConnection, jobId?: string): void {
    for (const id of jobId === undefined ? [...(conn.held ?? [])] : [jobId]) {
      if (!conn.held?.delete(id)) continue
      const job = this.watched.get(id)
      if (job !== undefined) this.watched.release(job)
    }
    if (jobId === undefined || conn.held?.size === 0) {
      conn.held = null
      this.parked.delete(conn)
    }
  }

  private tick(): void {
    for (const conn of this.parked) this.check(conn)
    if (this.pass === null) {
      // Nothing sent since the last pass: no socket can have fallen further behind.
      if (this.metrics.framesOut === this.lastFramesOut) return
      this.lastFramesOut = this.metrics.framesOut
      this.pass = this.connections.values()
    }
    const chunk = Math.max(64, Math.ceil((this.connections.size * TICK_MS) / PASS_MS))
    for (let i = 0; i < chunk; i++) {
      const next = this.pass.next()
      if (next.done === true) {
        this.pass = null
        return
      }
      if (next.value instanceof SocketConnection) this.check(next.value)
    }
  }

  private check(conn: SocketConnection): void {
    const ws = conn.ws
    if (conn.closed || ws === null) return
    const buffered = ws.getBufferedAmount()
    if (conn.held === null && buffered > this.thresholdBytes) this.park(conn)
    else if (conn.held !== null && !conn.catchingUp && buffered < this.thresholdBytes / 4) void this.catchUp(conn)
  }

  private park(conn: SocketConnection): void {
    const ws = conn.ws!
    conn.held = new Set()
    for (const [jobId, state] of conn.jobs) {
      if (state !== 'subscribed') continue
      conn.jobs.set(jobId, 'parked')
      this.watched.acquire(jobId)
      conn.held.add(jobId)
      ws.unsubscribe(conn.topicOf(jobId))
    }
    this.parked.add(conn)
    this.metrics.slowConsumersParked++
  }

  private async catchUp(conn: SocketConnection): Promise<void> {
    conn.catchingUp = true
    // Jobs revoked or unsubscribed while parked give their holds back now.
    for (const jobId of [...(conn.held ?? [])]) if (conn.jobs.get(jobId) !== 'parked') this.release(conn, jobId)
    const jobs = [...conn.jobs].filter(([, state]) => state === 'parked').map(([jobId]) => jobId)
    await Promise.all(jobs.map(async (jobId) => {
      const result = await this.watches.open(conn.principal, jobId, 'websocket', (_job, snapshot) => {
        if (!conn.join(jobId, snapshot.data, 'parked')) return false
        this.metrics.catchUpStatuses++
        return true
      })
      // Forbidden now (the owner changed) or unavailable: the job is dropped for this socket,
      // which is told why (a client retries an unavailable job).
      if (conn.jobs.get(jobId) === 'parked') {
        conn.jobs.delete(jobId)
        this.metrics.subscriptions--
        if (!result.ok) conn.refuse(result.refusal, jobId)
      }
      this.release(conn, jobId)
    }))
    conn.catchingUp = false
    if (conn.held === null) this.metrics.slowConsumersCaughtUp++
  }
}
