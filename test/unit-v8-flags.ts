// The young-generation cap (src/node/v8-flags.ts) reaches every way jobwire starts a gateway
// process, and yields to an operator's own setting.

import t from 'tap'
import { readFileSync } from 'node:fs'
import { gatewayExecArgv, SEMI_SPACE_FLAG } from '../src/node/v8-flags.js'
import { projectPath } from '../src/support/paths.js'

t.test('added to node options, unless the operator set a semi-space size', (t) => {
  t.same(gatewayExecArgv([], ''), [SEMI_SPACE_FLAG])
  t.same(gatewayExecArgv(['--inspect'], ''), ['--inspect', SEMI_SPACE_FLAG], 'after what is there')
  t.same(gatewayExecArgv(['--max-semi-space-size=16'], ''), ['--max-semi-space-size=16'], 'node --max-semi-space-size=16 wins')
  t.same(gatewayExecArgv([], '--max-old-space-size=512 --max-semi-space-size=8'), [], 'NODE_OPTIONS wins')
  t.end()
})

t.test('the jobwire command and make run start with the same flag', (t) => {
  t.equal(readFileSync(projectPath('src', 'cli.ts'), 'utf8').split('\n')[0], `#!/usr/bin/env -S node ${SEMI_SPACE_FLAG}`)
  t.match(readFileSync(projectPath('Makefile'), 'utf8'), new RegExp(`^run:.*\\n.*node ${SEMI_SPACE_FLAG} dist/src/cli\\.js serve`, 'm'))
  t.match(readFileSync(projectPath('docs', 'deploy.md'), 'utf8'), `"node", "${SEMI_SPACE_FLAG}", "dist/src/cli.js", "serve"`, 'the Dockerfile in docs/deploy.md')
  t.end()
})
