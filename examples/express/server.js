// Express + jobwire: GET /api/jobwire-token answers the logged-in user's token, which the page's
// JobsClient fetches (getToken) before every connection.
//
//   npm install && JOBWIRE_JWT_SECRET=<the gateway's secret> PORT=3000 npm start

import express from 'express'
import { mintJobwireToken } from './token.js'

const secret = process.env.JOBWIRE_JWT_SECRET
if (!secret) throw new Error('set JOBWIRE_JWT_SECRET to the gateway\'s --jwt-secret')

const app = express()

// Stands in for your own authentication (a session, a cookie, a header set by your proxy).
function currentUser(req) {
  return req.get('x-demo-user') || null
}

app.get('/api/jobwire-token', async (req, res) => {
  const user = currentUser(req)
  if (!user) return res.status(401).type('text/plain').send('log in first')
  res.type('text/plain').set('cache-control', 'no-store').send(await mintJobwireToken(user, secret))
})

const server = app.listen(Number(process.env.PORT ?? 3000), '127.0.0.1', () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`)
})
