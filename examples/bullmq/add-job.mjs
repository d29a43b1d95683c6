// Adds one job to the videos queue, as an app would, and prints the demo page that watches it.
// `node add-job.mjs fail` adds one that fails half way.
import { Queue } from 'bullmq'
import { Redis } from 'ioredis'

const connection = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', { maxRetriesPerRequest: null })
const queue = new Queue('videos', { connection })
const job = await queue.add('transcode', { parts: 10, msPerPart: 500, failAt: process.argv[2] === 'fail' ? 5 : null, userId: 'demo-user' })
const gateway = process.env.JOBWIRE_URL ?? 'http://127.0.0.1:8080'
console.log(`added bullmq:videos:${job.id}`)
console.log(`watch it: ${gateway}/?watch=bullmq:videos:${job.id}`)
await queue.close()
await connection.quit()
