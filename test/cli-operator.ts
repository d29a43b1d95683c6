// The command line as an operator meets it: help on every command, in aligned columns;
// `jobwire token` minting what the gateway accepts; `--port 0` in every mode; readable logs
// (--log-format pretty); an unreachable Redis named with its cause, at startup and when it is
// lost; `jobwire publish` saying where it published, to the local gateway unless a Redis is
// named.

import t from 'tap'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { jwtVerify } from 'jose'
import { startGateway } from './fixtures/gateway.js'
import { freePort } from './fixtures/ports.js'
import { CLI, reap, serveProcess } from './fixtures/process.js'
import { startRedis } from './fixtures/redis.js'
import { SECRET } from './fixtures/tokens.js'

const exec = promisify(execFile)
// The CLI runs from dist/, which coverage excludes: tell tap's loader not to record it.
const ENV = { ...process.env, _TAPJS_PROCESSINFO_COVERAGE_: '0', REDIS_URL: '', JOBWIRE_GATEWAY: '', JOBWIRE_JWT_SECRET: '' }

async function jobwire(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await exec('node', [CLI, ...args], { env: { ...ENV, ...env }, timeout: 15_000 })
    return { code: 0, stdout, stderr }
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string }
    return { code: e.code, stdout: e.stdout, stderr: e.stderr }
  }
}

t.test('-h and --help on every command, in aligned columns', async (t) => {
  const asked = [['serve', '-h'], ['serve', '--help'], ['publish', '-h'], ['publish', '--help'], ['token', '-h'], ['help', 'token'], ['--help']]
  for (const [i, { code, stdout }] of (await Promise.all(asked.map((args) => jobwire(args)))).entries()) {
    t.equal(code, 0, asked[i]!.join(' '))
    t.match(stdout, /^(usage:|jobwire:)/, `${asked[i]!.join(' ')} prints usage`)
  }
  const { stdout } = await jobwire(['serve', '--help'])
  const optionLines = stdout.split('\n').filter((l) => /^ {2}--/.test(l))
  t.ok(optionLines.length > 30, 'every serve option is listed')
  const columns = new Set(optionLines.map((l) => /^ {2}--\S+(?: <value>)?\s+/.exec(l)![0].length))
  t.equal(columns.size, 1, 'the explanations all start in one column')
  t.ok(optionLines.every((l) => /^ {2}--\S+(?: <value>)? {2,}\S/.test(l)), 'at least two spaces between an option and its text')
  t.match(stdout, /--max-backpressure-bytes <value> {2,}hard cap/)
  t.ok(stdout.split('\n').every((l) => l.length <= 100), 'no line is wider than 100 columns')
  const unknown = await jobwire(['publish', 'x', '--bogus'])
  t.equal(unknown.code, 2)
  t.match(unknown.stderr, /see jobwire publish --help/)
})

