// Publisher process: reports progress for a set of jobs at a fixed rate, through Redis exactly
// as a producer would (jobwire's producer script, or a plain PUBLISH), stamping each payload
// with the CLOCK_MONOTONIC time it was sent as its last field `t` (microseconds).

import { Redis } from 'ioredis'
import { defineProgressScript, runProgressScript } from '../src/producer/script.js'
import { channelFor } from '../src/topics.js'
import { monotonicMicros } from './clock.js'

export interface PublishRun {
  cmd: 'run'
  redisUrl: string
  jobs: string[]
  ratePerSec: number
  durationMs: number
  via: 'script' | 'publish'
}

export interface PublishResult {
  type: 'done'
  sent: number
  failed: number
  perJob: Record<string, number>
  cpuMicros: number
  /** How far behind schedule the last message went out, in ms (a saturated publisher shows here). */
  lagMs: number
  elapsedMs: number
}

const names = { channelPrefix: 'progress:', keyPrefix: 'jobwire:', stateTtlSec: 600, terminalTtlSec: 60 }

async function run(command: PublishRun): Promise<PublishResult> {
  const redis = new Redis(command.redisUrl, { enableAutoPipelining: true, maxRetriesPerRequest: 1 })
  defineProgressScript(redis)
  const cpuStart = process.cpuUsage()
  const total = Math.round((command.ratePerSec * command.durationMs) / 1000)
  const perJob: Record<string, number> = {}
  for (const job of command.jobs) perJob[job] = 0
  let sent = 0
  let failed = 0
  let lagMs = 0
  const pending: Promise<unknown>[] = []
  const start = performance.now()

  await new Promise<void>((resolve) => {
    const tick = () => {
      const elapsed = performance.now() - start
      const due = Math.min(total, Math.floor((elapsed * command.ratePerSec) / 1000))
      while (sent < due) {
        const job = command.jobs[sent % command.jobs.length]!
        const progress = (sent % 100) + 0.5
        const payload = `{"status":"processing","progress":${progress},"message":"transcoding","t":${monotonicMicros()}}`
        const p = command.via === 'script'
          ? runProgressScript(redis, names, job, Buffer.from(payload))
          : redis.publish(channelFor(names.channelPrefix, job), payload)
        perJob[job]!++
        sent++
        pending.push(p.catch(() => {
          failed++
          perJob[job]!--
        }))
      }
      if (sent >= total) {
        lagMs = performance.now() - start - command.durationMs
        return resolve()
      }
      setTimeout(tick, 1)
    }
    tick()
  })
  await Promise.all(pending)
  const cpu = process.cpuUsage(cpuStart)
  redis.disconnect()
  return { type: 'done', sent: sent - failed, failed, perJob, cpuMicros: cpu.user + cpu.system, lagMs: Math.max(0, lagMs), elapsedMs: performance.now() - start }
}

process.on('message', (command: PublishRun) => {
  if (command.cmd === 'run') void run(command).then((result) => process.send!(result))
})
process.on('disconnect', () => process.exit(0))
