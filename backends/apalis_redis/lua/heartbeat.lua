-- One beat of one worker: register it, forget stale workers, recover their running tasks
-- (killed when attempts are exhausted), release this worker's claims it is not running
-- (a claim whose reply was lost), and purge finished tasks past retention.
-- KEYS: ready, running, failed, done, killed, workers, worker info
-- ARGV: base, now, wake channel, worker id, info JSON, stale cutoff ('-inf' while the caller's
--       own contact with the server is not steady: no worker is judged stale), release cutoff,
--       retention cutoff, purge limit, then the ids this worker is running
local base, now, me = ARGV[1], tonumber(ARGV[2]), ARGV[4]
redis.call('ZADD', KEYS[6], ARGV[2], me)
redis.call('HSET', KEYS[7], me, ARGV[5])
local stale = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', '(' .. ARGV[6])
for _, worker in ipairs(stale) do
  redis.call('ZREM', KEYS[6], worker)
  redis.call('HDEL', KEYS[7], worker)
end

local mine = {}
for i = 10, #ARGV do mine[ARGV[i]] = true end
local release_cutoff = tonumber(ARGV[7])
local recovered, woke = 0, false
local function back_to_ready(id, task, priority)
  redis.call('ZADD', KEYS[1], string.format('%.17g', -priority * 1e10 + now), id)
  redis.call('ZREM', KEYS[2], id)
  woke = true
end
local running = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = 1, #running, 2 do
  local id, claimed = running[i], tonumber(running[i + 1]) / 1000 -- scored in ms
  local task = base .. 't:' .. id
  local f = redis.call('HMGET', task, 's', 'l', 'a', 'm', 'pr')
  if f[1] ~= 'running' then
    redis.call('ZREM', KEYS[2], id)
  elseif f[2] == me then
    if not mine[id] and claimed < release_cutoff then
      redis.call('HSET', task, 's', 'pending', 'a', math.max(tonumber(f[3]) - 1, 0), 'r', ARGV[2], 'l', '')
      back_to_ready(id, task, tonumber(f[5]))
    end
  elseif not redis.call('ZSCORE', KEYS[6], f[2]) then
    local err = 'worker ' .. f[2] .. ' stopped sending heartbeats while running this task'
    recovered = recovered + 1
    if tonumber(f[3]) >= tonumber(f[4]) then
      redis.call('HSET', task, 's', 'killed', 'e', err, 'd', ARGV[2], 'l', '')
      redis.call('ZREM', KEYS[2], id)
      redis.call('ZADD', KEYS[5], ARGV[2], id)
    else
      redis.call('HSET', task, 's', 'failed', 'e', err, 'r', ARGV[2], 'l', '')
      redis.call('SADD', KEYS[3], id)
      back_to_ready(id, task, tonumber(f[5]))
    end
  end
end

local purged = 0
for _, finished in ipairs({KEYS[4], KEYS[5]}) do
  local ids = redis.call('ZRANGEBYSCORE', finished, '-inf', ARGV[8], 'LIMIT', 0, tonumber(ARGV[9]))
  for _, id in ipairs(ids) do
    local task = base .. 't:' .. id
    local key = redis.call('HGET', task, 'k')
    if key and redis.call('GET', base .. 'k:' .. key) == id then redis.call('DEL', base .. 'k:' .. key) end
    redis.call('DEL', task)
    redis.call('ZREM', finished, id)
  end
  purged = purged + #ids
end
if woke then redis.call('PUBLISH', ARGV[3], '') end
return {recovered, purged}
