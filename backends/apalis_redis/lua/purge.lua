-- Delete up to `limit` tasks of one status finished (or created) at or before a cutoff.
-- KEYS: ready, scheduled, running, failed, done, killed, cancelled, then the zset or set holding
--       that status's ids
-- ARGV: base, status, cutoff, limit
local base, status, cutoff = ARGV[1], ARGV[2], tonumber(ARGV[3])
local ids
if KEYS[8] == KEYS[4] then
  ids = redis.call('SMEMBERS', KEYS[8])
else
  ids = redis.call('ZRANGE', KEYS[8], 0, -1)
end
local deleted, limit = 0, tonumber(ARGV[4])
for _, id in ipairs(ids) do
  if deleted >= limit then break end
  local f = redis.call('HMGET', base .. 't:' .. id, 's', 'd', 'c', 'k')
  if f[1] == status and tonumber(f[2] or f[3]) <= cutoff then
    forget(base, id, status, f[4])
    deleted = deleted + 1
  end
end
return deleted
