// Redis connections outside the broker's command connection: their roles, the "is it still
// the same server?" check, and closing. Sources open theirs on first use, so a gateway whose
// users never watch a Celery or BullMQ job opens none. Every role is one connection per
// Redis and per process, whatever the number of jobs, queues or users (docs/deploy.md).

import { Redis, type RedisOptions } from 'ioredis'
import { backoff } from '../support/backoff.js'
import type { Logger } from '../support/log.js'
import { rateLimitedLog } from '../support/log.js'

const RETRY_MIN_MS = 50
const RETRY_MAX_MS = 2000

export type ConnectionRole = 'commands' | 'subscriber' | 'stream'

/** `commands` queue while the connection is away and give up after two reconnects (callers have
 * deadlines). `subscriber` and `stream` refuse commands while away and fail them when the
 * connection drops: their owners replay what they need on 'ready', and know when it is live. */
export function sourceConnection(url: string, name: string, role: ConnectionRole, log: Logger): Redis {
  const options: RedisOptions = {
    lazyConnect: true,
    // Jittered, floored: a fleet of gateways comes back out of step, and never in a tight loop.
    retryStrategy: (times) => RETRY_MIN_MS + backoff(times - 1, RETRY_MIN_MS, RETRY_MAX_MS),
    connectionName: `jobwire-${name}-${process.pid}`,
    ...(role === 'commands'
      ? { maxRetriesPerRequest: 2 }
      : { maxRetriesPerRequest: 0, enableOfflineQueue: false, autoResubscribe: false }),
  }
  const conn = new Redis(url, options)
  const warn = rateLimitedLog(log, 5, 30_000)
  conn.on('error', (err: Error) => warn({ connection: name, err: err.message }, 'source redis connection error'))
  conn.connect().catch(() => {
    // Reported by the 'error' handler; the retry strategy keeps trying.
  })
  return conn
}

/** Tells whether the Redis behind a connection is still the server process it was: a new
 * run_id is a restart (empty, unless it loaded a dump) or a failover. */
export class ServerIdentity {
  private runId: string | null = null

  /** True when the server is another process than the one last seen. */
  async changed(conn: Redis): Promise<boolean> {
    const runId = /^run_id:(\w+)/m.exec(await conn.info('server'))?.[1] ?? null
    if (runId === null) return false
    const changed = this.runId !== null && runId !== this.runId
    this.runId = runId
    return changed
  }
}

/** Resolves when the connection is ready, or rejects once `stopped()` says so. */
export function whenReady(conn: Redis, stopped: () => boolean): Promise<void> {
  if (conn.status === 'ready') return Promise.resolve()
  return new Promise((resolve, reject) => {
    const onReady = () => {
      cleanup()
      resolve()
    }
    const onEnd = () => {
      if (!stopped()) return
      cleanup()
      reject(new Error('source closed'))
    }
    const cleanup = () => {
      conn.off('ready', onReady)
      conn.off('end', onEnd)
      conn.off('close', onEnd)
    }
    conn.on('ready', onReady)
    conn.on('end', onEnd)
    conn.on('close', onEnd)
  })
}

/** Closes a connection: politely when it is up, else at once. */
export async function closeConnection(conn: Redis): Promise<void> {
  if (conn.status === 'ready') {
    try {
      await conn.quit()
      return
    } catch {
      // fall through to a hard disconnect
    }
  }
  conn.disconnect()
}

/** Redis refused a command for the type of the key it names (a key some other writer holds as
 * a string, a list...): a fact about that one key, not about the connection. */
export function isWrongType(err: unknown): boolean {
  return err instanceof Error && err.message.startsWith('WRONGTYPE')
}
