-- jobwire producer script: record a job's progress and publish it, in one atomic step.
-- Usable from any language (EVAL/EVALSHA, redis-py register_script, ioredis defineCommand).
--
-- KEYS[1]  the job's state key, <key prefix>job:<job id>   (default jobwire:job:<id>)
-- KEYS[2]  optional: the job's owner key, <key prefix>job-owner:<job id> (Redis Cluster:
--          <key prefix>job-owner:{<channel>}); derived from KEYS[1] when not given
-- ARGV[1]  the job's channel, <channel prefix><job id>     (default progress:<id>)
-- ARGV[2]  payload: a JSON object in UTF-8, or a msgpack map. It must not carry `seq`;
--          `ts` (ms since the epoch) is kept when given, otherwise set from the Redis clock.
--          `status`, when present, is one of queued, processing, completed, failed,
--          cancelled; `progress` a number from 0 to 100; `message` a string.
-- ARGV[3]  owner (user id) to record; '' leaves the recorded owner as it is
-- ARGV[4]  TTL in seconds while the job runs (default 86400)
-- ARGV[5]  TTL in seconds once its status is completed, failed or cancelled (default 3600)
-- ARGV[6]  '1' to replace an owner already recorded (admins only); otherwise a different
--          owner is refused and the recorded one stays
-- ARGV[7]  '1' to replace the stored state with the payload; otherwise (the default) the
--          payload's top-level fields are merged into the stored state
-- ARGV[8]  the key prefix (default: KEYS[1] up to its first 'job:'), which names the owner's
--          job index <key prefix>owner:<user> and its channel <key prefix>user-jobs:<user>
-- ARGV[9]  'SPUBLISH' on Redis Cluster: the state goes out on sharded pub/sub, so KEYS[1]
--          must hash to the channel's slot (<key prefix>job:{<channel>}); the owner's index,
--          which lives in other slots, is not kept by this script then. Otherwise (the
--          default) PUBLISH.
-- ARGV[10] '1' to return {seq, owner, previous owner} instead of seq: the job's owner after
--          this update ('' when it has none) and, when this update gave the job to another
--          owner, the one it was taken from (else ''). On Redis Cluster jobwire's producers
--          ask for them and keep the owner's index as a second step, in the owner's own slot:
--          ZREM the job from the previous owner's set, then run owner-index.lua (beside this
--          file) for the owner. The two steps are not atomic: when the second fails, the
--          update is stored and published but the job is missing from the owner's list (and
--          not announced) until the job's next update runs the second step again.
-- ARGV[11] '1' to restart: begin a new generation of the job (a new epoch; the payload
--          becomes the whole state; the owner is kept). The only way to take a job whose
--          status is completed, failed or cancelled back to queued or processing.
-- ARGV[12] if_seq: a compare-and-set. When given (not ''), the update is written only if the
--          job's seq is this number (a job without state is at 0); otherwise it is refused
--          with 'jobwire: if_seq <n> does not match the job's seq <m>'.
--
-- Effects: increments the job's seq; builds the new state by the merge rules of
-- docs/protocol.md: a top-level merge-patch of the payload onto the stored state (a field
-- set to null is deleted; a nested object replaces the stored one whole; a change of status
-- drops the stored message, error and result unless the payload sets them), with seq, epoch
-- and ts first, in the payload's encoding (msgpack: epoch as an integer, ts as float64); stores it,
-- records the owner, refreshes the TTL and PUBLISHes the stored bytes on the channel. A job
-- with an owner is indexed in the owner's sorted set (score: ms of its last update); when it
-- enters that set, its id is PUBLISHed on the owner's channel (not with SPUBLISH: see
-- ARGV[10]). Returns the new seq. Refused with an error before anything is written: a bad
-- payload (a key given twice too), another owner than the recorded one, an if_seq that does
-- not match, and an update that would make a final state (completed, failed, cancelled)
-- non-final within its epoch ('jobwire: job <id> is <status>: a final state is final; pass
-- restart to start a new generation'); adding to a final state (a result) is accepted.
--
-- State key layout (a hash): seq = integer, epoch = the generation (ms since the epoch when
-- it began), state = the state bytes as published, owner = user id. The gateway reads it
-- with HMGET <key> state owner. The owner key (KEYS[2], a string) holds the owner too and
-- outlives the state key: 7 days from the job's last write.

local key, channel, payload = KEYS[1], ARGV[1], ARGV[2]
local owner = ARGV[3] or ''
local replace_owner = ARGV[6] or ''
local replace_state = ARGV[7] == '1'
local restart = ARGV[11] == '1'
local if_seq = ARGV[12] or ''
local ttl = tonumber(ARGV[4] or '') or 86400
local terminal_ttl = tonumber(ARGV[5] or '') or 3600
-- Never both: a gateway hears SPUBLISH and PUBLISH separately, and would deliver twice.
local sharded = ARGV[9] == 'SPUBLISH'

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

-- The payload rules of src/wire/payload.ts: only what JSON can carry, finite numbers, nesting at
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


-- Merging works on the encoded bytes, member by member, so that what the producers wrote
-- survives as they wrote it: number formatting, empty arrays (cjson would turn [] into {}),
-- nested objects. Only a stored field in the other encoding is converted, value by value.

local function u16(s, i) local a, b = s:byte(i, i + 1); return a * 256 + b end
local function u32(s, i) local a, b, c, d = s:byte(i, i + 3); return ((a * 256 + b) * 256 + c) * 256 + d end

-- The index of the quote closing the JSON string that opens at i.
local function json_string_end(s, i)
  local pos = i + 1
  while true do
    local j = s:find('["\\]', pos)
    if s:byte(j) == 34 then return j end
    pos = j + 2
  end
end

-- The index just past the JSON value that starts at i (s is valid JSON).
local function json_value_end(s, i)
  local c = s:byte(i)
  if c == 34 then return json_string_end(s, i) + 1 end
  if c ~= 123 and c ~= 91 then return s:find('[%s,%]}]', i) or #s + 1 end
  local depth, pos = 0, i
  while true do
    local j = s:find('[{}%[%]"]', pos)
    local d = s:byte(j)
    if d == 34 then
      pos = json_string_end(s, j) + 1
    else
      depth = (d == 123 or d == 91) and depth + 1 or depth - 1
      pos = j + 1
      if depth == 0 then return pos end
    end
  end
end

-- The top-level members of a JSON object: { key = decoded key, raw = '"k":v', value = 'v' }.
local function json_members(s)
  local out = {}
  local pos = s:find('{', 1, true) + 1
  while true do
    pos = s:find('[^%s]', pos)
    local c = s:byte(pos)
    if c == 125 then return out end
    if c == 44 then pos = s:find('[^%s]', pos + 1) end
    local key_end = json_string_end(s, pos)
    local raw_key = s:sub(pos, key_end)
    local key = raw_key:find('\\', 1, true) and cjson.decode(raw_key) or raw_key:sub(2, -2)
    local value_start = s:find('[^%s]', s:find(':', key_end + 1, true) + 1)
    local value_end = json_value_end(s, value_start)
    local value = s:sub(value_start, value_end - 1)
    out[#out + 1] = { key = key, raw = raw_key .. ':' .. value, value = value }
    pos = value_end
  end
end

-- The index just past the msgpack value that starts at pos (s is well-formed).
local function msgpack_value_end(s, pos)
  local pending = 1
  while pending > 0 do
    local b = s:byte(pos)
    pending = pending - 1
    if b <= 0x7f or b >= 0xe0 or b == 0xc0 or b == 0xc2 or b == 0xc3 then pos = pos + 1
    elseif b >= 0xa0 and b <= 0xbf then pos = pos + 1 + b - 0xa0
    elseif b >= 0x90 and b <= 0x9f then pos, pending = pos + 1, pending + b - 0x90
    elseif b >= 0x80 and b <= 0x8f then pos, pending = pos + 1, pending + 2 * (b - 0x80)
    elseif b == 0xcc or b == 0xd0 then pos = pos + 2
    elseif b == 0xcd or b == 0xd1 then pos = pos + 3
    elseif b == 0xce or b == 0xd2 or b == 0xca then pos = pos + 5
    elseif b == 0xcf or b == 0xd3 or b == 0xcb then pos = pos + 9
    elseif b == 0xd9 then pos = pos + 2 + s:byte(pos + 1)
    elseif b == 0xda then pos = pos + 3 + u16(s, pos + 1)
    elseif b == 0xdb then pos = pos + 5 + u32(s, pos + 1)
    elseif b == 0xdc then pos, pending = pos + 3, pending + u16(s, pos + 1)
    elseif b == 0xdd then pos, pending = pos + 5, pending + u32(s, pos + 1)
    elseif b == 0xde then pos, pending = pos + 3, pending + 2 * u16(s, pos + 1)
    else pos, pending = pos + 5, pending + 2 * u32(s, pos + 1) end
  end
  return pos
end

local function msgpack_map_header(s)
  local b0 = s:byte(1)
  if b0 <= 0x8f then return b0 - 0x80, 2 end
  if b0 == 0xde then return u16(s, 2), 4 end
  return u32(s, 2), 6
end

-- The top-level entries of a msgpack map, shaped as json_members'.
local function msgpack_members(s)
  local out = {}
  local count, pos = msgpack_map_header(s)
  for i = 1, count do
    local key_end = msgpack_value_end(s, pos)
    local value_end = msgpack_value_end(s, key_end)
    out[i] = { key = cmsgpack.unpack(s:sub(pos, key_end - 1)), raw = s:sub(pos, value_end - 1), value = s:sub(key_end, value_end - 1) }
    pos = value_end
  end
  return out
end

local function msgpack_number(n)
  -- Integers within 2^53 as integers, as JavaScript encoders write them; others as float64.
  if n == math.floor(n) and math.abs(n) <= 9007199254740991 then return cmsgpack.pack(n) end
  return '\203' .. struct.pack('>d', n)
end

-- One JSON value (at i, s valid JSON) as msgpack bytes; returns them and the index past it.
local function json_to_msgpack(s, i)
  i = s:find('[^%s]', i)
  local c = s:byte(i)
  if c == 123 or c == 91 then
    local parts, n, close = {}, 0, c == 123 and 125 or 93
    local pos = s:find('[^%s]', i + 1)
    while s:byte(pos) ~= close do
      if c == 123 then
        local key_end = json_string_end(s, pos)
        parts[#parts + 1] = cmsgpack.pack(cjson.decode(s:sub(pos, key_end)))
        pos = s:find(':', key_end + 1, true) + 1
      end
      local bytes
      bytes, pos = json_to_msgpack(s, pos)
      parts[#parts + 1] = bytes
      n = n + 1
      pos = s:find('[^%s]', pos)
      if s:byte(pos) == 44 then pos = s:find('[^%s]', pos + 1) end
    end
    local header
    if n < 16 then header = string.char((c == 123 and 0x80 or 0x90) + n)
    elseif n < 65536 then header = string.char(c == 123 and 0xde or 0xdc, math.floor(n / 256), n % 256)
    else header = string.char(c == 123 and 0xdf or 0xdd, math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256) end
    return header .. table.concat(parts), pos + 1
  end
  local e = json_value_end(s, i)
  local text = s:sub(i, e - 1)
  if c == 34 then return cmsgpack.pack(cjson.decode(text)), e end
  if c == 116 then return '\195', e end
  if c == 102 then return '\194', e end
  if c == 110 then return '\192', e end
  return msgpack_number(tonumber(text)), e
end

local function json_number(n)
  if n == math.floor(n) and math.abs(n) <= 9007199254740991 then return string.format('%d', n) end
  -- The shortest text that reads back as the same number, as JavaScript writes numbers.
  for digits = 15, 16 do
    local text = string.format('%.' .. digits .. 'g', n)
    if tonumber(text) == n then return text end
  end
  return string.format('%.17g', n)
end

-- One msgpack value (at pos, well-formed) as JSON text; returns it and the index past it.
local function msgpack_to_json(s, pos)
  local b = s:byte(pos)
  if b <= 0x7f then return tostring(b), pos + 1 end
  if b >= 0xe0 then return tostring(b - 256), pos + 1 end
  if b == 0xc0 then return 'null', pos + 1 end
  if b == 0xc2 then return 'false', pos + 1 end
  if b == 0xc3 then return 'true', pos + 1 end
  local items, is_map, start
  if b >= 0x90 and b <= 0x9f then items, is_map, start = b - 0x90, false, pos + 1
  elseif b >= 0x80 and b <= 0x8f then items, is_map, start = b - 0x80, true, pos + 1
  elseif b == 0xdc or b == 0xde then items, is_map, start = u16(s, pos + 1), b == 0xde, pos + 3
  elseif b == 0xdd or b == 0xdf then items, is_map, start = u32(s, pos + 1), b == 0xdf, pos + 5 end
  if items then
    local parts = {}
    pos = start
    for k = 1, items do
      local text
      if is_map then
        local key_end = msgpack_value_end(s, pos)
        text = cjson.encode(cmsgpack.unpack(s:sub(pos, key_end - 1))) .. ':'
        pos = key_end
      end
      local value
      value, pos = msgpack_to_json(s, pos)
      parts[k] = (text or '') .. value
    end
    return (is_map and '{' or '[') .. table.concat(parts, ',') .. (is_map and '}' or ']'), pos
  end
  local e = msgpack_value_end(s, pos)
  local value = cmsgpack.unpack(s:sub(pos, e - 1))
  if type(value) == 'string' then return cjson.encode(value), e end
  return json_number(value), e
end

-- The payload's top-level members as written. A key given twice is refused: cjson and
-- cmsgpack would silently keep one of the two, and readers could disagree on which. A member
-- set to null (msgpack nil) deletes the field: a top-level JSON merge-patch.
local members = is_msgpack and msgpack_members(payload) or json_members(payload)
local given, deleted, kept = {}, {}, {}
for _, m in ipairs(members) do
  if given[m.key] then
    return redis.error_reply('jobwire: payload has the key ' .. cjson.encode(m.key) .. ' more than once')
  end
  given[m.key] = true
  if m.value == (is_msgpack and '\192' or 'null') then
    deleted[m.key] = true
    decoded[m.key] = nil
  else
    kept[#kept + 1] = m
  end
end

if given.seq then
  return redis.error_reply('jobwire: payload must not set seq; the script assigns it')
end
if given.epoch then
  return redis.error_reply('jobwire: payload must not set epoch; the script assigns it')
end
if given.ts and type(decoded.ts) ~= 'number' then
  return redis.error_reply('jobwire: ts must be a number (milliseconds since the epoch)')
end
-- The fields every jobwire page reads; one schema on every producer path (merge.ts too).
-- null deletes any of them.
local STATUSES = { queued = true, processing = true, completed = true, failed = true, cancelled = true }
if decoded.status ~= nil and not (type(decoded.status) == 'string' and STATUSES[decoded.status]) then
  return redis.error_reply('jobwire: status must be one of queued, processing, completed, failed, cancelled')
end
if decoded.progress ~= nil and not (type(decoded.progress) == 'number' and decoded.progress >= 0 and decoded.progress <= 100) then
  return redis.error_reply('jobwire: progress must be a number from 0 to 100')
end
if decoded.message ~= nil and type(decoded.message) ~= 'string' then
  return redis.error_reply('jobwire: message must be a string')
end

-- The key prefix and the job's id, from the state key (<key prefix>job:<job id>). On Redis
-- Cluster the key names the channel instead ({<channel>}), which holds the id after the
-- channel prefix; there the index is not this script's to keep, and the id only names the
-- job in refusals.
local prefix = ARGV[8]
if prefix == nil or prefix == '' then
  local at = key:find('job:', 1, true)
  prefix = at and key:sub(1, at - 1)
end
local job_id
if prefix and key:sub(1, #prefix + 4) == prefix .. 'job:' and #key > #prefix + 4 then
  job_id = key:sub(#prefix + 5)
end
local job_name = job_id or key
if sharded and job_name == '{' .. channel .. '}' then job_name = channel:gsub('^[^:]*:', '', 1) end

-- The owner also lives in its own key, <key prefix>job-owner:<job id> (on Redis Cluster
-- <key prefix>job-owner:{<channel>}, the state key's slot), kept 7 days from the last write:
-- when the state key lapses (its TTL) or is lost, a state created anew takes the owner from
-- there instead of starting without one, and another owner is refused as before.
local OWNER_TTL = 604800
local owner_key = KEYS[2]
if (owner_key == nil or owner_key == '') and prefix and key:sub(1, #prefix + 4) == prefix .. 'job:' and #key > #prefix + 4 then
  owner_key = prefix .. 'job-owner:' .. key:sub(#prefix + 5)
end

-- The owner is set when the job has none; replacing another owner takes the admin flag.
local recorded = redis.call('HGET', key, 'owner')
if not recorded and owner_key then recorded = redis.call('GET', owner_key) end
local replacing = owner ~= '' and recorded and recorded ~= owner
if replacing and replace_owner ~= '1' then
  return redis.error_reply('jobwire: the job belongs to another owner; only an admin may change it')
end

-- Compare-and-set for producers that race: nothing is written unless the job is where the
-- caller last saw it (a missing job is at seq 0).
local stored_seq = tonumber(redis.call('HGET', key, 'seq')) or 0
if if_seq ~= '' and tonumber(if_seq) ~= stored_seq then
  return redis.error_reply('jobwire: if_seq ' .. if_seq .. ' does not match the job\'s seq ' .. stored_seq)
end

-- The stored state. One that is not a valid payload (written by something other than this
-- script) is ignored, as the gateway ignores it.
local stored, stored_decoded, stored_msgpack
stored = redis.call('HGET', key, 'state')
if stored and #stored > 0 then
  local s0 = stored:byte(1)
  stored_msgpack = (s0 >= 0x80 and s0 <= 0x8f) or s0 == 0xde or s0 == 0xdf
  local ok, a, b
  if stored_msgpack then
    if msgpack_refusal(stored) == nil then ok, a, b = pcall(cmsgpack.unpack_one, stored) end
    if ok and a == -1 and type(b) == 'table' then stored_decoded = b end
  elseif stored:find('^%s*{') and valid_utf8(stored) then
    local lenient = cjson.decode_invalid_numbers()
    cjson.decode_invalid_numbers(false)
    ok, a = pcall(cjson.decode, stored)
    cjson.decode_invalid_numbers(lenient)
    if ok and type(a) == 'table' and value_refusal(a, 1) == nil then stored_decoded = a end
  end
end
if stored_decoded == nil then stored = nil end
local stored_status = stored_decoded and type(stored_decoded.status) == 'string' and stored_decoded.status or nil

local seq = stored_seq + 1
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local add_ts = decoded.ts == nil

-- The epoch names this generation of the job: new when the key is created (first write, or
-- after it expired or Redis lost it), when its owner is replaced and on restart. Within an
-- epoch states are ordered by seq; a different epoch is a different history.
-- Epochs are compared for equality only, so a new one need only differ from the last: the
-- low 32 bits of the millisecond clock (never 0), one more when that equals the last. 32 bits
-- travel as an integer in every msgpack decoder (a uint32), where milliseconds since 1970
-- need 41 and uint64 reads back as a BigInt in common decoders.
local epoch = tonumber(redis.call('HGET', key, 'epoch'))
local new_epoch = epoch == nil or replacing or restart
if new_epoch then
  local fresh = now_ms % 4294967296
  if fresh == epoch then fresh = (fresh + 1) % 4294967296 end
  if fresh == 0 then fresh = 1 end
  epoch = fresh
end

-- A new generation starts from nothing; so does replace. Otherwise the update is merged.
local merging = stored ~= nil and not replace_state and not new_epoch
local status
if given.status then status = decoded.status elseif merging then status = stored_status end
local function is_terminal(st) return st == 'completed' or st == 'failed' or st == 'cancelled' end
local terminal = is_terminal(status)

-- Final means final: within one epoch a completed, failed or cancelled job stays so. Adding
-- to it (a result, a message) is fine; running it again is a new generation, asked for.
if not new_epoch and is_terminal(stored_status) and not terminal then
  return redis.error_reply('jobwire: job ' .. job_name .. ' is ' .. stored_status .. ': a final state is final; pass restart to start a new generation')
end

-- The stored members the payload does not set, in the payload's encoding. A change of status
-- also drops the stored message, error and result: they described the previous status.
local carried = {}
if merging then
  local own = { seq = true, epoch = true, ts = true }
  for key_name in pairs(given) do own[key_name] = true end
  if given.status and status ~= stored_status then
    own.message, own.error, own.result = true, true, true
  end
  for _, m in ipairs(stored_msgpack and msgpack_members(stored) or json_members(stored)) do
    if not own[m.key] then
      if stored_msgpack == is_msgpack then
        carried[#carried + 1] = m.raw
      elseif is_msgpack then
        carried[#carried + 1] = cmsgpack.pack(m.key) .. json_to_msgpack(m.value, 1)
      else
        carried[#carried + 1] = cjson.encode(m.key) .. ':' .. msgpack_to_json(m.value, 1)
      end
    end
  end
end
local has_deleted = next(deleted) ~= nil

-- Integers as msgpack writes them (uint64 past 32 bits), never float64: epochs are compared
-- for equality and must read back exactly in every decoder.
-- An epoch (32 bits since this version: see the epoch below) as a msgpack uint; one a
-- previous version stored (milliseconds, past 32 bits) as float64, as that version wrote it,
-- since uint64 reads back as a BigInt in common decoders (msgpackr).
local function msgpack_uint(n)
  if n < 4294967296 then return cmsgpack.pack(n) end
  return '\203' .. struct.pack('>d', n)
end

local state
if is_msgpack then
  local count, body_start = msgpack_map_header(payload)
  local body
  if has_deleted then
    local parts = {}
    for i, m in ipairs(kept) do parts[i] = m.raw end
    body, count = table.concat(carried) .. table.concat(parts), #carried + #kept
  else
    body, count = table.concat(carried) .. payload:sub(body_start), count + #carried
  end
  local fields = cmsgpack.pack('seq') .. cmsgpack.pack(seq) .. cmsgpack.pack('epoch') .. msgpack_uint(epoch)
  if add_ts then
    count = count + 3
    -- ts stays float64, as JavaScript encoders write it: decoders that turn uint64 into
    -- BigInt would break arithmetic on it, and it is never compared for equality.
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
elseif merging or has_deleted then
  -- Members joined one by one: the payload's whitespace between them is not kept.
  for _, m in ipairs(kept) do carried[#carried + 1] = m.raw end
  local fields = string.format('"seq":%d,"epoch":%d', seq, epoch)
  if add_ts then fields = fields .. string.format(',"ts":%d', now_ms) end
  if #carried > 0 then fields = fields .. ',' .. table.concat(carried, ',') end
  state = '{' .. fields .. '}'
else
  -- No state to merge into: the producer's bytes follow unchanged.
  local open = select(2, payload:find('^%s*{'))
  local fields = string.format('"seq":%d,"epoch":%d', seq, epoch)
  if add_ts then fields = fields .. string.format(',"ts":%d', now_ms) end
  if #members > 0 then fields = fields .. ',' end
  state = '{' .. fields .. payload:sub(open + 1)
end
if #state > MAX_BYTES then
  return redis.error_reply('jobwire: the state would be larger than ' .. MAX_BYTES .. ' bytes with the fields jobwire adds and merges in; send fewer fields, or replace the state')
end

redis.call('HINCRBY', key, 'seq', 1)
if new_epoch then redis.call('HSET', key, 'epoch', epoch) end
redis.call('HSET', key, 'state', state)
if owner ~= '' or recorded then redis.call('HSET', key, 'owner', owner ~= '' and owner or recorded) end
if owner_key and (owner ~= '' or recorded) then redis.call('SET', owner_key, owner ~= '' and owner or recorded, 'EX', OWNER_TTL) end
redis.call('EXPIRE', key, terminal and terminal_ttl or ttl)
redis.call(sharded and 'SPUBLISH' or 'PUBLISH', channel, state)

-- The owner's index of jobs ("my jobs"): newest update last, pruned of jobs whose state has
-- expired for sure, capped, kept as long as the longest-lived job state it lists.
-- owner-index.lua does the same on Redis Cluster: keep the two in step.
local indexed_owner = (owner ~= '' and owner) or recorded
if not sharded and indexed_owner and job_id then
  if replacing then redis.call('ZREM', prefix .. 'owner:' .. recorded, job_id) end
  local index = prefix .. 'owner:' .. indexed_owner
  local keep = math.max(ttl, terminal_ttl)
  local added = redis.call('ZADD', index, now_ms, job_id)
  redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. string.format('%d', now_ms - keep * 1000))
  redis.call('ZREMRANGEBYRANK', index, 0, -1001)
  if redis.call('TTL', index) < keep then redis.call('EXPIRE', index, keep) end
  if added == 1 then redis.call('PUBLISH', prefix .. 'user-jobs:' .. indexed_owner, job_id) end
end
if ARGV[10] == '1' then
  -- Redis turns a Lua nil or false into a nil reply and ends an array at the first one: ''.
  return { seq, indexed_owner or '', replacing and recorded or '' }
end
return seq
