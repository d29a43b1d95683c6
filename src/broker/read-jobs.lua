-- jobwire: the stored records of several jobs in one command, for a snapshot read. A pipeline
-- of one HMGET per job costs the gateway one command object per job; in a subscribe storm
-- those wait on Redis long enough to outlive V8's young generation and were most of a
-- connection's RSS right after it (bench/heap.ts --sample). One script call per read is one.
--
-- KEYS     the jobs' state keys, <key prefix>job:<job id>
-- Returns  state, owner, seen of each key in turn (nil where absent): 3 entries per key. A key
--          that is not a hash (someone wrote another type there) reads as absent: it is no job,
--          and failing the call would fail every other job read with it.

local out = {}
for i, key in ipairs(KEYS) do
  local fields = redis.pcall('HMGET', key, 'state', 'owner', 'seen')
  if fields.err then fields = { false, false, false } end
  out[3 * i - 2] = fields[1]
  out[3 * i - 1] = fields[2]
  out[3 * i] = fields[3]
end
return out
