// Questions asked of every gateway process of a node (the primary collects one answer from
// each worker; see serve.ts), and their answers, typed per kind so nobody casts what crosses
// the IPC channel.

import type { ConnectionInfo, Connections } from '../access/connections.js'
import type { MetricsSnapshot } from '../support/metrics.js'
import type { HistoryPoint } from './history.js'

export type NodeRequest =
  | { readonly kind: 'metrics' }
  | { readonly kind: 'jobs'; readonly top: number }
  | { readonly kind: 'connections'; readonly user?: string }
  | { readonly kind: 'disconnect'; readonly user: string }
  | { readonly kind: 'history' }

export type NodeAnswer =
  | { readonly kind: 'metrics'; readonly metrics: MetricsSnapshot }
  | { readonly kind: 'jobs'; readonly jobs: WorkerJobs }
  | { readonly kind: 'connections'; readonly connections: ConnectionInfo[] }
  | { readonly kind: 'disconnect'; readonly disconnected: number }
  | { readonly kind: 'history'; readonly points: HistoryPoint[] }

/** One process's connections and watched jobs, for the admin page. */
export interface WorkerJobs {
  readonly pid: number
  readonly connections: number
  readonly jobsWatched: number
  /** The jobs with the most watchers in this process (sockets, SSE streams, opening watches). */
  readonly top: ReadonlyArray<{ readonly job_id: string; readonly watchers: number }>
}

/** Asks every process of the node (or only this one, outside --workers). */
export type NodeQuery = (request: NodeRequest) => Promise<NodeAnswer[]>

export function metricsOf(answers: readonly NodeAnswer[]): MetricsSnapshot[] {
  return answers.flatMap((a) => (a.kind === 'metrics' ? [a.metrics] : []))
}

export function connectionsOf(answers: readonly NodeAnswer[]): ConnectionInfo[] {
  return answers.flatMap((a) => (a.kind === 'connections' ? a.connections : []))
}

export function workersOf(answers: readonly NodeAnswer[]): WorkerJobs[] {
  return answers.flatMap((a) => (a.kind === 'jobs' ? [a.jobs] : []))
}

export function historiesOf(answers: readonly NodeAnswer[]): HistoryPoint[][] {
  return answers.flatMap((a) => (a.kind === 'history' ? [a.points] : []))
}

export function disconnectedOf(answers: readonly NodeAnswer[]): number {
  return answers.reduce((n, a) => n + (a.kind === 'disconnect' ? a.disconnected : 0), 0)
}

/** One process's answer. */
export function answerNodeRequest(request: NodeRequest, connections: Connections, metrics: () => MetricsSnapshot,
  jobs: (top: number) => WorkerJobs = () => ({ pid: process.pid, connections: connections.size, jobsWatched: 0, top: [] }),
  history: () => HistoryPoint[] = () => []): NodeAnswer {
  switch (request.kind) {
    case 'metrics':
      return { kind: 'metrics', metrics: metrics() }
    case 'jobs':
      return { kind: 'jobs', jobs: jobs(request.top) }
    case 'connections':
      return { kind: 'connections', connections: connections.list(request.user) }
    case 'history':
      return { kind: 'history', points: history() }
    case 'disconnect': {
      const ofUser = connections.ofUser(request.user)
      for (const c of ofUser) c.disconnect()
      return { kind: 'disconnect', disconnected: ofUser.length }
    }
  }
}
