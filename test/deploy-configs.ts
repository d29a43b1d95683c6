// The deployment configs docs/deploy.md ships, as written: the systemd unit passes
// `systemd-analyze verify` (comments after values used to make systemd ignore TimeoutStopSec and
// LimitNOFILE), and --workers auto follows a container's CPU quota, not the host's cores.

import t from 'tap'
import { execFile } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { availableParallelism, tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { cpusAvailable } from '../src/support/config.js'
import { projectPath } from '../src/support/paths.js'

const run = promisify(execFile)

t.test('the systemd unit verifies', async (t) => {
  const doc = readFileSync(projectPath('docs', 'deploy.md'), 'utf8')
  const unit = /```ini\n(# \/etc\/systemd\/system\/jobwire\.service\n[\s\S]*?)```/.exec(doc)?.[1]
  if (unit === undefined) throw new Error('docs/deploy.md has no ```ini block with the unit')
  t.notMatch(unit, /^[A-Za-z]+=.*[ \t]#/m, 'no comment after a value')
  const dir = mkdtempSync(join(tmpdir(), 'jobwire-unit-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  // What the unit points at, so verify checks the unit and not this machine's setup.
  const exec = join(dir, 'jobwire')
  writeFileSync(exec, '#!/bin/sh\n', { mode: 0o755 })
  const env = join(dir, 'secrets')
  writeFileSync(env, 'JOBWIRE_JWT_SECRET=x\n')
  const localised = unit.replace('/usr/bin/jobwire', exec).replace('/etc/jobwire/secrets', env).replace(/^User=.*$/m, 'User=root')
  t.not(localised, unit, 'paths replaced')
  const file = join(dir, 'jobwire.service')
  writeFileSync(file, localised)
  const systemdAnalyze = ['/usr/bin/systemd-analyze', '/bin/systemd-analyze'].find((p) => existsSync(p))
  if (systemdAnalyze === undefined) return void t.fail('systemd-analyze is not installed (Debian: apt-get install systemd)')
  const result = await run(systemdAnalyze, ['verify', file]).then(() => ({ stderr: '', code: 0 }), (err: { stderr: string; code: number }) => err)
  // verify also reports on units this one names (network-online.target) when systemd is not
  // running (a container); only lines about this unit count.
  const ours = result.stderr.split('\n').filter((l) => l.includes('jobwire.service'))
  t.same(ours, [], `systemd-analyze verify: ${result.stderr.trim() || 'clean'}`)
})

t.test('--workers auto follows a cgroup CPU quota', async (t) => {
  const cores = availableParallelism()
  t.equal(cpusAvailable('max 100000\n'), cores, 'no quota: every core')
  t.equal(cpusAvailable('100000 100000\n'), 1, '--cpus 1')
  t.equal(cpusAvailable('150000 100000\n'), Math.min(cores, 2), '--cpus 1.5: rounded up')
  t.equal(cpusAvailable('50000 100000\n'), 1, 'never fewer than one')
  t.equal(cpusAvailable('6400000 100000\n'), cores, 'never more than the cores')
  t.equal(cpusAvailable(null), cores, 'no cgroup file')
  t.equal(cpusAvailable('garbage'), cores)
})
