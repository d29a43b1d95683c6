// The startup line a node says once it listens: where it is, what it runs on, whether access
// control is on and where its pages are. Said by the only process (one worker) or by the
// primary once every worker listens.

import { isOpen, type Config } from '../support/config.js'
import type { Logger } from '../support/log.js'
import { VERSION } from '../support/version.js'
import { WS_PATH } from '../gateway.js'

export function announce(log: Logger, config: Config, port: number, uwsDetail: string, broker: string, workers: number): void {
  const host = config.host.includes(':') ? `[${config.host}]` : config.host
  const url = `http://${host}:${port}`
  const access = isOpen(config) ? (config.insecureNoAuth ? 'off (--insecure-no-auth)' : 'off (--open)') : 'on (every client needs a token)'
  const pages = { demo: `${url}/`, testPage: `${url}${WS_PATH}/test`, admin: `${url}/admin` }
  log.info({ version: VERSION, url, ws: `ws://${host}:${port}${WS_PATH}`, broker, workers, uws: uwsDetail, subscriptionMode: config.subscriptionMode, accessControl: access, ...pages },
    `jobwire listening on ${url} (version ${VERSION}; WebSocket ${WS_PATH}; broker: ${broker}; uWebSockets.js native ${uwsDetail}; workers: ${workers}; access control ${access}); ` +
    `demo ${pages.demo}, test page ${pages.testPage}, admin ${pages.admin}`)
}
