// How many connections this process can hold: one file descriptor each, under RLIMIT_NOFILE.
// At the limit, uWS's accept() fails with EMFILE and is retried at once, for ever: the main
// thread spins on it and nothing (health checks included) is answered. So the gateway stops
// admitting connections a margin below the limit, answering 503 while it still can, and keeps
// that margin for Redis, HTTP requests and its own files.

import { readFileSync } from 'node:fs'

/** The soft RLIMIT_NOFILE of this process, or null where /proc does not say (not Linux). */
export function openFilesLimit(limitsText?: string): number | null {
  let text = limitsText
  if (text === undefined) {
    try {
      text = readFileSync('/proc/self/limits', 'utf8')
    } catch {
      return null
    }
  }
  const line = /^Max open files\s+(\S+)\s+(\S+)/m.exec(text)
  if (line === null || line[1] === 'unlimited') return null
  const soft = Number(line[1])
  return Number.isSafeInteger(soft) && soft > 0 ? soft : null
}

/** Descriptors kept free for everything that is not a client connection. */
export function fileHeadroom(limit: number): number {
  return Math.max(64, Math.min(1024, Math.ceil(limit / 20)))
}

/** The connections one process may hold under `limit` open files (at least 1). */
export function connectionsUnder(limit: number): number {
  return Math.max(1, limit - fileHeadroom(limit))
}
