import type { JobPayload } from '../wire/protocol.js'
import { JobsClient, type JobsClientOptions } from './jobs-client.js'

export interface JobEventDetail {
  readonly jobId: string
  readonly data: JobPayload | null
}

/**
 * The original design's API, for apps written against it: `subscribeToJob(jobId)`, and DOM
 * events instead of callbacks. Fires `progress` (every job update) and `status` (snapshots, and
 * updates that change the job's status) on itself, and as `jobwire:progress` /
 * `jobwire:status` on `document` when there is one. Every event's detail is {jobId, data}.
 */
export class BackgroundJobManager extends EventTarget {
  readonly client: JobsClient
  private readonly unsubscribers = new Map<string, () => void>()
  private readonly lastStatus = new Map<string, unknown>()

  constructor(options: JobsClientOptions | string) {
    super()
    this.client = new JobsClient(typeof options === 'string' ? { url: options } : options)
  }

  subscribeToJob(jobId: string): void {
    if (this.unsubscribers.has(jobId)) return
    this.unsubscribers.set(jobId, this.client.subscribe(jobId, {
      onStatus: (data) => {
        this.lastStatus.set(jobId, data?.status)
        this.fire('status', { jobId, data })
      },
      onUpdate: (data) => {
        this.fire('progress', { jobId, data })
        if (data.status !== undefined && data.status !== this.lastStatus.get(jobId)) {
          this.lastStatus.set(jobId, data.status)
          this.fire('status', { jobId, data })
        }
      },
      onError: (error) => this.fire('error', { jobId, data: { error: error.code, message: error.message } }),
    }))
  }

  unsubscribeFromJob(jobId: string): void {
    this.unsubscribers.get(jobId)?.()
    this.unsubscribers.delete(jobId)
    this.lastStatus.delete(jobId)
  }

  disconnect(): void {
    this.client.close()
  }

  private fire(type: string, detail: JobEventDetail): void {
    this.dispatchEvent(new CustomEvent(type, { detail }))
    if (typeof document !== 'undefined') document.dispatchEvent(new CustomEvent(`jobwire:${type}`, { detail }))
  }
}