t.test('jobwire token mints a token the gateway accepts', async (t) => {
  const minted = await jobwire(['token', '--sub', 'user-7', '--jobs', 'video-*', '--ttl', '1h', '--role', 'producer'], { JOBWIRE_JWT_SECRET: SECRET })
  t.equal(minted.code, 0, minted.stderr)
  t.match(minted.stdout, /^[\w-]+\.[\w-]+\.[\w-]+\n$/, 'prints only the token')
  const { payload, protectedHeader } = await jwtVerify(minted.stdout.trim(), new TextEncoder().encode(SECRET))
  t.equal(protectedHeader.alg, 'HS256')
  t.match(payload, { sub: 'user-7', jobs: ['video-*'], role: 'producer' })
  t.equal(payload.exp! - payload.iat!, 3600)

  const gw = await startGateway({ 'jwt-secret': SECRET })
  t.teardown(() => gw.stop())
  const viewerMinted = await jobwire(['token', '--sub', 'user-8', '--jobs', 'video-*,audio-1', '--ttl', '90s', '--jwt-secret', SECRET])
  t.equal(viewerMinted.code, 0, viewerMinted.stderr)
  const client = await gw.connectAs(viewerMinted.stdout.trim())
  t.match(await client.subscribe('video-42'), { type: 'job_status', job_id: 'video-42' }, 'the jobs claim lets it watch video-*')
  const posted = await fetch(`${gw.http}/jobs/video-42/progress`, {
    method: 'POST', headers: { authorization: `Bearer ${minted.stdout.trim()}`, 'content-type': 'application/json' }, body: '{"progress":3}',
  })
  t.equal(posted.status, 200, 'the producer role may use the producer API')

  // --owners: whom a producer token may record as a job's owner (comma-separated and repeatable).
  const worker = await jobwire(['token', '--sub', 'worker-1', '--role', 'producer', '--jobs', 'video-*', '--owners', 'alice, team-*', '--owners', 'bob'], { JOBWIRE_JWT_SECRET: SECRET })
  t.equal(worker.code, 0, worker.stderr)
  t.match(worker.stdout, /^[\w-]+\.[\w-]+\.[\w-]+\n$/, 'prints only the token')
  const workerClaims = (await jwtVerify(worker.stdout.trim(), new TextEncoder().encode(SECRET))).payload
  t.same(workerClaims.owners, ['alice', 'team-*', 'bob'], 'the token carries the owners claim')
  const record = (job: string, owner: string) => fetch(`${gw.http}/jobs/${job}/progress?owner=${owner}`, {
    method: 'POST', headers: { authorization: `Bearer ${worker.stdout.trim()}`, 'content-type': 'application/json' }, body: '{"status":"queued"}',
  })
  t.equal((await record('video-50', 'team-7')).status, 200, 'the gateway lets it record an owner its claim covers')
  const planted = await record('video-51', 'mallory')
  t.equal(planted.status, 403, 'and refuses one it does not cover')
  t.match(await planted.json(), { error: 'forbidden', message: /may not record mallory as a job's owner/ })
  const everyone = await jobwire(['token', '--sub', 'worker-2', '--role', 'producer', '--owners', '*'], { JOBWIRE_JWT_SECRET: SECRET })
  t.same((await jwtVerify(everyone.stdout.trim(), new TextEncoder().encode(SECRET))).payload.owners, ['*'], '--owners * (anyone)')
  t.notOk('owners' in payload, 'no owners claim unless --owners is given')

  for (const [args, env, message] of [
    [['token', '--sub', 'u'], {}, /token needs the secret the gateway verifies with: set JOBWIRE_JWT_SECRET/],
    [['token', '--sub', 'u', '--jwt-secret', 'short'], {}, /at least 32 bytes/],
    [['token', '--jwt-secret', SECRET], {}, /token needs --sub/],
    [['token', '--sub', 'u', '--ttl', 'soon'], { JOBWIRE_JWT_SECRET: SECRET }, /--ttl 'soon' is not a duration/],
    [['token', '--sub', 'u', '--role', 'root'], { JOBWIRE_JWT_SECRET: SECRET }, /--role must be producer or admin/],
    [['token', '--sub', 'u', '--jobs', 'bad id'], { JOBWIRE_JWT_SECRET: SECRET }, /--jobs: 'bad id' is not a job id/],
    [['token', '--sub', 'u', '--role', 'producer', '--owners', 'alice,bad id'], { JOBWIRE_JWT_SECRET: SECRET }, /--owners: 'bad id' is not a user id \(1\.\.256 characters without whitespace\) or a prefix ending in \*/],
    [['token', '--sub', 'u', '--role', 'producer', '--owners', 'x'.repeat(257)], { JOBWIRE_JWT_SECRET: SECRET }, /--owners: 'x{257}' is not a user id/],
    [['token', '--sub', 'u', '--role', 'producer', '--owners', ','], { JOBWIRE_JWT_SECRET: SECRET }, /--owners needs user ids or prefix\* patterns/],
  ] as const) {
    const refused = await jobwire([...args], env)
    t.equal(refused.code, 2, args.join(' '))
    t.match(refused.stderr, message)
    t.equal(refused.stdout, '')
  }
})

t.test('--port 0 with Redis and the default --workers auto runs one worker and says so; pretty logs', async (t) => {
  const deadPort = await freePort()
  const served = serveProcess(['--port', '0', '--redis', `redis://127.0.0.1:${deadPort}`, '--log-format', 'pretty'], { _TAPJS_PROCESSINFO_COVERAGE_: '0' })
  t.teardown(() => reap(served))
  const note = await served.waitFor(/with --port 0 they cannot share one port: running 1 worker/)
  t.match(note, /^\d\d:\d\d:\d\d\.\d{3} INFO {2}--workers auto/, 'pretty: local time, level name, message')
  await served.waitFor(/jobwire listening on http:\/\/127\.0\.0\.1:\d+ .*workers: 1/)
  const unreachable = await served.waitFor(/cannot reach Redis/)
  t.match(unreachable, new RegExp(`WARN {2}\\[redis\\] cannot reach Redis at 127\\.0\\.0\\.1:${deadPort}: connection refused: nothing listens there`))
  t.notOk(served.lines.some((l) => l.startsWith('{')), 'no JSON lines in pretty mode')
  served.kill('SIGTERM')
  t.equal((await served.exited).code, 0)

  const fixed = await jobwire(['serve', '--port', '0', '--workers', '2', '--redis', `redis://127.0.0.1:${deadPort}`])
  t.equal(fixed.code, 2)
  t.match(fixed.stderr, /--workers 2 needs a fixed --port/)
})

t.test('a Redis lost at run time is named with its cause; json logs stay JSON', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const served = serveProcess(['--port', '0', '--redis', redis.url, '--workers', '1', '--log-format', 'json'], { _TAPJS_PROCESSINFO_COVERAGE_: '0' })
  t.teardown(() => reap(served))
  await served.waitFor(/"msg":"redis ready"/)
  await redis.kill()
  const lost = JSON.parse(await served.waitFor(/lost Redis at/)) as { level: string; msg: string }
  t.equal(lost.level, 'warn')
  t.match(lost.msg, new RegExp(`^lost Redis at 127\\.0\\.0\\.1:${redis.port}: .*reconnecting`))
  t.ok(served.lines.every((l) => l.startsWith('{')), 'every line is a JSON object')
})

t.test('jobwire publish says where it published; the gateway unless a Redis is named', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const gw = await startGateway()
  t.teardown(() => gw.stop())

  const viaEnv = await jobwire(['publish', 'pub-1', '--progress', '10'], { JOBWIRE_GATEWAY: gw.http })
  t.equal(viaEnv.stdout, `published pub-1 seq=1 to the gateway at ${gw.http}\n`, viaEnv.stderr)
  const viaFlag = await jobwire(['publish', 'pub-1', '--progress', '20', '--gateway', gw.http], { REDIS_URL: redis.url })
  t.equal(viaFlag.stdout, `published pub-1 seq=2 to the gateway at ${gw.http}\n`, '--gateway wins over REDIS_URL')
  const viaRedis = await jobwire(['publish', 'pub-2', '--status', 'queued', '--redis', redis.url], { JOBWIRE_GATEWAY: gw.http })
  t.equal(viaRedis.stdout, `published pub-2 seq=1 to Redis at ${redis.url}\n`, '--redis wins over JOBWIRE_GATEWAY')
  const viaRedisEnv = await jobwire(['publish', 'pub-2', '--progress', '5'], { REDIS_URL: redis.url })
  t.equal(viaRedisEnv.stdout, `published pub-2 seq=2 to Redis at ${redis.url}\n`)

  // Nothing named: the gateway a default `make run` starts (whether or not one runs here).
  const byDefault = await jobwire(['publish', 'jobwire-test-default-target', '--status', 'queued'])
  t.match(byDefault.stdout + byDefault.stderr, /(to|cannot reach) the gateway at http:\/\/127\.0\.0\.1:8080/)

  const deadPort = await freePort()
  const noGateway = await jobwire(['publish', 'pub-3', '--progress', '1', '--gateway', `http://127.0.0.1:${deadPort}`])
  t.equal(noGateway.code, 2)
  t.match(noGateway.stderr, new RegExp(`cannot reach the gateway at http://127\\.0\\.0\\.1:${deadPort}: connection refused: is the gateway running there`))
  const noRedis = await jobwire(['publish', 'pub-3', '--progress', '1', '--redis', `redis://127.0.0.1:${deadPort}`])
  t.equal(noRedis.code, 2)
  t.match(noRedis.stderr, new RegExp(`cannot reach Redis at redis://127\\.0\\.0\\.1:${deadPort}: connection refused`))
  t.notMatch(noRedis.stderr, /max retries/)
  const plain = await jobwire(['publish', 'pub-3', '--plain', '--progress', '1', '--gateway', gw.http])
  t.match(plain.stderr, /--plain needs Redis/)
})
