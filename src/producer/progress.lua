-- jobwire producer script: record a job's progress and publish it, in one atomic step.
-- Usable from any language (EVAL/EVALSHA, redis-py register_script, ioredis defineCommand).
--
-- KEYS[1]  the job's state key, <key prefix>job:<job id>   (default jobwire:job:<id>)
-- ARGV[1]  the job's channel, <channel prefix><job id>     (default progress:<id>)
-- ARGV[2]  payload: a JSON object in UTF-8, or a msgpack map. It must not carry `seq`;
--          `ts` (ms since the epoch) is kept when given, otherwise set from the Redis clock.
-- ARGV[3]  owner (user id) to record; '' leaves the recorded owner as it is
-- ARGV[4]  TTL in seconds while the job runs (default 86400)
-- ARGV[5]  TTL in seconds once its status is completed, failed or cancelled (default 3600)
-- ARGV[6]  '1' to replace an owner already recorded (admins only); otherwise a different
--          owner is refused and the recorded one stays
--
-- Effects: increments the job's seq, stores the payload with seq, epoch and ts merged in as
-- the job's state, records the owner, refreshes the TTL and PUBLISHes the stored bytes on the
-- channel. Returns the new seq. A bad payload, or another owner than the recorded one, is
-- refused with an error before anything is written.
--
-- State key layout (a hash): seq = integer, epoch = the generation (ms since the epoch when
-- it began), state = the payload bytes as published, owner = user id. The gateway reads it
-- with HMGET <key> state owner.

local key, channel, payload = KEYS[1], ARGV[1], ARGV[2]
local owner = ARGV[3] or ''
local replace_owner = ARGV[6] or ''
local ttl = tonumber(ARGV[4] or '') or 86400
local terminal_ttl = tonumber(ARGV[5] or '') or 3600

if key == nil or channel == nil or payload == nil then
  return redis.error_reply('jobwire: usage: KEYS[1]=state key, ARGV[1]=channel, ARGV[2]=payload')
end

-- The gateway forwards only valid UTF-8 JSON; refuse here what it would drop there.
local function valid_utf8(s)
  if not s:find('[\128-\255]') then return true end
  local i, n = 1, #s
  while i <= n do
    local c = s:byte(i)
    if c < 0x80 then
      i = i + 1
    elseif c >= 0xC2 and c <= 0xDF then
      local c2 = s:byte(i + 1)
      if not c2 or c2 < 0x80 or c2 > 0xBF then return false end
      i = i + 2
    elseif c >= 0xE0 and c <= 0xEF then
      local c2, c3 = s:byte(i + 1, i + 2)
      if not c3 or c3 < 0x80 or c3 > 0xBF then return false end
      local lo, hi = 0x80, 0xBF
      if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
      if c2 < lo or c2 > hi then return false end
      i = i + 3
    elseif c >= 0xF0 and c <= 0xF4 then
      local c2, c3, c4 = s:byte(i + 1, i + 3)
      if not c4 or c3 < 0x80 or c3 > 0xBF or c4 < 0x80 or c4 > 0xBF then return false end
      local lo, hi = 0x80, 0xBF
      if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
      if c2 < lo or c2 > hi then return false end
      i = i + 4
    else
      return false
    end
  end
  return true
end

-- The payload rules of src/payload.ts: only what JSON can carry, finite numbers, nesting at
-- most MAX_DEPTH deep, at most MAX_BYTES. The gateway drops anything else, so refuse it here.
local MAX_DEPTH, MAX_BYTES = 64, 262144

