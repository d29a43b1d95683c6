// jobwire's browser client: one dependency-free ES module (served by the gateway at /client.js).
export { JobsClient, JobsClientError, type ClientState, type JobHandlers, type JobsClientOptions, type StatusInfo, type UserJobsHandlers } from './jobs-client.js'
export { BackgroundJobManager, type JobEventDetail } from './background-job-manager.js'
export { backoff } from '../support/backoff.js'
export type { JobPayload } from '../wire/protocol.js'
