-- What the rsmq scripts share for dead letters and the control plane; the store prepends this
-- file to receive, ack, beat, kill, retry, cancel and bulk (a script cannot call another).
-- KEYS (every one of them): ns:<q>, ns:<q>:Q, ns:<q>:apalis, ns:<dead>, ns:<dead>:Q,
--   ns:<dead>:apalis, claims
-- rsmq keeps no status: apalis keeps its control record next to the queue, in keys rsmq
-- clients ignore, reached by name from our side hash (KEYS[3]):
--   <side>:paused      string  present while the queue is paused: our receive hands out nothing
--   <side>:waiting     zset    ids someone waits for (`wait`), so their end is published
--   <side>:end:<id>    string  how a waited-for task ended done (rsmq deletes it): MessagePack
--                              [result, done_at ms, receive count, max attempts, body], for the
--                              worker's retention
-- and per message in the side hash, <id>:cr, the reason of a cancel requested while it runs; in
-- the dead-letter queue's side hash, <id>:st = 'cancelled' for a cancelled task (else killed).

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Tell whoever waits for `id` that it ended (one PUBLISH, only when someone waits).
local function ended(id, channel)
  if redis.call('ZREM', KEYS[3] .. ':waiting', id) == 1 then
    redis.call('PUBLISH', channel, 'f' .. id)
    return true
  end
  return false
end

-- Move the live message `id` to the dead-letter queue (a plain rsmq queue, same id and body),
-- ending `status` ('killed' or 'cancelled') with `reason`; its side fields go with it.
local function to_dead(id, body, reason, status, now, rc, max_attempts, channel)
  redis.call('ZADD', KEYS[4], now, id)
  redis.call('HSET', KEYS[5], id, body)
  redis.call('HINCRBY', KEYS[5], 'totalsent', 1)
  redis.call('HSET', KEYS[6], id .. ':e', reason, id .. ':rc', rc or 0, id .. ':ma', max_attempts or '',
    id .. ':at', now)
  if status == 'cancelled' then redis.call('HSET', KEYS[6], id .. ':st', 'cancelled') end
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[7], id)
  redis.call('HDEL', KEYS[2], id, id .. ':rc', id .. ':fr')
  redis.call('HDEL', KEYS[3], id .. ':ma', id .. ':lk', id .. ':e', id .. ':cr')
  ended(id, channel)
end

-- Send the live message `id` (not running) to the dead-letter queue as `status`.
local function bury(id, reason, status, channel)
  local body = redis.call('HGET', KEYS[2], id)
  if not body then return false end
  to_dead(id, body, reason, status, string.format('%.0f', now_ms()), redis.call('HGET', KEYS[2], id .. ':rc'),
    redis.call('HGET', KEYS[3], id .. ':ma'), channel)
  return true
end

-- A dead letter goes back to its queue, visible now, with a fresh count of receives.
local function revive(id, now)
  local body = redis.call('HGET', KEYS[5], id)
  if not body then return false end
  local ma = redis.call('HGET', KEYS[6], id .. ':ma')
  redis.call('ZREM', KEYS[4], id)
  redis.call('HDEL', KEYS[5], id, id .. ':rc', id .. ':fr')
  redis.call('HDEL', KEYS[6], id .. ':e', id .. ':rc', id .. ':ma', id .. ':at', id .. ':st')
  redis.call('ZADD', KEYS[1], now, id)
  redis.call('HSET', KEYS[2], id, body)
  redis.call('HINCRBY', KEYS[2], 'totalsent', 1)
  if ma and ma ~= '' then redis.call('HSET', KEYS[3], id .. ':ma', ma) end
  return true
end

-- Cancel the message `id`: one not running goes to the dead-letter queue as cancelled at once
-- (scripts run one at a time: no receive takes it meanwhile); a running one gets the request,
-- and its worker is told on `channel`. Returns 'cancelled', 'requested', 'final:' .. the status
-- it had already ended with (killed, cancelled, done while its end is kept), or false when not
-- found.
local function cancel(id, reason, channel)
  if redis.call('ZSCORE', KEYS[1], id) and redis.call('HEXISTS', KEYS[2], id) == 1 then
    local lock = redis.call('HGET', KEYS[3], id .. ':lk')
    if lock then
      redis.call('HSET', KEYS[3], id .. ':cr', reason)
      redis.call('PUBLISH', channel, 'c' .. cmsgpack.pack({id, reason, lock}))
      return 'requested'
    end
    bury(id, reason, 'cancelled', channel)
    return 'cancelled'
  end
  if redis.call('ZSCORE', KEYS[4], id) then
    return 'final:' .. (redis.call('HGET', KEYS[6], id .. ':st') or 'killed')
  end
  if redis.call('EXISTS', KEYS[3] .. ':end:' .. id) == 1 then return 'final:done' end
  return false
end
