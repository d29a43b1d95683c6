// jobwire/react: `useJob(id)`, a job's live state in a React component, on top of JobsClient.
// One client serves the whole app (one socket, every job multiplexed); give it to the tree
// with <JobsContext.Provider value={client}>, or pass it to useJob. React is an optional
// peer dependency: this module is only for apps that have it.
//
//   const jobs = new JobsClient({ url: 'wss://example.com/ws/jobs', getToken })
//   root.render(<JobsContext.Provider value={jobs}><App /></JobsContext.Provider>)
//   function Progress({ id }) {
//     const { data, error } = useJob(id)
//     return error ? <p>{error.message}</p> : <progress max={100} value={data?.progress ?? 0} />
//   }

import { createContext, useContext, useEffect, useState } from 'react'
import type { JobsClient, JobsClientError } from './jobs-client.js'
import type { JobPayload } from '../wire/protocol.js'

export interface JobState {
  /** The job's latest state: undefined until its snapshot arrives, null when the job has none
   * (not reported yet, or unknown). */
  readonly data: JobPayload | null | undefined
  /** The last refusal for this job (forbidden, unavailable, ...); cleared by the next state. */
  readonly error: JobsClientError | null
  /** The gateway flagged the job as stalled (processing, silent past its stall time); cleared
   * by its next update. */
  readonly stalled?: boolean
}

/** The JobsClient useJob uses when it is given none. */
export const JobsContext = createContext<JobsClient | null>(null)

/** The job's live state; re-renders on its snapshot and every newer update. A null id watches
 * nothing (a job not created yet). */
export function useJob(jobId: string | null | undefined, client?: JobsClient): JobState {
  const fromContext = useContext(JobsContext)
  const jobs = client ?? fromContext
  if (jobs === null) throw new Error('useJob needs a JobsClient: pass one, or render inside <JobsContext.Provider value={client}>')
  const [state, setState] = useState<JobState>(() => ({ data: jobId ? jobs.job(jobId)?.data : undefined, error: null }))
  useEffect(() => {
    if (!jobId) {
      setState({ data: undefined, error: null })
      return undefined
    }
    // What the client already knows (another component watches the job) shows at once.
    setState({ data: jobs.job(jobId)?.data, error: null })
    return jobs.subscribe(jobId, {
      onStatus: (data, _id, status) => setState({ data, error: null, stalled: status.stalled }),
      onUpdate: (data) => setState({ data, error: null }),
      onError: (error) => setState((previous) => ({ data: previous.data, error })),
    })
  }, [jobs, jobId])
  return state
}
