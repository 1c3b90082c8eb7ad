-- Delete up to `limit` tasks of one status finished (or created) at or before a cutoff.
-- KEYS: the zset or set holding that status's ids, then ready, scheduled, running, failed, done, killed
-- ARGV: base, status, cutoff, limit
local base, status, cutoff = ARGV[1], ARGV[2], tonumber(ARGV[3])
local ids
if KEYS[1] == KEYS[5] then
  ids = redis.call('SMEMBERS', KEYS[1])
else
  ids = redis.call('ZRANGE', KEYS[1], 0, -1)
end
local deleted, limit = 0, tonumber(ARGV[4])
for _, id in ipairs(ids) do
  if deleted >= limit then break end
  local task = base .. 't:' .. id
  local f = redis.call('HMGET', task, 's', 'd', 'c', 'k')
  if f[1] == status and tonumber(f[2] or f[3]) <= cutoff then
    for i = 2, 7 do redis.call(i == 5 and 'SREM' or 'ZREM', KEYS[i], id) end
    if f[4] and redis.call('GET', base .. 'k:' .. f[4]) == id then redis.call('DEL', base .. 'k:' .. f[4]) end
    redis.call('DEL', task)
    deleted = deleted + 1
  end
end
return deleted
