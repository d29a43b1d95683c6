// The README's configuration table is the front door's promise: it must list every option
// with its environment variables and default, as the code defines them. The docs that name
// source files must name files that exist.

import t from 'tap'
import { existsSync, readFileSync } from 'node:fs'
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

// docs/architecture.md and the README name the files that own each step: they must exist.
for (const doc of ['README.md', 'docs/architecture.md']) {
  const text = readFileSync(projectPath(doc), 'utf8')
  const named = new Set([...text.matchAll(/\b(?:src\/)?((?:wire|stream|ws|sse|http|access|broker|producer|node|support|client|pages)\/[a-z-]+\.(?:ts|lua|html))\b/g)].map((m) => m[1]!))
  t.ok(named.size > 0, `${doc} names source files`)
  for (const file of named) t.ok(existsSync(projectPath('src', file)), `${doc}: src/${file} exists`)
}
