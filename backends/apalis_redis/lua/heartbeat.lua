-- One beat of one worker: register it, forget stale workers, recover their running tasks
-- (killed when attempts are exhausted, cancelled when a cancel was requested), release this
-- worker's claims it is not running (a claim whose reply was lost), purge finished tasks past
-- retention, drop gone tasks from unique keys' lists, and answer the cancels requested of this
-- worker's runs and whether the queue is paused (the control channel tells a worker of a cancel
-- at once; this is the floor).
-- KEYS: ready, scheduled, running, failed, done, killed, cancelled, workers, worker info, idle,
--       handed (handing.lua: a stale worker is no longer listed idle), then the earlier format's
--       idle and handed (keys.HANDING_FORMAT)
-- ARGV: base, now, wake channel, worker id, info JSON, stale cutoff ('-inf' while the caller's
--       own contact with the server is not steady: no worker is judged stale), release cutoff,
--       retention cutoff, purge limit, retention ms, control channel, the id of the last task
--       handed to this worker that it received ('' = none), then the ids this worker is running
-- Returns {recovered, purged, {id, reason, ...} of cancels requested, 1 when paused}
local base, now, me = ARGV[1], tonumber(ARGV[2]), ARGV[4]
local ttl, channel = ARGV[10], ARGV[11]
redis.call('ZADD', KEYS[8], ARGV[2], me)
redis.call('HSET', KEYS[9], me, ARGV[5])
local stale = redis.call('ZRANGEBYSCORE', KEYS[8], '-inf', '(' .. ARGV[6], 'WITHSCORES')
-- The tasks handed to a stale worker (handing.lua), by id: {worker, its last beat (s)}. One
-- handed after that beat never reached a handler (the worker was killed while listed idle, its
-- listing outliving it by up to a beat): it goes back ready with its attempt not counted, where
-- a counted one would kill a task allowed one attempt without its ever running. (A worker that
-- received it and was killed before its next beat gets it back so too: at most one run not
-- counted, since a task that comes back is claimed, never handed, again.)
local unreceived = {}
for i = 1, #stale, 2 do
  local worker = stale[i]
  local handed = redis.call('HGET', KEYS[11], worker)
  for _, id in ipairs(handed and cmsgpack.unpack(handed) or {}) do unreceived[id] = {worker, tonumber(stale[i + 1])} end
  redis.call('ZREM', KEYS[8], worker)
  redis.call('HDEL', KEYS[9], worker)
  redis.call('ZREM', KEYS[10], worker)
  redis.call('HDEL', KEYS[11], worker)
end
-- The earlier format's listing and tasks on their way (`idle`, `handed`: daemons before
-- keys.HANDING_FORMAT) are read by those daemons alone, and a worker of theirs that this format's
-- sweep found stale left its entries there for ever. An entry of a worker not registered is dead
-- (a worker registers before it claims, and the sweep recovered its tasks): dropped here, so the
-- keys go once the last such daemon is gone. One EXISTS a beat when they are not there.
if redis.call('EXISTS', KEYS[12], KEYS[13]) > 0 then
  for _, worker in ipairs(redis.call('ZRANGE', KEYS[12], 0, -1)) do
    if not redis.call('ZSCORE', KEYS[8], worker) then redis.call('ZREM', KEYS[12], worker) end
  end
  for _, worker in ipairs(redis.call('HKEYS', KEYS[13])) do
    if not redis.call('ZSCORE', KEYS[8], worker) then redis.call('HDEL', KEYS[13], worker) end
  end
end

local mine, cancels = {}, {}
for i = 13, #ARGV do mine[ARGV[i]] = true end
local release_cutoff = tonumber(ARGV[7])
-- A task handed to this worker (handing.lua) that it has not received may still be on its way
-- on the wake channel: given back only once as late as a worker is stale (its message lost).
local coming = {}
for _, id in ipairs(on_its_way(KEYS[11], base, me, ARGV[12])) do coming[id] = true end
local coming_cutoff = ARGV[6] == '-inf' and -math.huge or tonumber(ARGV[6])
local recovered, woke = 0, false
local function back_to_ready(id, key, priority)
  to_ready(KEYS[1], base, key, id, string.format('%.17g', -priority * 1e10 + now))
  redis.call('ZREM', KEYS[3], id)
  woke = true
end
local running = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
for i = 1, #running, 2 do
  local id, claimed = running[i], tonumber(running[i + 1]) / 1000 -- scored in ms
  local task = base .. 't:' .. id
  local f = redis.call('HMGET', task, 's', 'l', 'a', 'm', 'pr', 'k', 'cr', 'lk')
  -- Lost: no worker will acknowledge this run (its worker vanished, or this worker holds a
  -- claim it does not run).
  local lost = false
  if f[1] == 'running' and f[2] == me then
    lost = not mine[id] and claimed < (coming[id] and coming_cutoff or release_cutoff)
  elseif f[1] == 'running' then
    lost = not redis.call('ZSCORE', KEYS[8], f[2])
  end
  if f[1] ~= 'running' then
    redis.call('ZREM', KEYS[3], id)
  elseif lost and f[7] then
    -- A lost run whose cancel was requested ends cancelled: it never runs again.
    finish(base, id, 'running', 'cancelled', f[7], ARGV[2], ttl, f[6], channel)
    recovered = recovered + 1
  elseif f[2] == me then
    if mine[id] and f[7] then
      cancels[#cancels + 1], cancels[#cancels + 2] = id, f[7]
    elseif lost then
      redis.call('HSET', task, 's', 'pending', 'a', math.max(tonumber(f[3]) - 1, 0), 'r', ARGV[2], 'l', '')
      back_to_ready(id, f[8], tonumber(f[5]))
    end
  elseif lost and unreceived[id] and unreceived[id][1] == f[2] and unreceived[id][2] < claimed then
    redis.call('HSET', task, 's', 'pending', 'a', math.max(tonumber(f[3]) - 1, 0), 'r', ARGV[2], 'l', '')
    back_to_ready(id, f[8], tonumber(f[5]))
  elseif lost then
    local err = 'worker ' .. f[2] .. ' stopped sending heartbeats while running this task'
    recovered = recovered + 1
    if tonumber(f[3]) >= tonumber(f[4]) then
      redis.call('HSET', task, 's', 'killed', 'e', err, 'd', ARGV[2], 'l', '')
      redis.call('ZREM', KEYS[3], id)
      redis.call('ZADD', KEYS[6], ARGV[2], id)
      ended(base, id, channel)
    else
      redis.call('HSET', task, 's', 'failed', 'e', err, 'r', ARGV[2], 'l', '')
      redis.call('SADD', KEYS[4], id)
      back_to_ready(id, f[8], tonumber(f[5]))
    end
  end
end

local purged = 0
for _, finished in ipairs({KEYS[5], KEYS[6], KEYS[7]}) do
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
-- Waiters that gave up long ago on tasks that never ended (they were purged unfinished).
redis.call('ZREMRANGEBYSCORE', base .. 'waiting', '-inf', ARGV[8])
-- Unique keys' lists: the tasks that are gone leave them (unique.lua).
unique_sweep(base, ARGV[2], 20, 100)
if woke then redis.call('PUBLISH', ARGV[3], '') end
return {recovered, purged, cancels, redis.call('EXISTS', base .. 'paused')}
