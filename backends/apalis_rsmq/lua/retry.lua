-- An operator's retry: a dead letter goes back to its queue, or a failed message (one with an
-- error, not running) becomes visible now; either way with a fresh count of receives.
-- KEYS: ns:<q>, ns:<q>:Q, ns:<q>:apalis, ns:<dead>, ns:<dead>:Q, ns:<dead>:apalis, claims
-- ARGV: id, realtime channel ('' = off)
local id = ARGV[1]
local t = redis.call('TIME')
local now = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local body = redis.call('HGET', KEYS[5], id)
if body and redis.call('ZSCORE', KEYS[4], id) then
  local ma = redis.call('HGET', KEYS[6], id .. ':ma')
  redis.call('ZREM', KEYS[4], id)
  redis.call('HDEL', KEYS[5], id, id .. ':rc', id .. ':fr')
  redis.call('HDEL', KEYS[6], id .. ':e', id .. ':rc', id .. ':ma', id .. ':at')
  redis.call('ZADD', KEYS[1], now, id)
  redis.call('HSET', KEYS[2], id, body)
  redis.call('HINCRBY', KEYS[2], 'totalsent', 1)
  if ma and ma ~= '' then redis.call('HSET', KEYS[3], id .. ':ma', ma) end
else
  local side = redis.call('HMGET', KEYS[3], id .. ':e', id .. ':lk')
  if not side[1] or side[2] or not redis.call('HGET', KEYS[2], id) then return 0 end
  redis.call('ZADD', KEYS[1], now, id)
  redis.call('HDEL', KEYS[2], id .. ':rc', id .. ':fr')
end
if ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[2], redis.call('ZCARD', KEYS[1])) end
return 1
