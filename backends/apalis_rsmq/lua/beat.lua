-- A worker's beat: extend the lease of the messages it runs (changeMessageVisibility); give
-- back, visible at once and rc not counted, the messages it holds but does not run (a claim
-- whose reply was lost) once claimed more than keep_alive ago; drop side fields of messages
-- another client deleted; purge dead letters past retention; answer the cancels requested of
-- the runs it holds and whether the queue is paused (the control channel tells a worker of a
-- cancel at once; this is the floor). A message it gives back whose cancel was requested is
-- cancelled instead.
-- KEYS: ns:<q>, ns:<q>:Q, ns:<q>:apalis, ns:<dead>, ns:<dead>:Q, ns:<dead>:apalis, claims
-- ARGV: lease ms, worker id, retention ms, purge limit, keep_alive ms, control channel, then the
--       ids it runs
-- Returns {extended, purged, {id, reason, ...} of cancels requested, 1 when paused}
local ts = now_ms()
local now = string.format('%.0f', ts)
local hidden = string.format('%.0f', ts + tonumber(ARGV[1]))
local me = ARGV[2]
local mine, extended, cancels = {}, 0, {}
for i = 7, #ARGV do
  local id = ARGV[i]
  mine[id] = true
  local side = redis.call('HMGET', KEYS[3], id .. ':lk', id .. ':cr')
  if side[1] == me and redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], hidden, id)
    extended = extended + 1
    if side[2] then cancels[#cancels + 1], cancels[#cancels + 2] = id, side[2] end
  end
end
local old = string.format('%.0f', ts - tonumber(ARGV[5]))
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', old)) do
  if redis.call('HEXISTS', KEYS[2], id) == 0 or not redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZREM', KEYS[7], id) -- deleted by another client
  elseif not mine[id] and redis.call('HGET', KEYS[3], id .. ':cr') and redis.call('HGET', KEYS[3], id .. ':lk') == me then
    bury(id, redis.call('HGET', KEYS[3], id .. ':cr'), 'cancelled', ARGV[6])
  elseif not mine[id] and redis.call('HGET', KEYS[3], id .. ':lk') == me then
    redis.call('ZADD', KEYS[1], now, id)
    if redis.call('HINCRBY', KEYS[2], id .. ':rc', -1) <= 0 then
      redis.call('HDEL', KEYS[2], id .. ':rc', id .. ':fr')
    end
    redis.call('HDEL', KEYS[3], id .. ':lk')
    redis.call('ZREM', KEYS[7], id)
  end
end
-- Side fields outlive messages that other rsmq clients delete: sweep when they pile up.
if redis.call('HLEN', KEYS[3]) > 3 * redis.call('ZCARD', KEYS[1]) + 3000 then
  for _, field in ipairs(redis.call('HKEYS', KEYS[3])) do
    local id = string.match(field, '^(.*):%a+$')
    if id and not redis.call('ZSCORE', KEYS[1], id) then redis.call('HDEL', KEYS[3], field) end
  end
end
local cutoff = string.format('%.0f', ts - tonumber(ARGV[3]))
local dead = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', cutoff, 'LIMIT', 0, tonumber(ARGV[4]))
for _, id in ipairs(dead) do
  redis.call('ZREM', KEYS[4], id)
  redis.call('HDEL', KEYS[5], id, id .. ':rc', id .. ':fr')
  redis.call('HDEL', KEYS[6], id .. ':e', id .. ':rc', id .. ':ma', id .. ':at', id .. ':st')
end
-- Waiters that gave up long ago on tasks that never ended (deleted by another client, say).
redis.call('ZREMRANGEBYSCORE', KEYS[3] .. ':waiting', '-inf', cutoff)
return {extended, #dead, cancels, redis.call('EXISTS', KEYS[3] .. ':paused')}
