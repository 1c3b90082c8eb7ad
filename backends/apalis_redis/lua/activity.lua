-- What a board's overview shows of a queue (apalis_redis.browse): the run_at of its oldest task
-- ready now, and its tasks done and killed in each minute since a time.
-- KEYS: ready, scheduled, done, killed
-- ARGV: base, now, the first minute (whole epoch minutes), the last minute
-- Returns one MessagePack array: [oldest ready run_at or false, done per minute, killed per
--   minute] (a count for each minute from the first to the last)
local base, now = ARGV[1], tonumber(ARGV[2])
local first, last = tonumber(ARGV[3]), tonumber(ARGV[4])
local oldest = false

local function consider(run_at)
  if run_at and run_at <= now and (not oldest or run_at < oldest) then oldest = run_at end
end

-- The scheduled set is by run_at: its first entry is due once its time has come (a claim
-- promotes it).
local due = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if due[2] then consider(tonumber(due[2])) end
-- The ready set is by -priority * 1e10 + run_at: one band of 1e10 per priority, each by run_at,
-- so the oldest task is the first of one of the bands; bands are few (one per priority in use).
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local bands = 0
while head[1] and bands < 100 do
  consider(tonumber(redis.call('HGET', base .. 't:' .. head[1], 'r')))
  local band = math.floor(tonumber(head[2]) / 1e10)
  head = redis.call('ZRANGEBYSCORE', KEYS[1], string.format('%.17g', (band + 1) * 1e10), '+inf', 'WITHSCORES',
    'LIMIT', 0, 1)
  bands = bands + 1
end

local done, killed = {}, {}
for minute = first, last do
  local from, to = string.format('%.17g', minute * 60), '(' .. string.format('%.17g', (minute + 1) * 60)
  done[#done + 1] = redis.call('ZCOUNT', KEYS[3], from, to)
  killed[#killed + 1] = redis.call('ZCOUNT', KEYS[4], from, to)
end
return cmsgpack.pack({oldest, done, killed})
