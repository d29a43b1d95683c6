// uWebSockets.js is installed from an unofficial registry build that silently falls back to a
// slow `ws`-based imitation when its native binary does not load. jobwire refuses to run on
// that imitation: the whole point is the native event loop.

import { realpathSync } from 'node:fs'
import { createRequire } from 'node:module'
import { basename } from 'node:path'
import uWS from 'uWebSockets.js'

export interface UwsRuntime {
  readonly native: boolean
  /** The native binary's file name, or why it did not load. */
  readonly detail: string
}

export function detectUwsRuntime(): UwsRuntime {
  const require = createRequire(import.meta.url)
  // The real path: the package's own require of its binary goes by it, and a second load by
  // another path (a symlinked node_modules) would be another module object.
  const entry = realpathSync(require.resolve('uWebSockets.js'))
  const binary = entry.replace(/src[\\/]uws\.js$/, `binaries/uws_${process.platform}_${process.arch}_${process.versions.modules}.node`)
  try {
    // The package's entry returns the very module object of its binary when it loaded.
    return require(binary) === uWS
      ? { native: true, detail: basename(binary) }
      : { native: false, detail: 'the package loaded its JavaScript fallback (UWS_USE_FALLBACK set?)' }
  } catch (err) {
    return { native: false, detail: (err as Error).message.split('\n')[0]! }
  }
}

export { uWS }
