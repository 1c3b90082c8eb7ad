-- The run_at and status of a slice of one of the queue's collections (a listing sorts these,
-- then reads whole only the tasks of its page: payloads stay on the server).
-- KEYS: one collection: a sorted set, or the failed set (read whole)
-- ARGV: base, first rank, last rank, 'set' when KEYS[1] is a set
-- Returns one MessagePack array: [entries in the slice, [id, run_at, status, ...]]
local ids
if ARGV[4] == 'set' then
  ids = redis.call('SMEMBERS', KEYS[1])
else
  ids = redis.call('ZRANGE', KEYS[1], ARGV[2], ARGV[3])
end
local out = {}
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', ARGV[1] .. 't:' .. id, 'r', 's')
  if f[1] then
    local n = #out
    out[n + 1], out[n + 2], out[n + 3] = id, f[1], f[2]
  end
end
return cmsgpack.pack({#ids, out})
