// Shutdown is bounded whatever is stuck: here stdout is a pipe whose reader is alive but never
// reads (a stuck log shipper), filled by trace-level logging, with and without workers.

import t from 'tap'
import { spawn, execFileSync } from 'node:child_process'
import { CLI } from './fixtures/process.js'
import { freePort } from './fixtures/ports.js'
import { connect } from './fixtures/ws-client.js'
import { startRedis } from './fixtures/redis.js'
import { until } from './fixtures/until.js'

/** A command's output, or '' when it fails (pgrep finds nothing; ps asked about a pid that
 * is gone): while the shell is still starting the gateway, both are expected. */
const output = (command: string, args: string[]) => {
  try {
    return execFileSync(command, args, { encoding: 'utf8' }).trim()
  } catch {
    return ''
  }
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

for (const workers of [1, 2]) {
  t.test(`SIGTERM ends the node within --shutdown-timeout-ms with stdout stalled (${workers} worker${workers > 1 ? 's' : ''})`, async (t) => {
    const port = await freePort()
    const extra: string[] = []
    if (workers > 1) {
      const redis = await startRedis()
      t.teardown(() => redis.stop())
      extra.push('--workers', String(workers), '--redis', redis.url)
    }
    // The reader stops itself before reading anything: the pipe fills and stays full.
    const shell = spawn('bash', ['-c', `node ${CLI} serve --port ${port} --open --log-level trace --log-buffer-bytes 16384 --drain-ms 0 --shutdown-timeout-ms 3000 --connect-rate-per-ip 0 --max-connections-per-ip 0 ${extra.join(' ')} 2>&1 | { kill -STOP $BASHPID; cat >/dev/null; }`],
      // A clean environment: tap's loaders and coverage hook the child's exit, which is what is
      // under test here.
      { stdio: 'ignore', detached: true, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/root' } })
    t.teardown(() => {
      try {
        process.kill(-shell.pid!, 'SIGKILL')
      } catch {
        // already gone
      }
    })
    let gatewayPid = 0
    await until(() => {
      const out = output('pgrep', ['-f', `${CLI} serve --port ${port}`]).split('\n').filter(Boolean).map(Number)
      // With workers, the primary is the one whose parent is the shell.
      gatewayPid = out.find((pid) => output('ps', ['-o', 'ppid=', String(pid)]) === String(shell.pid)) ?? 0
      return gatewayPid > 0
    }, 'the gateway process', 15_000, 50)
    await until(async () => (await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => null))?.status === 200, 'readiness', 15_000, 50)
    // Fill the pipe (64 KiB) and the 16 KiB log buffer with trace lines: each close logs.
    for (let round = 0; round < 10; round++) {
      const sockets = await Promise.all(Array.from({ length: 100 }, () => connect(`ws://127.0.0.1:${port}/ws/jobs`)))
      await Promise.all(sockets.map((s) => s.close()))
    }
    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()
    t.match(metrics, /^jobwire_log_lines_dropped_total [1-9]\d*$/m, 'lines were dropped and counted, not waited for')
    const started = Date.now()
    process.kill(gatewayPid, 'SIGTERM')
    await until(() => !alive(gatewayPid), 'the gateway to exit', 10_000, 50)
    const took = Date.now() - started
    t.ok(took <= 3000, `exited in ${took} ms (bound 3000 ms)`)
  })
}
