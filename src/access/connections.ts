// Every open connection of this process, WebSocket and SSE alike, with ids from one counter:
// all of them (for shutdown and the catch-up pass), and by the second their token expires
// (so expiry is a heap lookup per second instead of a timer per connection).
//
// Per connection this costs one Set entry and, with a token, one slot of the expiry heap:
// a Set per user and per expiry second cost ~200 bytes each a connection when most users and
// seconds have one (bench/heap.ts). The per-user views (the admin endpoints, a user's
// disconnect) scan the open connections instead: they are rare and O(connections).

import type { Encoding } from '../wire/protocol.js'
import type { Principal } from './auth.js'

export type ConnectionTransport = 'websocket' | 'sse'

/** What the registry needs of a connection; each transport implements it. */
export interface Connection {
  readonly id: number
  readonly transport: ConnectionTransport
  readonly principal: Principal | null
  readonly ip: string
  readonly encoding: Encoding
  readonly connectedAt: number
  /** Job ids it receives. */
  subscriptions(): string[]
  /** Whether it receives the job (or is about to). */
  watches(jobId: string): boolean
  /** It may no longer see the job: stop sending it, and say so (`forbidden`). With
   * `unavailable`: whether it may see the job cannot be decided now (its owner could not be
   * read); stop sending it and say so with a retry_after_ms, so the client watches again. */
  revoke(jobId: string, reason?: 'forbidden' | 'unavailable'): void
  /** Its token expired: tell the client why, then close. */
  expire(): void
  /** An administrator disconnected its user. */
  disconnect(): void
  /** The gateway is stopping: the client should reconnect elsewhere. */
  shutdown(): void
}

export interface ConnectionInfo {
  readonly id: number
  readonly transport: ConnectionTransport
  readonly user: string | null
  readonly ip: string
  readonly encoding: string
  readonly connectedAt: string
  readonly subscriptions: string[]
}

/** The expiry heap is rebuilt once it holds this many closed connections and they are half of
 * it: each rebuild is paid for by as many removals. */
const MIN_STALE_TO_COMPACT = 1024

export class Connections {
  private lastId = 0
  private readonly open = new Set<Connection>()
  /** Connections with a token, as a binary min-heap by the second it expires (dueSecond).
   * A closed connection is not searched for: it is skipped when it comes out, and the heap is
   * rebuilt when such leftovers pass half of it. */
  private expiring: Connection[] = []
  private stale = 0
  /** Every connection due at or before this second has been taken from the heap. */
  private takenThrough = -Infinity

  /** The next connection id, unique across transports. */
  nextId(): number {
    return ++this.lastId
  }

  add(connection: Connection): void {
    this.open.add(connection)
    if (dueSecond(connection) !== null) this.push(connection)
  }

  remove(connection: Connection): void {
    if (!this.open.delete(connection)) return
    const due = dueSecond(connection)
    if (due === null || due <= this.takenThrough) return
    if (++this.stale >= MIN_STALE_TO_COMPACT && this.stale * 2 > this.expiring.length) this.compact()
  }

  get size(): number {
    return this.open.size
  }

  all(): Connection[] {
    return [...this.open]
  }

  /** The open connections, live: ones added while iterating are visited, removed ones not. */
  values(): IterableIterator<Connection> {
    return this.open.values()
  }

  ofUser(userId: string): Connection[] {
    const out: Connection[] = []
    for (const c of this.open) if (c.principal?.userId === userId) out.push(c)
    return out
  }

  /** Connections whose token has expired by `nowMs`; they leave the expiry index. */
  takeExpired(nowMs: number): Connection[] {
    const due: Connection[] = []
    const now = Math.floor(nowMs / 1000)
    const heap = this.expiring
    while (heap.length > 0 && dueSecond(heap[0]!)! <= now) {
      const c = this.pop()
      if (this.open.has(c)) due.push(c)
      else this.stale = Math.max(0, this.stale - 1)
    }
    this.takenThrough = Math.max(this.takenThrough, now)
    return due
  }

  list(userId?: string, limit = 10_000): ConnectionInfo[] {
    const out: ConnectionInfo[] = []
    for (const c of this.open) {
      if (out.length >= limit) break
      if (userId !== undefined && c.principal?.userId !== userId) continue
      out.push({
        id: c.id,
        transport: c.transport,
        user: c.principal?.userId ?? null,
        ip: c.ip,
        encoding: c.encoding,
        connectedAt: new Date(c.connectedAt).toISOString(),
        subscriptions: c.subscriptions(),
      })
    }
    return out
  }

  private push(c: Connection): void {
    const heap = this.expiring
    let i = heap.push(c) - 1
    const due = dueSecond(c)!
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (dueSecond(heap[parent]!)! <= due) break
      heap[i] = heap[parent]!
      i = parent
    }
    heap[i] = c
  }

  private pop(): Connection {
    const heap = this.expiring
    const top = heap[0]!
    const last = heap.pop()!
    if (heap.length > 0) {
      heap[0] = last
      this.siftDown(0)
    }
    return top
  }

  private siftDown(from: number): void {
    const heap = this.expiring
    const c = heap[from]!
    const due = dueSecond(c)!
    let i = from
    for (;;) {
      let child = 2 * i + 1
      if (child >= heap.length) break
      if (child + 1 < heap.length && dueSecond(heap[child + 1]!)! < dueSecond(heap[child]!)!) child++
      if (dueSecond(heap[child]!)! >= due) break
      heap[i] = heap[child]!
      i = child
    }
    heap[i] = c
  }

  private compact(): void {
    this.expiring = this.expiring.filter((c) => this.open.has(c))
    for (let i = (this.expiring.length >> 1) - 1; i >= 0; i--) this.siftDown(i)
    this.stale = 0
  }
}

/** The second a connection is told its token expired: the first whole second after it. */
function dueSecond(c: Connection): number | null {
  const expires = c.principal?.expiresAt
  return expires == null ? null : Math.ceil(expires / 1000)
}
