// Embeds src/producer/progress.lua into clients/python/jobwire.py (between its BEGIN/END
// markers), so the Python helper is one file a worker can vendor. Run after the script
// changes: node clients/python/generate.mjs. test/python-client.ts fails while they differ.

import { readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const luaPath = join(here, '..', '..', 'src', 'producer', 'progress.lua')
const pyPath = join(here, 'jobwire.py')
const lua = readFileSync(luaPath, 'utf8')

// A raw triple-quoted string carries the script byte for byte, as long as it holds no """
// and does not end in a backslash.
if (lua.includes('"""') || /\\\s*$/.test(lua)) {
  console.error('progress.lua contains """ or ends in a backslash; it cannot be embedded as a raw string')
  process.exit(1)
}
const py = readFileSync(pyPath, 'utf8')
const begin = py.indexOf('# BEGIN progress.lua\n')
const end = py.indexOf('# END progress.lua')
if (begin < 0 || end < begin) {
  console.error(`${pyPath} lacks its '# BEGIN progress.lua' / '# END progress.lua' markers`)
  process.exit(1)
}
// r"""\ would keep the backslash in a raw string, so the script starts on the opening line.
const block = `# BEGIN progress.lua\nPROGRESS_SCRIPT = r"""${lua}"""\n`
const next = py.slice(0, begin) + block + py.slice(end)
if (next !== py) writeFileSync(pyPath, next)
console.log(next === py ? 'clients/python/jobwire.py is up to date' : 'clients/python/jobwire.py: embedded the current progress.lua')
