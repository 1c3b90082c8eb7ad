-- Counts per status of a slice of a queue's sorted set or of its dead letters' (apalis_rsmq's
-- stats: the ids are read here, not their bodies, so counting a big queue moves no payloads).
-- KEYS: the sorted set (ns:<q> or ns:<dead>), its side hash (ns:<q>:apalis or ns:<dead>:apalis)
-- ARGV: 'dead' for the dead letters, first rank, last rank, now (ms)
-- Returns [entries in the slice, pending, running, failed, scheduled (pending or failed, not
--   visible yet)] or, for the dead letters, [entries in the slice, killed, cancelled]
local ids = redis.call('ZRANGE', KEYS[1], ARGV[2], ARGV[3], 'WITHSCORES')
local now = tonumber(ARGV[4])
if ARGV[1] == 'dead' then
  local killed, cancelled = 0, 0
  for i = 1, #ids, 2 do
    if redis.call('HGET', KEYS[2], ids[i] .. ':st') == 'cancelled' then
      cancelled = cancelled + 1
    else
      killed = killed + 1
    end
  end
  return {#ids / 2, killed, cancelled}
end
local pending, running, failed, scheduled = 0, 0, 0, 0
for i = 1, #ids, 2 do
  local f = redis.call('HMGET', KEYS[2], ids[i] .. ':lk', ids[i] .. ':e')
  if f[1] then
    running = running + 1
  else
    if f[2] then failed = failed + 1 else pending = pending + 1 end
    if tonumber(ids[i + 1]) > now then scheduled = scheduled + 1 end
  end
end
return {#ids / 2, pending, running, failed, scheduled}
