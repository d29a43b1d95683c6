// V8's young generation ("new space") grows to 32 MB per process under a burst of allocation,
// such as 10,000 sockets subscribing at once, and keeps that memory: it was two thirds of the
// 3.2 KB of RSS per connection measured right after such a burst. Capping the semi-space at
// 4 MB brought it to 0.8 KB (one process) and 1.3 KB (two workers) with the same objects alive
// (node dist/bench/heap.js, README "Performance"). The flag only takes effect when a process
// starts, so it is given wherever jobwire starts a gateway process: the workers the primary
// forks, the `jobwire` command's shebang, `make run` and the bench. An operator's own
// --max-semi-space-size (in NODE_OPTIONS or on node's command line) wins.

export const SEMI_SPACE_MB = 4
export const SEMI_SPACE_FLAG = `--max-semi-space-size=${SEMI_SPACE_MB}`

/** The node options a gateway process is started with: `execArgv` plus the young-generation
 * cap, unless the operator set one. */
export function gatewayExecArgv(execArgv: readonly string[], nodeOptions = process.env.NODE_OPTIONS ?? ''): string[] {
  const set = (s: string) => s.includes('--max-semi-space-size')
  return set(nodeOptions) || execArgv.some(set) ? [...execArgv] : [...execArgv, SEMI_SPACE_FLAG]
}
