// Which code a report describes: every bench report (make bench, chaos, soak) names it.

import { execFileSync } from 'node:child_process'
import { projectPath } from '../src/support/paths.js'

/** The commit a report describes, marked when tracked files differ from it. */
export function commitLabel(): string {
  try {
    const sha = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: projectPath(), encoding: 'utf8' }).trim()
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: projectPath(), encoding: 'utf8' }).trim() !== ''
    return dirty ? `${sha} + uncommitted changes` : sha
  } catch {
    return 'unknown'
  }
}
