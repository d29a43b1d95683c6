// Summarises V8 CPU profiles (.cpuprofile, from node --cpu-prof) into the functions that took
// the most self time: the "why" behind a missed aim, printed into the bench report.

import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'

interface ProfileNode {
  id: number
  callFrame: { functionName: string; url: string; lineNumber: number }
  hitCount?: number
}

export interface HotFunction {
  readonly name: string
  readonly where: string
  readonly percent: number
}

export function summariseProfiles(dir: string, top = 15): { samples: number; functions: HotFunction[] } {
  const hits = new Map<string, { name: string; where: string; count: number }>()
  let total = 0
  for (const file of readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'))) {
    const profile = JSON.parse(readFileSync(join(dir, file), 'utf8')) as { nodes: ProfileNode[] }
    for (const node of profile.nodes) {
      const count = node.hitCount ?? 0
      if (count === 0) continue
      const { functionName, url, lineNumber } = node.callFrame
      const name = functionName || '(anonymous)'
      const where = url ? `${url.replace(/^.*\/(node_modules|dist|node:)/, '$1')}:${lineNumber + 1}` : ''
      const key = `${name}@${where}`
      const entry = hits.get(key) ?? { name, where, count: 0 }
      entry.count += count
      hits.set(key, entry)
      total += count
    }
  }
  const functions = [...hits.values()].sort((a, b) => b.count - a.count).slice(0, top)
    .map((e) => ({ name: e.name, where: e.where, percent: (e.count / Math.max(1, total)) * 100 }))
  return { samples: total, functions }
}
