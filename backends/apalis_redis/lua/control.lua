-- What the control plane's scripts share (cancel, retry, kill, purge, bulk, ack, heartbeat):
-- the store prepends this file to each of them, as it does claiming.lua (a script cannot call
-- another). Every one of them takes the same seven keys, in this order:
-- KEYS: ready, scheduled, running, failed, done, killed, cancelled
-- Two more keys of the queue are reached by name, under the queue's hash tag (base):
--   base .. 'waiting'  zset   task ids someone waits for (apalis push --wait), by when they began
--   base .. 'paused'   string present while the queue is paused (the claim hands out nothing)

-- Take `id` out of the collection(s) that hold a task of `status` (a waiting task with a limit
-- key may be in its key's line instead: lines.lua, prepended).
local function leave(id, status, base)
  if status == 'pending' or status == 'failed' then
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    local key = redis.call('HGET', base .. 't:' .. id, 'lk')
    if key then line_leave(base, key, id) end
    if status == 'failed' then redis.call('SREM', KEYS[4], id) end
  elseif status == 'running' then
    redis.call('ZREM', KEYS[3], id)
  elseif status == 'done' then
    redis.call('ZREM', KEYS[5], id)
  elseif status == 'killed' then
    redis.call('ZREM', KEYS[6], id)
  elseif status == 'cancelled' then
    redis.call('ZREM', KEYS[7], id)
  end
end

-- Tell whoever waits for `id` that it ended (one PUBLISH, only when someone waits).
local function ended(base, id, channel)
  if redis.call('ZREM', base .. 'waiting', id) == 1 then
    redis.call('PUBLISH', channel, 'f' .. id)
  end
end

-- The task `id` (now of `status`) ends killed or cancelled with `reason`, kept until retention
-- like the done ones; its cancel request, if any, is answered.
local function finish(base, id, status, to, reason, now, ttl, key, channel)
  local task = base .. 't:' .. id
  leave(id, status, base)
  redis.call('HSET', task, 's', to, 'e', reason, 'd', now, 'l', '')
  redis.call('HDEL', task, 'cr')
  redis.call('ZADD', to == 'killed' and KEYS[6] or KEYS[7], now, id)
  redis.call('PEXPIRE', task, ttl)
  if key then redis.call('PEXPIRE', base .. 'k:' .. key, ttl) end
  ended(base, id, channel)
end

-- A failed, killed or cancelled task runs again now with a fresh count of attempts.
local function again(base, id, status, priority, key, now)
  local task = base .. 't:' .. id
  leave(id, status, base)
  redis.call('PERSIST', task)
  if key then redis.call('PERSIST', base .. 'k:' .. key) end
  redis.call('HSET', task, 's', 'pending', 'a', 0, 'r', now)
  redis.call('HDEL', task, 'd', 'cr')
  local score = string.format('%.17g', -tonumber(priority) * 1e10 + tonumber(now))
  to_ready(KEYS[1], base, redis.call('HGET', task, 'lk'), id, score)
end

-- Delete the task `id` (of `status`) and its idempotency key.
local function forget(base, id, status, key)
  leave(id, status, base)
  if key and redis.call('GET', base .. 'k:' .. key) == id then redis.call('DEL', base .. 'k:' .. key) end
  redis.call('DEL', base .. 't:' .. id)
end

-- Cancel `id`: a waiting task ends cancelled at once (scripts run one at a time, so no claim can
-- take it meanwhile); a running one gets the request, and its worker is told on `channel`.
-- Returns 'cancelled', 'requested', 'final:' .. the status it had already ended with, or false
-- when not found.
local function cancel(base, id, reason, now, ttl, channel)
  local task = base .. 't:' .. id
  local f = redis.call('HMGET', task, 's', 'k', 'l')
  local status = f[1]
  if not status then return false end
  if status == 'pending' or status == 'failed' then
    finish(base, id, status, 'cancelled', reason, now, ttl, f[2], channel)
    return 'cancelled'
  end
  if status == 'running' then
    redis.call('HSET', task, 'cr', reason)
    redis.call('PUBLISH', channel, 'c' .. cmsgpack.pack({id, reason, f[3]}))
    return 'requested'
  end
  return 'final:' .. status
end
