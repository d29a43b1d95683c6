// The package's version, read once: /metrics' build_info, the startup line, /healthz and the
// x-jobwire-version header say it, so an operator can tell what a node runs mid-rollout.

import { readFileSync } from 'node:fs'
import { projectPath } from './paths.js'

export const VERSION: string = (JSON.parse(readFileSync(projectPath('package.json'), 'utf8')) as { version: string }).version
