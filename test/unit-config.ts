import t from 'tap'
import { ConfigError, loadConfig, OPTIONS } from '../src/support/config.js'

t.test('defaults', (t) => {
  const c = loadConfig({}, {})
  t.match(c, { host: '127.0.0.1', port: 8080, redisUrl: '', subscriptionMode: 'per-job', channelPrefix: 'progress:', keyPrefix: 'jobwire:', workers: 1 })
  t.ok(Object.isFrozen(c))
  t.end()
})

t.test('flags win over the environment; PORT and REDIS_URL work', (t) => {
  t.equal(loadConfig({}, { PORT: '9000' }).port, 9000)
  t.equal(loadConfig({ port: '9001' }, { PORT: '9000' }).port, 9001)
  t.equal(loadConfig({}, { REDIS_URL: 'redis://127.0.0.1:6380' }).redisUrl, 'redis://127.0.0.1:6380')
  t.equal(loadConfig({}, { JOBWIRE_SUBSCRIPTION_MODE: 'pattern' }).subscriptionMode, 'pattern')
  t.equal(loadConfig({}, { PORT: '' }).port, 8080, 'an empty variable counts as unset')
  t.end()
})

t.test('workers: auto is one per core with Redis and 1 embedded', (t) => {
  t.equal(loadConfig({}, {}).workers, 1)
  t.ok(loadConfig({ redis: 'redis://x:1' }, {}).workers >= 1)
  t.equal(loadConfig({ workers: '3', redis: 'redis://x:1' }, {}).workers, 3)
  t.throws(() => loadConfig({ workers: '3' }, {}), ConfigError)
  t.end()
})

t.test('every bad value names the option and what it accepts', (t) => {
  const bad: Array<[Record<string, string>, RegExp]> = [
    [{ port: '-1' }, /--port/],
    [{ port: '1.5' }, /whole number/],
    [{ 'channel-prefix': 'a b' }, /--channel-prefix/],
    [{ host: 'a/b' }, /not a host name/],
    [{ redis: 'not a url' }, /is not a URL/],
    [{ 'max-message-bytes': '10' }, /from 64 to/],
    [{ bogus: '1' }, /unknown option --bogus/],
  ]
  for (const [flags, message] of bad) t.throws(() => loadConfig(flags, {}), message)
  t.end()
})

t.test('every option has a flag, at least one environment variable and help text', (t) => {
  for (const o of OPTIONS) {
    t.ok(o.flag && o.env.length > 0 && o.help.length > 10, o.flag)
  }
  t.end()
})
