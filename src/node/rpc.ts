// The one request/response mechanism between the primary and its workers, over the IPC
// channel fork() gives. Messages are typed unions per direction and checked for their shape on
// arrival (a process boundary), so every answer is used as the type it was checked to be.

import type { AdmissionRequest, AdmissionResult } from '../access/admission.js'
import type { NodeAnswer, NodeRequest } from './node-request.js'

export type WorkerMessage =
  | { readonly type: 'listening'; readonly port: number }
  /** A question for the whole node, asked by the worker that received it over HTTP. */
  | { readonly type: 'node-query'; readonly id: number; readonly request: NodeRequest }
  | { readonly type: 'node-answer'; readonly id: number; readonly answer: NodeAnswer }
  | { readonly type: 'charge'; readonly id: number; readonly address: string | null }
  | { readonly type: 'admit'; readonly id: number; readonly request: AdmissionRequest }
  | { readonly type: 'release'; readonly id: number }
  /** Readiness: is the primary answering? */
  | { readonly type: 'ping'; readonly id: number }

export type PrimaryMessage =
  | { readonly type: 'node-request'; readonly id: number; readonly request: NodeRequest }
  | { readonly type: 'node-answers'; readonly id: number; readonly answers: NodeAnswer[] }
  | { readonly type: 'admit-result'; readonly id: number; readonly result: AdmissionResult }
  | { readonly type: 'pong'; readonly id: number }

const WORKER_TYPES = new Set(['listening', 'node-query', 'node-answer', 'charge', 'admit', 'release', 'ping'])
const PRIMARY_TYPES = new Set(['node-request', 'node-answers', 'admit-result', 'pong'])

function hasType(message: unknown, types: ReadonlySet<string>): boolean {
  return typeof message === 'object' && message !== null && 'type' in message && typeof message.type === 'string' &&
    types.has(message.type) && (message.type === 'listening' || ('id' in message && typeof message.id === 'number'))
}

export function isWorkerMessage(message: unknown): message is WorkerMessage {
  return hasType(message, WORKER_TYPES)
}

export function isPrimaryMessage(message: unknown): message is PrimaryMessage {
  return hasType(message, PRIMARY_TYPES)
}

/** Calls awaiting an answer, by id, each with a deadline; what a timeout resolves to is the
 * caller's choice. One instance serves any number of peers (ids are unique to it). */
export class Calls<T> {
  private lastId = 0
  private readonly waiting = new Map<number, (value: T) => void>()

  ask(send: (id: number) => void, timeoutMs: number, onTimeout: () => T): Promise<T> {
    const id = ++this.lastId
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id)
        resolve(onTimeout())
      }, timeoutMs)
      this.waiting.set(id, (value) => {
        clearTimeout(timer)
        resolve(value)
      })
      send(id)
    })
  }

  answer(id: number, value: T): void {
    const resolve = this.waiting.get(id)
    this.waiting.delete(id)
    resolve?.(value)
  }
}
