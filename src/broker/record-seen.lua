-- jobwire: record the latest payload a gateway saw on a PUBLISH-only job's channel, so every
-- worker and node can answer late subscribers and GET /jobs/<id> with it. One recorder per job
-- at a time holds a lease; writes from any other gateway are refused, so a delayed write of an
-- older payload from a gateway that lost the lease can never replace a newer one (each
-- recorder sees the channel's messages in publish order).
--
-- KEYS[1]  the lease key, <key prefix>rec:<job id>
-- KEYS[2]  the job's state key, <key prefix>job:<job id>
-- ARGV[1]  the recorder's id (unique per gateway process)
-- ARGV[2]  the payload, as JSON
-- ARGV[3]  lease length in ms
-- ARGV[4]  TTL in seconds for the record (refreshed by every write)
-- Returns 1 when written, 3 when another gateway holds the lease and has recorded this very
-- payload (nothing left to do), 0 when another gateway holds the lease, 2 when the job has a
-- stored state.

-- A job the producer script manages has its stored state: that is the truth, and its TTL
-- (shorter once terminal) is the script's to set. A plain PUBLISH on such a job changes
-- neither; the gateway stores a final one through the producer script (recorder.ts).
if redis.call('HEXISTS', KEYS[2], 'state') == 1 then return 2 end
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  if redis.call('HGET', KEYS[2], 'seen') == ARGV[2] then return 3 end
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('HSET', KEYS[2], 'seen', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
