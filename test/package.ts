// `npm pack` makes a package a developer can install: the tarball is installed into a scratch
// project in a temp dir (from the local npm cache where it can, the registry otherwise), and
// there `npx jobwire --help` works, `jobwire/producer` and `jobwire/client` import, their
// types check, and `jobwire serve` serves the client and the pages from the installed files.
//
// The tarball is packed from the dist/ that `make test` built (--ignore-scripts): packing runs
// `prepack` (make build) otherwise, and rebuilding dist/ under the other test files running
// beside this one would pull files from under them.

import t from 'tap'
import { execFile, spawn } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { projectPath } from '../src/support/paths.js'

const run = promisify(execFile)
// Processes started here run code outside this project: tap's loader must not record it.
const env = { ...process.env, _TAPJS_PROCESSINFO_COVERAGE_: '0' }

t.test('the packed package installs and works in another project', async (t) => {
  const pkg = JSON.parse(readFileSync(projectPath('package.json'), 'utf8')) as Record<string, unknown>
  t.notOk(pkg.private, 'not private')
  t.equal((pkg.scripts as Record<string, string>).prepack, 'make build', 'packing builds first')

  const dir = mkdtempSync(join(tmpdir(), 'jobwire-pack-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const { stdout: packed } = await run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], { cwd: projectPath(), env, timeout: 60_000 })
  const { filename, files } = (JSON.parse(packed) as Array<{ filename: string; files: Array<{ path: string }> }>)[0]!
  const paths = files.map((f) => f.path)
  for (const needed of ['dist/src/cli.js', 'dist/src/producer/producer.d.ts', 'dist/client/jobwire-client.js', 'dist/client-types/client/index.d.ts',
    'dist/client/jobwire-vue.js', 'dist/client-types/client/vue.d.ts',
    'src/producer/progress.lua', 'src/pages/demo.html', 'README.md', 'clients/python/jobwire.py']) {
    t.ok(paths.includes(needed), `the tarball carries ${needed}`)
  }
  t.notOk(paths.some((p) => p.startsWith('test/') || p.startsWith('bench/') || p.startsWith('dist/bench/')), 'no tests or benchmarks')

  const project = join(dir, 'app')
  const npm = (args: string[]) => run('npm', args, { cwd: project, env, timeout: 120_000 })
  mkdirSync(project)
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'scratch-app', private: true, type: 'module' }))
  await npm(['install', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error', join(dir, filename)])

  const { stdout: help } = await run('npx', ['--no-install', 'jobwire', '--help'], { cwd: project, env, timeout: 30_000 })
  t.match(help, /jobwire serve \[options\]/, 'npx jobwire --help')

  const { stdout: imported } = await run('node', ['--input-type=module', '-e', `
    const { Producer } = await import('jobwire/producer')
    const client = await import('jobwire/client')
    console.log(JSON.stringify({ producer: typeof Producer, client: typeof client.JobsClient, manager: typeof client.BackgroundJobManager }))
  `], { cwd: project, env, timeout: 30_000 })
  t.same(JSON.parse(imported), { producer: 'function', client: 'function', manager: 'function' }, 'jobwire/producer and jobwire/client import')
  // jobwire/vue needs vue, an optional peer this project does not install: only resolved.
  const { stdout: vue } = await run('node', ['--input-type=module', '-e', `console.log(import.meta.resolve('jobwire/vue'))`], { cwd: project, env, timeout: 30_000 })
  t.ok(vue.trim().endsWith('/node_modules/jobwire/dist/client/jobwire-vue.js'), `jobwire/vue resolves to the installed bundle (${vue.trim()})`)

  // The types a TypeScript user gets, checked with this project's compiler.
  writeFileSync(join(project, 'usage.ts'), `
import { Producer } from 'jobwire/producer'
import { JobsClient, type JobPayload } from 'jobwire/client'
const producer = new Producer({ redis: 'redis://127.0.0.1:6379' })
const seq: Promise<number> = producer.progress('video-42', { status: 'processing', progress: 40 }, { owner: 'user-7' })
const jobs = new JobsClient({ url: 'ws://127.0.0.1:8080/ws/jobs', connect: false })
jobs.subscribe('video-42', { onUpdate: (job: JobPayload) => console.log(job.progress) })
void seq
`)
  writeFileSync(join(project, 'tsconfig.json'), JSON.stringify({
    compilerOptions: { module: 'NodeNext', moduleResolution: 'NodeNext', target: 'ES2022', strict: true, noEmit: true, skipLibCheck: true,
      lib: ['ES2022', 'DOM'], types: ['node'], typeRoots: [projectPath('node_modules', '@types')] },
    files: ['usage.ts'],
  }))
  const typecheck = await run(projectPath('node_modules', '.bin', 'tsc'), ['-p', project], { cwd: project, env, timeout: 60_000 }).then(() => '', (e: { stdout: string }) => e.stdout)
  t.equal(typecheck, '', 'the package\'s types check')

  // Served from the installed files: the client bundle, the pages and the producer script.
  const proc = spawn(join(project, 'node_modules', '.bin', 'jobwire'), ['serve', '--open', '--port', '0', '--log-format', 'json'], { cwd: project, env, stdio: ['ignore', 'pipe', 'pipe'] })
  const lines: string[] = []
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })))
  t.teardown(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGKILL')
      await exited
    }
  })
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the installed jobwire did not start:\n${lines.join('\n')}`)), 15_000)
    const onData = (chunk: Buffer) => {
      lines.push(chunk.toString())
      const found = /"url":"(http:\/\/[^"]+)"/.exec(lines.join(''))
      if (found) {
        clearTimeout(timer)
        resolve(found[1]!)
      }
    }
    proc.stdout!.on('data', onData)
    proc.stderr!.on('data', onData)
  })
  const client = await fetch(`${url}/client.js`)
  t.equal(client.status, 200)
  t.match(await client.text(), /JobsClient/)
  t.equal((await fetch(`${url}/`)).status, 200, 'the demo page')
  const published = await fetch(`${url}/jobs/pack-1/progress`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"progress":1}' })
  t.equal(published.status, 200, 'the producer path runs')
  proc.kill('SIGTERM')
  t.equal((await exited).code, 0)
})
