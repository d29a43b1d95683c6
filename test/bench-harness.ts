// `make bench` at tiny size, so the harness cannot rot: every scenario kind runs against
// jobwire and the baseline, and the results account for every frame. No figure is asserted
// beyond "nothing was lost": performance is shown by make bench, not by unit tests.

import t from 'tap'
import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync, existsSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { projectPath } from '../src/support/paths.js'
import type { BenchResults } from '../bench/run.js'

const run = promisify(execFile)

t.test('bench harness at tiny size', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'jobwire-bench-'))
  t.teardown(() => rmSync(out, { recursive: true, force: true }))
  const { stdout } = await run('node', [projectPath('dist', 'bench', 'run.js'), '--size', 'tiny', '--out', out], { timeout: 110_000 })
  t.match(stdout, /scenario\s+target\s+sockets/)
  t.match(stdout, /jobwire vs baseline/)
  for (const f of ['latest-tiny.json', 'latest-tiny.md', 'latest-tiny.svg']) t.ok(existsSync(join(out, f)), f)
  const results = JSON.parse(readFileSync(join(out, 'latest-tiny.json'), 'utf8')) as BenchResults
  const targets = new Set(results.scenarios.map((s) => s.result.target.name))
  t.ok(targets.has('jobwire') && targets.has('baseline (ws)'), 'both gateways measured')
  for (const s of results.scenarios) {
    if (s.kind === 'stream') {
      t.equal(s.result.window.lost, 0, `${s.result.scenario.id} ${s.result.target.name}: nothing lost`)
      t.equal(s.result.window.delivered, s.result.window.expected)
      t.ok(s.result.window.latencyMs.samples > 0, 'probes recorded latency')
    } else if (s.kind === 'sweep') {
      t.ok(s.result.steps.length > 0, `${s.result.scenario.id} ${s.result.target.name}: sweep ran`)
    } else {
      t.equal(s.result.failed, 0, `${s.result.target.name}: every idle socket connected`)
    }
  }
  t.ok(results.polling && results.polling.pushFrameBytes > 0 && results.polling.pollResponseBytes > 0, 'polling comparison measured')
  t.match(readFileSync(join(out, 'latest-tiny.svg'), 'utf8'), /^<svg/)
})