-- Walks a msgpack value's bytes: JSON's types only (no bin, ext or timestamp), string map keys.
-- cmsgpack would turn bin into a string and integer keys into a table, hiding both.
local function msgpack_refusal(s)
  local n, pos, depth = #s, 1, 0
  local remaining, is_map = {}, {}
  while true do
    if pos > n then return 'payload is not one well-formed msgpack map' end
    local b = s:byte(pos)
    if depth > 0 and is_map[depth] and remaining[depth] % 2 == 0 then
      if not ((b >= 0xa0 and b <= 0xbf) or b == 0xd9 or b == 0xda or b == 0xdb) then
        return 'msgpack payload has a map key that is not a string'
      end
    end
    pos = pos + 1
    local skip, open, open_map = 0, -1, false
    if b <= 0x7f or b >= 0xe0 or b == 0xc0 or b == 0xc2 or b == 0xc3 then skip = 0
    elseif b >= 0xa0 and b <= 0xbf then skip = b - 0xa0
    elseif b >= 0x90 and b <= 0x9f then open = b - 0x90
    elseif b >= 0x80 and b <= 0x8f then open, open_map = b - 0x80, true
    elseif b == 0xcc or b == 0xd0 then skip = 1
    elseif b == 0xcd or b == 0xd1 then skip = 2
    elseif b == 0xce or b == 0xd2 or b == 0xca then skip = 4
    elseif b == 0xcf or b == 0xd3 or b == 0xcb then skip = 8
    elseif b == 0xd9 then skip = 1 + (s:byte(pos) or 0)
    elseif b == 0xda then local h1, h2 = s:byte(pos, pos + 1); skip = 2 + (h1 or 0) * 256 + (h2 or 0)
    elseif b == 0xdb then local h1, h2, h3, h4 = s:byte(pos, pos + 3); skip = 4 + (((h1 or 0) * 256 + (h2 or 0)) * 256 + (h3 or 0)) * 256 + (h4 or 0)
    elseif b == 0xdc or b == 0xde then local h1, h2 = s:byte(pos, pos + 1); open, open_map = (h1 or 0) * 256 + (h2 or 0), b == 0xde; pos = pos + 2
    elseif b == 0xdd or b == 0xdf then local h1, h2, h3, h4 = s:byte(pos, pos + 3); open, open_map = (((h1 or 0) * 256 + (h2 or 0)) * 256 + (h3 or 0)) * 256 + (h4 or 0), b == 0xdf; pos = pos + 4
    elseif b == 0xc1 then return 'payload is not one well-formed msgpack map'
    else return 'msgpack payload uses a type JSON cannot carry (extension, binary or timestamp)' end
    pos = pos + skip
    if pos > n + 1 then return 'payload is not one well-formed msgpack map' end
    if depth > 0 then remaining[depth] = remaining[depth] - 1 end
    if open >= 0 then
      if depth >= MAX_DEPTH then return 'payload is nested deeper than ' .. MAX_DEPTH .. ' levels' end
      local items = open_map and open * 2 or open
      if items > n + 1 - pos then return 'payload is not one well-formed msgpack map' end
      depth = depth + 1
      remaining[depth], is_map[depth] = items, open_map
    end
    while depth > 0 and remaining[depth] == 0 do depth = depth - 1 end
    if depth == 0 then
      if pos == n + 1 then return nil end
      return 'payload is not one well-formed msgpack map'
    end
  end
end

-- Finite numbers and bounded nesting, on the decoded value (cjson reads 1e400 as inf).
local function value_refusal(v, depth)
  local t = type(v)
  if t == 'number' then
    if v ~= v or v == math.huge or v == -math.huge then
      return 'payload has a number that is not finite (NaN or Infinity)'
    end
  elseif t == 'table' then
    if depth > MAX_DEPTH then return 'payload is nested deeper than ' .. MAX_DEPTH .. ' levels' end
    for _, x in pairs(v) do
      local refusal = value_refusal(x, depth + 1)
      if refusal then return refusal end
    end
  end
  return nil
end

local b0 = payload:byte(1)
if b0 == nil then return redis.error_reply('jobwire: empty payload') end
if #payload > MAX_BYTES then
  return redis.error_reply('jobwire: payload is larger than ' .. MAX_BYTES .. ' bytes')
end
local is_msgpack = (b0 >= 0x80 and b0 <= 0x8f) or b0 == 0xde or b0 == 0xdf

local decoded
if is_msgpack then
  local refusal = msgpack_refusal(payload)
  if refusal then return redis.error_reply('jobwire: ' .. refusal) end
  local ok, next_offset, value = pcall(cmsgpack.unpack_one, payload)
  if not ok or next_offset ~= -1 or type(value) ~= 'table' then
    return redis.error_reply('jobwire: payload is not one well-formed msgpack map')
  end
  -- Lua tables drop nil values, so a key such as `seq` with a nil value would be invisible to
  -- the checks below: refuse maps whose key count does not match what Lua sees.
  local declared
  if b0 <= 0x8f then declared = b0 - 0x80
  elseif b0 == 0xde then local h1, h2 = payload:byte(2, 3); declared = h1 * 256 + h2
  else local h1, h2, h3, h4 = payload:byte(2, 5); declared = ((h1 * 256 + h2) * 256 + h3) * 256 + h4 end
  local seen = 0
  for _ in pairs(value) do seen = seen + 1 end
  if seen ~= declared then
    return redis.error_reply('jobwire: msgpack payload has nil values or repeated keys at the top level; leave such keys out')
  end
  decoded = value
