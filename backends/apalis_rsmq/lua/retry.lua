-- An operator's retry: a dead letter (killed or cancelled) goes back to its queue, or a failed
-- message (one with an error, not running) becomes visible now; either way with a fresh count
-- of receives.
-- KEYS: ns:<q>, ns:<q>:Q, ns:<q>:apalis, ns:<dead>, ns:<dead>:Q, ns:<dead>:apalis, claims
-- ARGV: id, realtime channel ('' = off)
local id = ARGV[1]
local now = string.format('%.0f', now_ms())
if redis.call('ZSCORE', KEYS[4], id) and redis.call('HEXISTS', KEYS[5], id) == 1 then
  revive(id, now)
else
  local side = redis.call('HMGET', KEYS[3], id .. ':e', id .. ':lk')
  if not side[1] or side[2] or not redis.call('HGET', KEYS[2], id) then return 0 end
  redis.call('ZADD', KEYS[1], now, id)
  redis.call('HDEL', KEYS[2], id .. ':rc', id .. ':fr')
end
if ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[2], redis.call('ZCARD', KEYS[1])) end
return 1
