-- An operator's kill: the message moves to the dead-letter queue with the reason.
-- KEYS: ns:<q>, ns:<q>:Q, ns:<q>:apalis, ns:<dead>, ns:<dead>:Q, ns:<dead>:apalis, claims
-- ARGV: id, reason
local id = ARGV[1]
local body = redis.call('HGET', KEYS[2], id)
if not body or not redis.call('ZSCORE', KEYS[1], id) then return 0 end
local t = redis.call('TIME')
local now = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('ZADD', KEYS[4], now, id)
redis.call('HSET', KEYS[5], id, body)
redis.call('HINCRBY', KEYS[5], 'totalsent', 1)
redis.call('HSET', KEYS[6], id .. ':e', ARGV[2], id .. ':rc', redis.call('HGET', KEYS[2], id .. ':rc') or 0,
  id .. ':ma', redis.call('HGET', KEYS[3], id .. ':ma') or '', id .. ':at', now)
redis.call('ZREM', KEYS[1], id)
redis.call('ZREM', KEYS[7], id)
redis.call('HDEL', KEYS[2], id, id .. ':rc', id .. ':fr')
redis.call('HDEL', KEYS[3], id .. ':ma', id .. ':lk', id .. ':e')
return 1
