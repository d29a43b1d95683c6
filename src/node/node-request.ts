// Questions asked of every gateway process of a node (the primary collects one answer from
// each worker; see serve.ts), and their answers, typed per kind so nobody casts what crosses
// the IPC channel.

import type { ConnectionInfo, Connections } from '../access/connections.js'
import type { MetricsSnapshot } from '../support/metrics.js'

export type NodeRequest =
  | { readonly kind: 'metrics' }
  | { readonly kind: 'connections'; readonly user?: string }
  | { readonly kind: 'disconnect'; readonly user: string }

export type NodeAnswer =
  | { readonly kind: 'metrics'; readonly metrics: MetricsSnapshot }
  | { readonly kind: 'connections'; readonly connections: ConnectionInfo[] }
  | { readonly kind: 'disconnect'; readonly disconnected: number }

/** Asks every process of the node (or only this one, outside --workers). */
export type NodeQuery = (request: NodeRequest) => Promise<NodeAnswer[]>

export function metricsOf(answers: readonly NodeAnswer[]): MetricsSnapshot[] {
  return answers.flatMap((a) => (a.kind === 'metrics' ? [a.metrics] : []))
}

export function connectionsOf(answers: readonly NodeAnswer[]): ConnectionInfo[] {
  return answers.flatMap((a) => (a.kind === 'connections' ? a.connections : []))
}

export function disconnectedOf(answers: readonly NodeAnswer[]): number {
  return answers.reduce((n, a) => n + (a.kind === 'disconnect' ? a.disconnected : 0), 0)
}

/** One process's answer. */
export function answerNodeRequest(request: NodeRequest, connections: Connections, metrics: () => MetricsSnapshot): NodeAnswer {
  switch (request.kind) {
    case 'metrics':
      return { kind: 'metrics', metrics: metrics() }
    case 'connections':
      return { kind: 'connections', connections: connections.list(request.user) }
    case 'disconnect': {
      const ofUser = connections.ofUser(request.user)
      for (const c of ofUser) c.disconnect()
      return { kind: 'disconnect', disconnected: ofUser.length }
    }
  }
}