else
  local open = select(2, payload:find('^%s*{'))
  if open == nil then
    return redis.error_reply('jobwire: payload must be a JSON object or a msgpack map')
  end
  if not valid_utf8(payload) then
    return redis.error_reply('jobwire: JSON payload is not valid UTF-8')
  end
  -- NaN, Infinity and hex numbers are not JSON; restore the setting for other scripts.
  local lenient = cjson.decode_invalid_numbers()
  cjson.decode_invalid_numbers(false)
  local ok, value = pcall(cjson.decode, payload)
  cjson.decode_invalid_numbers(lenient)
  if not ok or type(value) ~= 'table' then
    return redis.error_reply('jobwire: payload is not a valid JSON object')
  end
  decoded = value
end

do
  local refusal = value_refusal(decoded, 1)
  if refusal then return redis.error_reply('jobwire: ' .. refusal) end
end

if decoded.seq ~= nil then
  return redis.error_reply('jobwire: payload must not set seq; the script assigns it')
end
if decoded.epoch ~= nil then
  return redis.error_reply('jobwire: payload must not set epoch; the script assigns it')
end
if decoded.ts ~= nil and type(decoded.ts) ~= 'number' then
  return redis.error_reply('jobwire: ts must be a number (milliseconds since the epoch)')
end

-- The owner is set when the job has none; replacing another owner takes the admin flag.
local recorded = redis.call('HGET', key, 'owner')
local replacing = owner ~= '' and recorded and recorded ~= owner
if replacing and replace_owner ~= '1' then
  return redis.error_reply('jobwire: the job belongs to another owner; only an admin may change it')
end

local seq = redis.call('HINCRBY', key, 'seq', 1)
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local add_ts = decoded.ts == nil

-- The epoch names this generation of the job: new when the key is created (first write, or
-- after it expired or Redis lost it) and when its owner is replaced. Readers order states by
-- (epoch, seq) and take a new epoch as the new truth.
local epoch = tonumber(redis.call('HGET', key, 'epoch'))
if epoch == nil or replacing then
  epoch = math.max(now_ms, (epoch or 0) + 1)
  redis.call('HSET', key, 'epoch', epoch)
end

local state
if is_msgpack then
  local count, body
  if b0 <= 0x8f then
    count, body = b0 - 0x80, payload:sub(2)
  elseif b0 == 0xde then
    local h1, h2 = payload:byte(2, 3)
    count, body = h1 * 256 + h2, payload:sub(4)
  else
    local h1, h2, h3, h4 = payload:byte(2, 5)
    count, body = ((h1 * 256 + h2) * 256 + h3) * 256 + h4, payload:sub(6)
  end
  -- epoch and ts as float64, as JavaScript's own msgpack encoders write such numbers:
  -- cmsgpack would write uint64, which many decoders turn into BigInt.
  local fields = cmsgpack.pack('seq') .. cmsgpack.pack(seq) .. cmsgpack.pack('epoch') .. '\203' .. struct.pack('>d', epoch)
  if add_ts then
    count = count + 3
    fields = fields .. cmsgpack.pack('ts') .. '\203' .. struct.pack('>d', now_ms)
  else
    count = count + 2
  end
  local header
  if count < 16 then
    header = string.char(0x80 + count)
  elseif count < 65536 then
    header = string.char(0xde, math.floor(count / 256), count % 256)
  else
    header = string.char(0xdf, math.floor(count / 16777216) % 256, math.floor(count / 65536) % 256,
      math.floor(count / 256) % 256, count % 256)
  end
  state = header .. fields .. body
else
  local open = select(2, payload:find('^%s*{'))
  local fields = string.format('"seq":%d,"epoch":%d', seq, epoch)
  if add_ts then fields = fields .. string.format(',"ts":%d', now_ms) end
  if next(decoded) ~= nil then fields = fields .. ',' end
  state = '{' .. fields .. payload:sub(open + 1)
end

redis.call('HSET', key, 'state', state)
if owner ~= '' then redis.call('HSET', key, 'owner', owner) end
local status = decoded.status
local terminal = status == 'completed' or status == 'failed' or status == 'cancelled'
redis.call('EXPIRE', key, terminal and terminal_ttl or ttl)
redis.call('PUBLISH', channel, state)
return seq
