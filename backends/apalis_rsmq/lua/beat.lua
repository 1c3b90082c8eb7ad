-- A worker's beat: extend the lease of the messages it runs (changeMessageVisibility); give
-- back, visible at once and rc not counted, the messages it holds but does not run (a claim
-- whose reply was lost) once claimed more than keep_alive ago; drop side fields of messages
-- another client deleted; purge dead letters past retention.
-- KEYS: ns:<q>, ns:<q>:Q, ns:<q>:apalis, ns:<dead>, ns:<dead>:Q, ns:<dead>:apalis, claims
-- ARGV: lease ms, worker id, retention ms, purge limit, keep_alive ms, then the ids it runs
local t = redis.call('TIME')
local ts = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now = string.format('%.0f', ts)
local hidden = string.format('%.0f', ts + tonumber(ARGV[1]))
local me = ARGV[2]
local mine, extended = {}, 0
for i = 6, #ARGV do
  local id = ARGV[i]
  mine[id] = true
  if redis.call('HGET', KEYS[3], id .. ':lk') == me and redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], hidden, id)
    extended = extended + 1
  end
end
local old = string.format('%.0f', ts - tonumber(ARGV[5]))
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', old)) do
  if redis.call('HEXISTS', KEYS[2], id) == 0 or not redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZREM', KEYS[7], id) -- deleted by another client
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
  redis.call('HDEL', KEYS[6], id .. ':e', id .. ':rc', id .. ':ma', id .. ':at')
end
return {extended, #dead}
