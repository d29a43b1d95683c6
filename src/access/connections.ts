// Every open connection of this process, WebSocket and SSE alike, with ids from one counter:
// all of them (for shutdown), by user (for the admin endpoints and per-user disconnects), and
// by the second their token expires (so expiry is one bucket lookup per second instead of a
// timer per connection).

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
  /** It may no longer see the job: stop sending it, and say so (forbidden). */
  revoke(jobId: string): void
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

export class Connections {
  private lastId = 0
  private readonly open = new Set<Connection>()
  private readonly byUser = new Map<string, Set<Connection>>()
  private readonly expiring = new Map<number, Set<Connection>>()

  /** The next connection id, unique across transports. */
  nextId(): number {
    return ++this.lastId
  }

  add(connection: Connection): void {
    this.open.add(connection)
    const userId = connection.principal?.userId
    if (userId !== undefined) setOf(this.byUser, userId).add(connection)
    const expires = connection.principal?.expiresAt
    if (expires != null) setOf(this.expiring, Math.ceil(expires / 1000)).add(connection)
  }

  remove(connection: Connection): void {
    if (!this.open.delete(connection)) return
    const userId = connection.principal?.userId
    if (userId !== undefined) removeFrom(this.byUser, userId, connection)
    const expires = connection.principal?.expiresAt
    if (expires != null) removeFrom(this.expiring, Math.ceil(expires / 1000), connection)
  }

  get size(): number {
    return this.open.size
  }

  all(): Connection[] {
    return [...this.open]
  }

  ofUser(userId: string): Connection[] {
    return [...(this.byUser.get(userId) ?? [])]
  }

  /** Connections whose token has expired by `nowMs`; they leave the expiry index. */
  takeExpired(nowMs: number): Connection[] {
    const due: Connection[] = []
    const now = Math.floor(nowMs / 1000)
    for (const [second, connections] of this.expiring) {
      if (second > now) continue
      due.push(...connections)
      this.expiring.delete(second)
    }
    return due
  }

  list(userId?: string, limit = 10_000): ConnectionInfo[] {
    const connections = userId === undefined ? this.open : this.byUser.get(userId) ?? new Set<Connection>()
    const out: ConnectionInfo[] = []
    for (const c of connections) {
      if (out.length >= limit) break
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
}

function setOf<K, V>(map: Map<K, Set<V>>, key: K): Set<V> {
  let set = map.get(key)
  if (set === undefined) {
    set = new Set()
    map.set(key, set)
  }
  return set
}

function removeFrom<K, V>(map: Map<K, Set<V>>, key: K, value: V): void {
  const set = map.get(key)
  if (set === undefined) return
  set.delete(value)
  if (set.size === 0) map.delete(key)
}
