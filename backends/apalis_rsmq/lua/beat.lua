-- A worker's beat: extend the lease of the messages it runs (changeMessageVisibility), drop
-- side fields of messages another client deleted, purge dead letters past retention.
-- KEYS: ns:<q>, ns:<q>:apalis, ns:<dead>, ns:<dead>:Q, ns:<dead>:apalis
-- ARGV: lease ms, worker id, retention ms, purge limit, then the ids the worker is running
local t = redis.call('TIME')
local ts = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local hidden = string.format('%.0f', ts + tonumber(ARGV[1]))
local extended = 0
for i = 5, #ARGV do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[2], id .. ':lk') == ARGV[2] and redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], hidden, id)
    extended = extended + 1
  end
end
-- Side fields outlive messages that other rsmq clients delete: sweep when they pile up.
if redis.call('HLEN', KEYS[2]) > 3 * redis.call('ZCARD', KEYS[1]) + 3000 then
  for _, field in ipairs(redis.call('HKEYS', KEYS[2])) do
    local id = string.match(field, '^(.*):%a+$')
    if id and not redis.call('ZSCORE', KEYS[1], id) then redis.call('HDEL', KEYS[2], field) end
  end
end
local cutoff = string.format('%.0f', ts - tonumber(ARGV[3]))
local dead = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', cutoff, 'LIMIT', 0, tonumber(ARGV[4]))
for _, id in ipairs(dead) do
  redis.call('ZREM', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id, id .. ':rc', id .. ':fr')
  redis.call('HDEL', KEYS[5], id .. ':e', id .. ':rc', id .. ':ma', id .. ':at')
end
return {extended, #dead}
