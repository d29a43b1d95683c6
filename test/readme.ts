// The README's configuration table is the front door's promise: it must list every option
// with its environment variables and default, as the code defines them.

import t from 'tap'
import { readFileSync } from 'node:fs'
import { OPTIONS } from '../src/support/config.js'
import { projectPath } from '../src/support/paths.js'

const readme = readFileSync(projectPath('README.md'), 'utf8')

for (const o of OPTIONS) {
  const row = readme.split('\n').find((line) => line.startsWith(`| \`--${o.flag}\` |`))
  t.ok(row, `README lists --${o.flag}`)
  for (const env of o.env) t.match(row, `\`${env}\``, `--${o.flag} row names ${env}`)
  t.match(row, o.fallback === '' ? '(empty)' : `\`${o.fallback}\``, `--${o.flag} row shows the default`)
}
t.ok(readFileSync(projectPath('docs', 'protocol.md'), 'utf8').includes('jobwire wire contract, version 1'))
