-- jobwire owner index script: list a job under its owner ("my jobs") and announce it when it
-- is new there. On a single Redis progress.lua does this itself, in its atomic step; on Redis
-- Cluster the owner's keys live in other slots than the job's, so jobwire's producers run this
-- as a second step, in the owner's slot, after progress.lua (with its ARGV[10] '1', which
-- returns the owner) has stored and SPUBLISHed the update. The second step is not atomic with
-- the first: if it fails, the update stands, and the job is missing from the owner's list
-- (and was not announced) until its next update runs this again.
--
-- KEYS[1]  the owner's index, <key prefix>owner:<user>   (default jobwire:owner:<user>)
-- ARGV[1]  the job id
-- ARGV[2]  the owner's channel, <key prefix>user-jobs:<user>
-- ARGV[3]  seconds the index is kept: the longest state TTL, max(TTL, terminal TTL) of
--          progress.lua (default 86400)
--
-- Effects, as progress.lua's on a single Redis: the job enters (or moves up) the sorted set
-- scored with now in ms; entries older than ARGV[3] are pruned and at most the 1,000 most
-- recent kept; the set's TTL is raised to ARGV[3]; when the job was not in the set, its id is
-- PUBLISHed on the owner's channel (a classic PUBLISH, which a cluster broadcasts to every
-- node: the gateway hears it on its classic subscription). Returns 1 when the job entered the
-- set, else 0.

local index, job_id, channel = KEYS[1], ARGV[1], ARGV[2]
if index == nil or job_id == nil or job_id == '' or channel == nil or channel == '' then
  return redis.error_reply('jobwire: usage: KEYS[1]=owner index, ARGV[1]=job id, ARGV[2]=owner channel')
end
local keep = tonumber(ARGV[3] or '') or 86400

local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local added = redis.call('ZADD', index, now_ms, job_id)
redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. string.format('%d', now_ms - keep * 1000))
redis.call('ZREMRANGEBYRANK', index, 0, -1001)
if redis.call('TTL', index) < keep then redis.call('EXPIRE', index, keep) end
if added == 1 then redis.call('PUBLISH', channel, job_id) end
return added
