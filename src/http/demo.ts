// The demo producer (--demo, on in `make run`): POST /demo/jobs starts a simulated video
// download that reports its progress through the normal producer path (stored state, seq,
// publish): queued -> processing through its stages -> completed, or now and then failed.
// Same-origin only: only the gateway's own demo page may start jobs (cors.ts sameOriginOnly),
// whatever --allowed-origins says, so a website cannot start jobs from a visitor's browser.

import { randomBytes } from 'node:crypto'
import type { TemplatedApp } from 'uWebSockets.js'
import { credentialsOf, type Access } from '../access/access.js'
import { AuthError } from '../access/auth.js'
import type { Broker } from '../broker/broker.js'
import { LOCAL_USER } from '../stream/user-jobs.js'
import { sameOriginOnly } from './cors.js'
import { respondJson, respondUnauthorized, trackAborted, authCode } from './respond.js'
import type { Logger } from '../support/log.js'
import type { JobPayload } from '../wire/protocol.js'

const MAX_RUNNING = 50
const TITLES = ['Conference keynote (1080p)', 'Cat compilation vol. 7', 'Drone flight over the fjord', 'Lecture 12: distributed systems', 'Product launch livestream']
const FAILURES = ['the media host answered 403 Forbidden', 'connection reset while downloading segment 41', 'not enough disk space on the worker']

export type Outcome = 'success' | 'fail' | 'random'

interface Step {
  readonly status: JobPayload['status']
  readonly progress: number
  readonly message: string
}

/** The stages of one simulated download; a failing one stops part-way. */
export function demoSteps(outcome: 'success' | 'fail', random: () => number = Math.random): Step[] {
  const steps: Step[] = [
    { status: 'queued', progress: 0, message: 'Waiting for a worker' },
    { status: 'processing', progress: 3, message: 'Resolving the media URL' },
  ]
  for (let p = 8; p <= 68; p += 6 + Math.floor(random() * 6)) steps.push({ status: 'processing', progress: p, message: `Downloading video (${p}%)` })
  steps.push({ status: 'processing', progress: 74, message: 'Downloading audio' })
  steps.push({ status: 'processing', progress: 86, message: 'Merging video and audio' })
  steps.push({ status: 'processing', progress: 95, message: 'Uploading to storage' })
  if (outcome === 'fail') return steps.slice(0, 3 + Math.floor(random() * (steps.length - 3)))
  return steps
}

export interface DemoContext {
  readonly broker: Broker
  readonly access: Access
  readonly log: Logger
}

export class DemoProducer {
  private readonly timers = new Set<NodeJS.Timeout>()

  constructor(private readonly ctx: DemoContext) {}

  get running(): number {
    return this.timers.size
  }

  /** Starts a job; resolves with its id once its first (queued) state is stored. */
  async start(owner: string | undefined, outcome: Outcome, stepMs: number): Promise<string> {
    const jobId = `video-${randomBytes(4).toString('hex')}`
    const result = outcome === 'random' ? (Math.random() < 0.2 ? 'fail' : 'success') : outcome
    const steps = demoSteps(result)
    const title = TITLES[Math.floor(Math.random() * TITLES.length)]!
    const publish = (payload: JobPayload) => this.ctx.broker.publishProgress(jobId, Buffer.from(JSON.stringify({ title, ...payload })), owner ? { owner } : {})
    await publish({ ...steps[0]! })
    let i = 1
    const tick = () => {
      const step = steps[i++]
      const last = step === undefined
      const payload: JobPayload = !last ? { ...step }
        : result === 'success'
          // Nothing is downloaded: the file is named, never served, so the page shows no link.
          ? { status: 'completed', progress: 100, message: 'Ready', result: { file: `downloads/${jobId}.mp4`, size_mb: 80 + Math.floor(Math.random() * 900), simulated: true } }
          : { status: 'failed', progress: steps.at(-1)!.progress, message: 'Download failed', error: FAILURES[Math.floor(Math.random() * FAILURES.length)] }
      publish(payload).catch((err: Error) => this.ctx.log.warn({ job: jobId, err: err.message }, 'demo job could not report progress'))
      this.timers.delete(timer)
      if (!last) {
        timer = setTimeout(tick, stepMs * (0.6 + Math.random() * 0.8))
        this.timers.add(timer)
      }
    }
    let timer = setTimeout(tick, stepMs)
    this.timers.add(timer)
    return jobId
  }

  stop(): void {
    for (const t of this.timers) clearTimeout(t)
    this.timers.clear()
  }
}

export function addDemoRoutes(app: TemplatedApp, ctx: DemoContext, demo: DemoProducer): void {
  app.post('/demo/jobs', (res, req) => {
    const credentials = credentialsOf(req)
    const outcome = (req.getQuery('outcome') || 'random') as Outcome
    const stepMs = Math.min(5000, Math.max(20, Number(req.getQuery('step_ms') || 450)))
    const origin = req.getHeader('origin')
    const ownPage = sameOriginOnly(origin, req.getHeader('host'), req.getHeader('sec-fetch-site'))
    const aborted = trackAborted(res)
    res.onData(() => undefined) // the body, if any, is not used
    if (!ownPage) {
      return respondJson(res, 403, { error: 'origin_not_allowed', message: `the demo routes answer only the gateway's own page, not ${origin || 'a cross-site request'}` }, {}, true)
    }
    if (!['success', 'fail', 'random'].includes(outcome)) return respondJson(res, 400, { error: 'bad_outcome', message: 'outcome is success, fail or random' })
    if (demo.running >= MAX_RUNNING) return respondJson(res, 429, { error: 'busy', message: `at most ${MAX_RUNNING} demo jobs at once` })
    void (async () => {
      // The job belongs to the caller, who may then watch it and finds it in GET /jobs?owner=me
      // after a reload; with access control off, to the one local user.
      const principal = await ctx.access.authenticate(credentials, 'http')
      if (principal instanceof AuthError) return aborted.aborted || respondUnauthorized(res, principal.message, false, authCode(principal))
      const owner = principal?.userId ?? LOCAL_USER
      try {
        const jobId = await demo.start(owner, outcome, stepMs)
        if (!aborted.aborted) respondJson(res, 200, { job_id: jobId })
      } catch (err) {
        if (!aborted.aborted) respondJson(res, 503, { error: 'unavailable', message: (err as Error).message })
      }
    })()
  })
}
