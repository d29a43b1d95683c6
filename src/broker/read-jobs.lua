-- jobwire: the stored records of several jobs in one command, for a snapshot read. A pipeline
-- of one HMGET per job costs the gateway one command object per job; in a subscribe storm
-- those wait on Redis long enough to outlive V8's young generation and were most of a
-- connection's RSS right after it (bench/heap.ts --sample). One script call per read is one.
--
-- KEYS     per job, two keys: its state key (<key prefix>job:<job id>) and its owner key
--          (<key prefix>job-owner:<job id>), where the producer script keeps the owner for
--          longer than the state, so that a state key that expired or was lost does not take
--          the owner with it.
-- Returns  state, owner, seen of each job in turn (nil where absent): 3 entries per job. The
--          owner is the state key's, else the owner key's. A key of another type (someone
--          wrote another type there) reads as absent: it is no job, and failing the call
--          would fail every other job read with it.

local out = {}
for i = 1, #KEYS / 2 do
  local fields = redis.pcall('HMGET', KEYS[2 * i - 1], 'state', 'owner', 'seen')
  if fields.err then fields = { false, false, false } end
  local owner = fields[2]
  if not owner then
    local kept = redis.pcall('GET', KEYS[2 * i])
    if type(kept) == 'string' then owner = kept end
  end
  out[3 * i - 2] = fields[1]
  out[3 * i - 1] = owner
  out[3 * i] = fields[3]
end
return out
