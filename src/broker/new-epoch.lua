-- jobwire: begin a new epoch on a job's stored record, after a gateway saw Redis lose writes
-- to it: the record went back within one epoch (a replica, or a restored copy, that lacked the
-- last writes), so the producer script would count seq on from an older state and re-use
-- (epoch, seq) pairs that already named other states. A new epoch makes every state written
-- from here on a visibly new history, which clients take as such (docs/protocol.md, "State
-- model"). Compare-and-set: only while the record is still at the (epoch, seq) the gateway saw,
-- so of several gateways that noticed, one begins it, and a record that moved on is left alone.
--
-- KEYS[1]  the job's state key
-- ARGV[1]  the epoch the gateway found
-- ARGV[2]  the seq it found
-- ARGV[3]  the job's channel
-- ARGV[4]  'SPUBLISH' on Redis Cluster (sharded pub/sub); otherwise PUBLISH
-- Returns  the new epoch, or 0 when the record is not at (epoch, seq) any more.
--
-- The stored state is published again with the new epoch, so every gateway and client moves
-- to it at once. A JSON state keeps its bytes (only the leading `"epoch":` member is rewritten,
-- where the producer script puts it); a msgpack state, or JSON in another layout, is decoded
-- and encoded again.

local f = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'state')
if not f[3] or tonumber(f[1]) ~= tonumber(ARGV[1]) or tonumber(f[2]) ~= tonumber(ARGV[2]) then return 0 end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
-- As progress.lua picks a new epoch: the low 32 bits of the millisecond clock (never 0),
-- different from the one it replaces (epochs are compared for equality only).
local epoch = now % 4294967296
if epoch == tonumber(ARGV[1]) then epoch = (epoch + 1) % 4294967296 end
if epoch == 0 then epoch = 1 end
local text = string.format('%.0f', epoch)
local state = f[3]
local first = string.byte(state, 1)
local rewritten
-- msgpack as the script writes it: the epoch's value right after its key, replaced in place
-- (decoding and encoding again would turn ts, a float64, into a uint64, which some decoders
-- read as a BigInt).
local MSGPACK_VALUE_BYTES = { [0xcc] = 2, [0xcd] = 3, [0xce] = 5, [0xcf] = 9, [0xcb] = 9, [0xd3] = 9 }
if first ~= 123 then
  local key = '\165epoch'
  local at = string.find(state, key, 1, true)
  if at then
    local v = at + #key
    local b = string.byte(state, v)
    local len = b and (b <= 0x7f and 1 or MSGPACK_VALUE_BYTES[b])
    if len then rewritten = string.sub(state, 1, v - 1) .. cmsgpack.pack(epoch) .. string.sub(state, v + len) end
  end
end
if rewritten then
  -- done
elseif first == 123 then -- '{'
  local head, n = string.gsub(state, '^({%s*"seq"%s*:%s*%d+%s*,%s*"epoch"%s*:%s*)[%d%.eE%+%-]+', '%1' .. text, 1)
  if n == 1 then
    rewritten = head
  else
    local decoded = cjson.decode(state)
    decoded.epoch = epoch
    rewritten = cjson.encode(decoded)
  end
else
  local decoded = cmsgpack.unpack(state)
  decoded.epoch = epoch
  rewritten = cmsgpack.pack(decoded)
end
redis.call('HSET', KEYS[1], 'epoch', text, 'state', rewritten)
if ARGV[4] == 'SPUBLISH' then
  redis.call('SPUBLISH', ARGV[3], rewritten)
else
  redis.call('PUBLISH', ARGV[3], rewritten)
end
return epoch
