// Files shipped beside the code (the Lua script, static pages), found from the package root so
// the same path works from src/ under the test loader and from dist/ after a build.

import { existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

function findRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url))
  for (;;) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'src', 'producer', 'progress.lua'))) return dir
    const parent = dirname(dir)
    if (parent === dir) throw new Error('jobwire: cannot find the package root (package.json beside src/)')
    dir = parent
  }
}

export const PROJECT_ROOT = findRoot()

export function projectPath(...parts: string[]): string {
  return join(PROJECT_ROOT, ...parts)
}
