// Structured logs (pino, JSON lines on stdout). Components take a child logger so every line
// says where it came from.

import { pino, type Logger } from 'pino'
import type { LogLevel } from './config.js'

export type { Logger }

export function createLogger(level: LogLevel, bindings: Record<string, unknown> = {}): Logger {
  return pino({ level, base: { pid: process.pid, ...bindings } })
}

/** Logs at most `perInterval` lines per interval for a noisy condition (a producer flooding
 * malformed payloads must not flood the log too); the rest are counted and summarised. */
export function rateLimitedLog(log: Logger, perInterval = 10, intervalMs = 10_000) {
  let windowStart = 0
  let logged = 0
  let suppressed = 0
  return (fields: Record<string, unknown>, msg: string): void => {
    const now = Date.now()
    if (now - windowStart >= intervalMs) {
      if (suppressed > 0) log.warn({ suppressed }, `${suppressed} similar log lines suppressed`)
      windowStart = now
      logged = 0
      suppressed = 0
    }
    if (logged < perInterval) {
      logged++
      log.warn(fields, msg)
    } else {
      suppressed++
    }
  }
}
