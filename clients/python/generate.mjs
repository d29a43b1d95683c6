// Embeds jobwire's Lua scripts into clients/python/jobwire.py (each between its BEGIN/END
// markers), so the Python helper is one file a worker can vendor: src/producer/progress.lua,
// and src/producer/owner-index.lua (the owner's job index on Redis Cluster). Run after a
// script changes: node clients/python/generate.mjs. test/python-client.ts fails while they
// differ.

import { readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const pyPath = join(here, 'jobwire.py')
const SCRIPTS = [
  { file: 'progress.lua', name: 'PROGRESS_SCRIPT' },
  { file: 'owner-index.lua', name: 'OWNER_INDEX_SCRIPT' },
]

const py = readFileSync(pyPath, 'utf8')
let next = py
for (const { file, name } of SCRIPTS) {
  const lua = readFileSync(join(here, '..', '..', 'src', 'producer', file), 'utf8')
  // A raw triple-quoted string carries the script byte for byte, as long as it holds no """
  // and does not end in a backslash.
  if (lua.includes('"""') || /\\\s*$/.test(lua)) {
    console.error(`${file} contains """ or ends in a backslash; it cannot be embedded as a raw string`)
    process.exit(1)
  }
  const begin = next.indexOf(`# BEGIN ${file}\n`)
  const end = next.indexOf(`# END ${file}`)
  if (begin < 0 || end < begin) {
    console.error(`${pyPath} lacks its '# BEGIN ${file}' / '# END ${file}' markers`)
    process.exit(1)
  }
  // r"""\ would keep the backslash in a raw string, so the script starts on the opening line.
  const block = `# BEGIN ${file}\n${name} = r"""${lua}"""\n`
  next = next.slice(0, begin) + block + next.slice(end)
}
if (next !== py) writeFileSync(pyPath, next)
console.log(next === py ? 'clients/python/jobwire.py is up to date' : 'clients/python/jobwire.py: embedded the current scripts')
