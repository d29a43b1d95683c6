// The open sockets of this process: all of them (for shutdown), by user (for the admin
// endpoints and per-user disconnects), and by the second their token expires (so expiry is
// one bucket lookup per second instead of a timer per socket).

import type { JobSocket, SocketData } from '../ws/behavior.js'

export interface ConnectionInfo {
  readonly id: number
  readonly transport: 'websocket' | 'sse'
  readonly user: string | null
  readonly ip: string
  readonly encoding: string
  readonly connectedAt: string
  readonly subscriptions: string[]
}

export class Connections {
  readonly all = new Set<JobSocket>()
  private readonly byUser = new Map<string, Set<JobSocket>>()
  private readonly expiring = new Map<number, Set<JobSocket>>()

  add(ws: JobSocket, data: SocketData): void {
    this.all.add(ws)
    if (data.userId !== null) setOf(this.byUser, data.userId).add(ws)
    const expires = data.principal?.expiresAt
    if (expires != null) setOf(this.expiring, Math.ceil(expires / 1000)).add(ws)
  }

  remove(ws: JobSocket, data: SocketData): void {
    this.all.delete(ws)
    if (data.userId !== null) removeFrom(this.byUser, data.userId, ws)
    const expires = data.principal?.expiresAt
    if (expires != null) removeFrom(this.expiring, Math.ceil(expires / 1000), ws)
  }

  get size(): number {
    return this.all.size
  }

  ofUser(userId: string): JobSocket[] {
    return [...(this.byUser.get(userId) ?? [])]
  }

  /** Sockets whose token has expired by `nowMs`; they leave the expiry index. */
  takeExpired(nowMs: number): JobSocket[] {
    const due: JobSocket[] = []
    const now = Math.floor(nowMs / 1000)
    for (const [second, sockets] of this.expiring) {
      if (second > now) continue
      due.push(...sockets)
      this.expiring.delete(second)
    }
    return due
  }

  list(userId?: string, limit = 10_000): ConnectionInfo[] {
    const sockets = userId === undefined ? this.all : this.byUser.get(userId) ?? new Set<JobSocket>()
    const out: ConnectionInfo[] = []
    for (const ws of sockets) {
      if (out.length >= limit) break
      const d = ws.getUserData()
      out.push({
        id: d.id,
        transport: 'websocket',
        user: d.userId,
        ip: d.ip,
        encoding: d.encoding,
        connectedAt: new Date(d.connectedAt).toISOString(),
        subscriptions: [...d.jobs.entries()].filter(([, state]) => state === 'subscribed').map(([job]) => job),
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
