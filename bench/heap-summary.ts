// Reads a V8 .heapsnapshot and sums it by what each object is (its constructor, a closure's
// function, a string, an internal array...), so two snapshots of one gateway, empty and holding
// N sockets, can be subtracted into bytes per socket. bench/heap.ts prints the result.

import { readFileSync } from 'node:fs'

export interface Bucket {
  count: number
  bytes: number
}

export interface HeapSummary {
  readonly nodes: number
  readonly bytes: number
  readonly byKind: Map<string, Bucket>
  /** String contents seen at least `minRepeats` times: candidates for interning. */
  readonly repeatedStrings: Map<string, Bucket>
  /** For each constructor asked for: the average bytes of the object graph only it retains
   * (children with no other strong retainer, followed transitively), and what that graph is. */
  readonly owned: Map<string, { objects: number; bytesEach: number; parts: Map<string, Bucket> }>
}

interface RawSnapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[]]; edge_fields: string[]; edge_types: [string[]] } }
  nodes: number[]
  edges: number[]
  strings: string[]
}

const STRING_TYPES = new Set(['string', 'concatenated string', 'sliced string'])

function kindOf(type: string, name: string): string {
  switch (type) {
    case 'object':
      return name
    case 'closure':
      return `closure ${name || '(anonymous)'}`
    case 'array':
    case 'hidden':
    case 'native':
    case 'synthetic':
      return `${type} ${name}`
    default:
      return STRING_TYPES.has(type) ? 'string' : type
  }
}

function add(map: Map<string, Bucket>, key: string, bytes: number): void {
  const b = map.get(key)
  if (b === undefined) map.set(key, { count: 1, bytes })
  else {
    b.count++
    b.bytes += bytes
  }
}

export function summarize(path: string, ownedBy: readonly string[] = [], minRepeats = 1000): HeapSummary {
  const raw = JSON.parse(readFileSync(path, 'utf8')) as RawSnapshot
  const meta = raw.snapshot.meta
  const nf = meta.node_fields.length
  const ef = meta.edge_fields.length
  const fType = meta.node_fields.indexOf('type')
  const fName = meta.node_fields.indexOf('name')
  const fSize = meta.node_fields.indexOf('self_size')
  const fEdges = meta.node_fields.indexOf('edge_count')
  const eType = meta.edge_fields.indexOf('type')
  const eTo = meta.edge_fields.indexOf('to_node')
  const nodeTypes = meta.node_types[0]
  const edgeTypes = meta.edge_types[0]
  const weak = edgeTypes.indexOf('weak')
  const { nodes, edges, strings } = raw
  const count = nodes.length / nf

  const byKind = new Map<string, Bucket>()
  const stringCounts = new Map<string, Bucket>()
  const firstEdge = new Uint32Array(count + 1)
  let total = 0
  for (let i = 0, e = 0; i < count; i++) {
    firstEdge[i] = e
    e += nodes[i * nf + fEdges]! * ef
    const type = nodeTypes[nodes[i * nf + fType]!]!
    const name = strings[nodes[i * nf + fName]!]!
    const size = nodes[i * nf + fSize]!
    total += size
    add(byKind, kindOf(type, name), size)
    if (STRING_TYPES.has(type)) add(stringCounts, name.length > 60 ? `${name.slice(0, 60)}...` : name, size)
  }
  firstEdge[count] = edges.length

  const repeatedStrings = new Map([...stringCounts].filter(([, b]) => b.count >= minRepeats))

  const owned: HeapSummary['owned'] = new Map()
  if (ownedBy.length > 0) {
    // Strong in-degree of every node: a child with one strong retainer belongs to its parent.
    const retainers = new Uint32Array(count)
    for (let e = 0; e < edges.length; e += ef) if (edges[e + eType] !== weak) retainers[edges[e + eTo]! / nf]!++
    for (const ctor of ownedBy) {
      const parts = new Map<string, Bucket>()
      let objects = 0
      let bytes = 0
      for (let i = 0; i < count; i++) {
        if (nodeTypes[nodes[i * nf + fType]!] !== 'object' || strings[nodes[i * nf + fName]!] !== ctor) continue
        objects++
        const stack = [i]
        const seen = new Set<number>([i])
        while (stack.length > 0) {
          const n = stack.pop()!
          const size = nodes[n * nf + fSize]!
          bytes += size
          add(parts, kindOf(nodeTypes[nodes[n * nf + fType]!]!, strings[nodes[n * nf + fName]!]!), size)
          for (let e = firstEdge[n]!; e < firstEdge[n + 1]!; e += ef) {
            if (edges[e + eType] === weak) continue
            const to = edges[e + eTo]! / nf
            if (retainers[to] === 1 && !seen.has(to)) {
              seen.add(to)
              stack.push(to)
            }
          }
        }
      }
      owned.set(ctor, { objects, bytesEach: objects > 0 ? bytes / objects : 0, parts })
    }
  }
  return { nodes: count, bytes: total, byKind, repeatedStrings, owned }
}

/** `after - before` per kind, largest growth first. */
export function difference(before: HeapSummary, after: HeapSummary): Array<[string, Bucket]> {
  const out = new Map<string, Bucket>()
  for (const [k, b] of after.byKind) out.set(k, { count: b.count, bytes: b.bytes })
  for (const [k, b] of before.byKind) {
    const o = out.get(k) ?? { count: 0, bytes: 0 }
    o.count -= b.count
    o.bytes -= b.bytes
    out.set(k, o)
  }
  return [...out].sort((x, y) => y[1].bytes - x[1].bytes)
}

interface ProfileNode {
  callFrame: { functionName: string; url: string; lineNumber: number }
  selfSize: number
  children: ProfileNode[]
}

/** A sampling heap profile summed by allocation site: the allocating function, and the
 * innermost frame of this project's own code that led to it ("-" when none did). */
export function profileSites(path: string): Map<string, number> {
  const head = (JSON.parse(readFileSync(path, 'utf8')) as { head: ProfileNode }).head
  const sites = new Map<string, number>()
  const frame = (f: ProfileNode['callFrame']) => `${f.functionName || '(anonymous)'} ${f.url.replace(/^.*\/(dist|node_modules)\//, '$1/')}:${f.lineNumber + 1}`
  const walk = (node: ProfileNode, ours: string) => {
    const here = /\/dist\/src\//.test(node.callFrame.url) ? frame(node.callFrame) : ours
    if (node.selfSize > 0) {
      const key = `${frame(node.callFrame)} <- ${here}`
      sites.set(key, (sites.get(key) ?? 0) + node.selfSize)
    }
    for (const child of node.children) walk(child, here)
  }
  walk(head, '-')
  return sites
}
