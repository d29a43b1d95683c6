// Configuration that looks right but is not: environment variables nothing reads (a typo in
// REDIS_URL started an isolated node on the embedded broker without a word), options that
// contradict each other, Kubernetes' JOBWIRE_PORT=tcp://..., secrets from files, and secrets
// kept off the workers' command lines.

import t from 'tap'
import { readFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ConfigError, loadConfig, workerLaunch } from '../src/support/config.js'
import { serveProcess, reap } from './fixtures/process.js'
import { freePort } from './fixtures/ports.js'
import { startRedis } from './fixtures/redis.js'
import { until } from './fixtures/until.js'

const OPEN = { open: 'true' }

t.test('environment variables nothing reads are named, with the nearest one', async (t) => {
  const typo = loadConfig(OPEN, { REDIS_ULR: 'redis://10.0.0.5:6379' })
  t.equal(typo.redisUrl, '', 'still the embedded broker')
  t.equal(typo.warnings.length, 1)
  t.match(typo.warnings[0], /REDIS_ULR is not read.*did you mean REDIS_URL\?.*embedded in-process broker/)
  t.match(loadConfig(OPEN, { JOBWIRE_MAX_SUBSCRIPTION: '5' }).warnings, [/JOBWIRE_MAX_SUBSCRIPTION is not read by jobwire; did you mean JOBWIRE_MAX_SUBSCRIPTIONS\?/])
  t.match(loadConfig(OPEN, { JOBWIRE_WHATEVER_ELSE_ENTIRELY: '1' }).warnings, [/JOBWIRE_WHATEVER_ELSE_ENTIRELY is not read by jobwire$/])
  t.same(loadConfig(OPEN, { REDIS_URL: 'redis://127.0.0.1:6379', JOBWIRE_OPEN: '1', PATH: '/usr/bin', HOME: '/root' }).warnings, [], 'what is read is not warned about')
  t.same(loadConfig(OPEN, { REDIS_URL: 'redis://127.0.0.1:6379', REDIS_HOST: 'cache' }).warnings, [], "another program's REDIS_HOST beside a Redis in use")
  t.match(loadConfig(OPEN, { REDIS_HOST: 'cache' }).warnings, [/REDIS_HOST is not read.*embedded/], 'but said when the node runs alone')
  t.same(loadConfig(OPEN, {
    JOBWIRE_SERVICE_HOST: '10.0.0.9', JOBWIRE_SERVICE_PORT: '8080', JOBWIRE_PORT_8080_TCP: 'tcp://10.0.0.9:8080',
    JOBWIRE_PORT_8080_TCP_ADDR: '10.0.0.9', JOBWIRE_PORT_8080_TCP_PORT: '8080', JOBWIRE_PORT_8080_TCP_PROTO: 'tcp',
  }).warnings, [], "Kubernetes' service variables are not typos")
})

t.test("Kubernetes' JOBWIRE_PORT=tcp://... is ignored with a note, not fatal", async (t) => {
  const config = loadConfig(OPEN, { JOBWIRE_PORT: 'tcp://10.0.0.9:8080' })
  t.equal(config.port, 8080, 'the default port')
  t.match(config.notes, [/ignored JOBWIRE_PORT=tcp:\/\/10\.0\.0\.9:8080.*Kubernetes/])
  t.equal(loadConfig(OPEN, { JOBWIRE_PORT: 'tcp://10.0.0.9:8080', PORT: '9000' }).port, 9000, 'PORT still applies')
  t.throws(() => loadConfig(OPEN, { JOBWIRE_PORT: 'http://x' }), ConfigError, 'anything else is still refused')
})

t.test('options that contradict each other are refused', async (t) => {
  t.throws(() => loadConfig({ ...OPEN, 'catch-up-bytes': '8388608', 'max-backpressure-bytes': '4194304' }, {}), /--catch-up-bytes \(8388608\) must be below --max-backpressure-bytes \(4194304\)/)
  t.throws(() => loadConfig({ ...OPEN, 'catch-up-bytes': '4194304' }, {}), /must be below/, 'equal is no better')
  t.doesNotThrow(() => loadConfig({ ...OPEN, 'catch-up-bytes': '1048576' }, {}))
  t.equal(loadConfig({ ...OPEN, 'catch-up-bytes': '0', 'max-backpressure-bytes': '65536' }, {}).catchUpBytes, 0, '0: parking off, whatever the cap')
  t.throws(() => loadConfig({ ...OPEN, 'catch-up-bytes': '100' }, {}), /use 0 \(off\) or at least 1024 bytes/)
})

