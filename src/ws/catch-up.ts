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
//
// A timed pass alone is a race: a burst can carry a socket's queue from under --catch-up-bytes
// past the hard cap between two samples (the event loop may not even reach the timer between
// the frames of one burst), and uWS then cuts it with 1006 instead of us parking it. So the
// sampling is also driven by bytes: a socket's queue grows by at most the size of the frames
// published to topics it is in, hence by at most the bytes published on this node since it was
// last checked. Fanout counts those bytes (PublishedBytes, one add per publish) and, past a
// budget of a quarter of the room between --catch-up-bytes and the hard cap, the sockets of the
// jobs published to since the last such check are checked at once. Every socket that received
// anything is then checked at least once per budget, so a queue that was under the threshold
// at its last check holds less than threshold + a few budgets (the bytes of a check that ran
// before uWS wrote the frames queued in this turn, and those forgotten when a timed pass
// completes) when the next check comes: still under the cap, however fast the stream.
// The work is bounded: the check touches only the sockets of jobs that were published to
// (never all sockets), at most once per budget of bytes (960 KiB by default), which is far
// less than the copies uWS made into those sockets' queues meanwhile. For common frames (far
// below the budget) the hot path pays an addition, a comparison and, when the job differs from
// the previous publish's, one array push; nothing is allocated per publish.

import type { Connection, Connections } from '../access/connections.js'
import type { Watches } from '../stream/watch.js'
import type { WatchedJob, WatchedJobs } from '../stream/watched-jobs.js'
import type { Metrics } from '../support/metrics.js'
import { SocketConnection } from './connection.js'

const TICK_MS = 50
/** A full pass over the open sockets takes at most this long while frames flow. */
const PASS_MS = 250

/** HOT PATH (fanout.ts): the bytes published since the sockets that received them were last
 * checked, and the jobs they went to. A job published many times in a row is listed once. */
export class PublishedBytes {
  private bytes = 0
  private last: WatchedJob | null = null
  private readonly jobs: WatchedJob[] = []

  constructor(private readonly budget: number, private readonly onBudget: (jobs: readonly WatchedJob[]) => void) {}

  /** A frame of `bytes` went to one of the job's topics (each subscriber's queue grows by it). */
  add(job: WatchedJob, bytes: number): void {
    if (job !== this.last) {
      this.last = job
      this.jobs.push(job)
    }
    if ((this.bytes += bytes) < this.budget) return
    // Reset first: checking may park sockets, and parking publishes nothing, but a re-entrant
    // add must not see the old count.
    const jobs = this.jobs.splice(0)
    this.reset()
    this.onBudget(jobs)
  }

  /** A timed pass looked at every socket: what was counted before it is covered. */
  reset(): void {
    this.bytes = 0
    this.last = null
    this.jobs.length = 0
  }
}

export class CatchUp {
  /** The pass under way, a live iterator over the registry: a pass copies nothing (a copy of
   * every connection four times a second is garbage that outlives young-generation GCs, and
   * what outlives them grows V8's young generation). */
  private pass: Iterator<Connection> | null = null
  private lastFramesOut = -1
  private readonly parked = new Set<SocketConnection>()
  private readonly timer: NodeJS.Timeout
  /** The sockets subscribed to each watched job's topics, for the byte-driven check: kept by
   * uWS's subscription handler (joined/left) and the close handler, and weakly, so a job
   * dropped by WatchedJobs takes its set with it. One entry per subscription. */
  private readonly sockets = new WeakMap<WatchedJob, Set<SocketConnection>>()
  /** What Fanout tells us of each publish; null when parking cannot beat the hard cap
   * (--catch-up-bytes at or above it). */
  readonly published: PublishedBytes | null

  constructor(
    private readonly connections: Connections,
    private readonly watched: WatchedJobs,
    private readonly watches: Watches,
    private readonly metrics: Metrics,
    private readonly thresholdBytes: number,
    hardCapBytes: number,
  ) {
    this.timer = setInterval(() => this.tick(), TICK_MS)
    this.timer.unref()
    const room = hardCapBytes - thresholdBytes
    this.published = room > 0 ? new PublishedBytes(Math.max(1, Math.floor(room / 4)), (jobs) => this.checkJobs(jobs)) : null
  }

  /** A socket joined one of the job's topics. */
  joined(job: WatchedJob, conn: SocketConnection): void {
    let set = this.sockets.get(job)
    if (set === undefined) this.sockets.set(job, (set = new Set()))
    set.add(conn)
  }

  /** A socket left one of the job's topics: it stays listed while it is still subscribed (a
   * rate change joins the new topic before leaving the old one). */
  left(job: WatchedJob, conn: SocketConnection): void {
    if (conn.closed || conn.jobs.get(job.id) !== 'subscribed') this.sockets.get(job)?.delete(conn)
  }

  /** A socket closed: uWS's leave events came while it still looked subscribed. */
  closed(conn: SocketConnection): void {
    for (const [jobId] of conn.jobs) {
      const job = this.watched.get(jobId)
      if (job !== undefined) this.sockets.get(job)?.delete(conn)
    }
  }

  /** The budget of bytes was spent: check every socket that may have received them. */
  private checkJobs(jobs: readonly WatchedJob[]): void {
    for (const job of jobs) {
      const set = this.sockets.get(job)
      if (set === undefined) continue
      for (const conn of set) {
        if (conn.closed || conn.jobs.get(job.id) !== 'subscribed') set.delete(conn)
        else this.check(conn)
      }
    }
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
        this.published?.reset()
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
        if (!conn.join(jobId, snapshot, 'parked')) return false
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
