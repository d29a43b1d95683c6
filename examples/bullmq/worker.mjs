// A BullMQ worker that reports progress the way BullMQ apps already do, with job.updateProgress.
// jobwire streams its jobs to browsers as bullmq:videos:<job id>, reading the queue's own Redis
// keys: nothing in this file knows about jobwire.
import { Worker } from 'bullmq'
import { Redis } from 'ioredis'

const connection = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', { maxRetriesPerRequest: null })
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

const worker = new Worker('videos', async (job) => {
  const { parts = 10, msPerPart = 500, failAt = null } = job.data
  for (let part = 1; part <= parts; part++) {
    await sleep(msPerPart)
    if (part === failAt) throw new Error(`could not transcode part ${part}`)
    await job.updateProgress({ percent: Math.round((100 * part) / parts), message: `part ${part} of ${parts}` })
  }
  return { url: `/videos/${job.id}.mp4`, parts }
}, { connection })

worker.on('ready', () => console.log('worker ready: queue videos'))
worker.on('completed', (job) => console.log(`job ${job.id} completed`))
worker.on('failed', (job, err) => console.log(`job ${job?.id} failed: ${err.message}`))
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    // close() lets the running job finish; a Redis that is gone would keep it waiting.
    setTimeout(() => process.exit(1), 10_000).unref()
    worker.close().then(() => connection.quit()).then(() => process.exit(0))
  })
}