t.test('secrets from files', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'jobwire-secrets-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'jwt')
  writeFileSync(file, 'a-secret-of-at-least-32-characters-here\n')
  t.equal(loadConfig({ 'jwt-secret-file': file }, {}).jwtSecret, 'a-secret-of-at-least-32-characters-here', 'flag; the trailing newline dropped')
  t.equal(loadConfig({}, { JOBWIRE_JWT_SECRET_FILE: file }).jwtSecret, 'a-secret-of-at-least-32-characters-here', 'environment')
  writeFileSync(join(dir, 'producer'), 'producer-key-0123456789')
  t.equal(loadConfig({ ...OPEN, 'producer-key-file': join(dir, 'producer') }, {}).producerKey, 'producer-key-0123456789')
  t.throws(() => loadConfig({ 'jwt-secret-file': join(dir, 'missing') }, {}), /--jwt-secret-file: cannot read .*missing: ENOENT/)
  writeFileSync(join(dir, 'empty'), '\n')
  t.throws(() => loadConfig({ 'jwt-secret-file': join(dir, 'empty') }, {}), /is empty/)
  t.throws(() => loadConfig({ 'jwt-secret-file': file, 'jwt-secret': 'x'.repeat(32) }, {}), /both give jwt-secret: give one/)
  t.throws(() => loadConfig({ 'jwt-secret-file': file }, { JOBWIRE_JWT_SECRET_FILE: file }), /both give jwt-secret/)
  writeFileSync(join(dir, 'short'), 'short')
  t.throws(() => loadConfig({ ...OPEN, 'admin-key-file': join(dir, 'short') }, {}), /at least 16 characters/, 'the same rules as the flag')
})

t.test("workers get secrets in their environment, never on their command line", async (t) => {
  const config = loadConfig({ 'jwt-secret': 's'.repeat(40), 'producer-key': 'p'.repeat(20), redis: 'redis://127.0.0.1:1', port: '9' }, {})
  const launch = workerLaunch(['serve', '--jwt-secret', 's'.repeat(40), '--producer-key=' + 'p'.repeat(20), '--port', '9', '--admin-key-file', '/x'], config, { JOBWIRE_JWT_SECRET_FILE: '/y', KEEP: '1' })
  t.same(launch.argv, ['serve', '--port', '9'])
  t.equal(launch.env.JOBWIRE_JWT_SECRET, 's'.repeat(40))
  t.equal(launch.env.JOBWIRE_PRODUCER_KEY, 'p'.repeat(20))
  t.equal(launch.env.JOBWIRE_JWT_SECRET_FILE, undefined, 'the file variable is replaced by its value, so the two never conflict')
  t.equal(launch.env.KEEP, '1')
  t.notOk('JOBWIRE_ADMIN_KEY' in launch.env, 'no empty secret')

  // The real thing: a node with two workers, given its secret as a flag.
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const port = await freePort()
  const secret = 'flag-secret-' + 'z'.repeat(30)
  // A Redis URL carries its password: kept off the workers' command lines too.
  const redisWithPassword = redis.url.replace('redis://', 'redis://default:unused-password@')
  const served = serveProcess(['--port', String(port), '--workers', '2', '--redis', redisWithPassword, '--jwt-secret', secret], { JOBWIRE_OPEN: '' })
  t.teardown(() => reap(served))
  await until(() => served.lines.some((l) => /jobwire listening/.test(l)), 'the node listening', 20_000)
  const workers = (await import('node:child_process')).execFileSync('pgrep', ['-P', String(served.proc.pid)]).toString().trim().split('\n').map(Number)
  t.equal(workers.length, 2, 'two workers')
  for (const pid of workers) {
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')
    t.notOk(cmdline.some((a) => a.includes(secret) || a.includes('unused-password')), `worker ${pid}'s command line holds no secret: ${cmdline.slice(2).join(' ')}`)
  }
  const health = await fetch(`http://127.0.0.1:${port}/jobs/x`)
  t.equal(health.status, 401, 'and the workers still ask for a token signed with it')
})
