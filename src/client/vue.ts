// jobwire/vue: `useJob(id)`, a job's live state in a Vue component, on top of JobsClient.
// One client serves the whole app (one socket, every job multiplexed); give it to the app
// with app.provide(JobsKey, client), or pass it to useJob. Vue is an optional peer
// dependency: this module is only for apps that have it.
//
//   const jobs = new JobsClient({ url: 'wss://example.com/ws/jobs', getToken })
//   createApp(App).provide(JobsKey, jobs).mount('#app')
//   // in a component's setup, with an `id` prop:
//   const { data, error } = useJob(() => props.id)
//   // <p v-if="error">{{ error.message }}</p> <progress v-else max="100" :value="data?.progress ?? 0" />

import { inject, shallowRef, toValue, watch, type InjectionKey, type MaybeRefOrGetter, type ShallowRef } from 'vue'
import type { JobsClient, JobsClientError } from './jobs-client.js'
import type { JobPayload } from '../wire/protocol.js'

export interface JobState {
  /** The job's latest state: undefined until its snapshot arrives, null when the job has none
   * (not reported yet, or unknown). */
  readonly data: Readonly<ShallowRef<JobPayload | null | undefined>>
  /** The last refusal for this job (forbidden, unavailable, ...); cleared by the next state. */
  readonly error: Readonly<ShallowRef<JobsClientError | null>>
  /** The gateway flagged the job as stalled (processing, silent past its stall time); cleared
   * by its next update. */
  readonly stalled: Readonly<ShallowRef<boolean>>
}

/** The key under which useJob looks for the JobsClient it is given none. */
export const JobsKey: InjectionKey<JobsClient> = Symbol('jobwire')

/** The job's live state, as refs updated on its snapshot and every newer update. `jobId` may be
 * a ref or a getter (`() => props.id`): a new id is watched instead of the old. A null id
 * watches nothing (a job not created yet). Call it in setup (or an effect scope): the
 * subscription ends with the component. */
export function useJob(jobId: MaybeRefOrGetter<string | null | undefined>, client?: JobsClient): JobState {
  const jobs = client ?? inject(JobsKey, null)
  if (jobs === null) throw new Error('useJob needs a JobsClient: pass one, or provide it with app.provide(JobsKey, client)')
  const data = shallowRef<JobPayload | null | undefined>(undefined)
  const error = shallowRef<JobsClientError | null>(null)
  const stalled = shallowRef(false)
  const show = (next: JobPayload | null, flagged = false) => {
    data.value = next
    error.value = null
    stalled.value = flagged
  }
  // The watcher belongs to the calling scope: its cleanup (the unsubscribe) runs when the id
  // changes and when the scope is disposed, as the component unmounts.
  watch(() => toValue(jobId), (id, _previous, onCleanup) => {
    // What the client already knows (another component watches the job) shows at once.
    data.value = id ? jobs.job(id)?.data : undefined
    error.value = null
    if (!id) return
    onCleanup(jobs.subscribe(id, { onStatus: (next, _id, status) => show(next, status.stalled), onUpdate: (next) => show(next), onError: (refusal) => (error.value = refusal) }))
  }, { immediate: true })
  return { data, error, stalled }
}
