-- A worker that stops unregisters, so what it left running is recovered at the next sweep; it
-- is no longer listed idle, and the tasks handed to it that it has not received (handing.lua)
-- go back to the queue, their attempts not counted (ended cancelled if a cancel was requested,
-- as ack.lua ends a released run).
-- KEYS: ready, scheduled, running, failed, done, killed, cancelled, workers, worker info, idle,
--       handed
-- ARGV: worker id, the id of the last task handed to it that it received ('' = none), base,
--       now, wake channel, retention ms, control channel
local me, base = ARGV[1], ARGV[3]
redis.call('ZREM', KEYS[10], me)
local woke = false
for _, id in ipairs(on_its_way(KEYS[11], base, me, ARGV[2])) do
  local task = base .. 't:' .. id
  local f = redis.call('HMGET', task, 'a', 'pr', 'r', 'cr', 'k', 'lk')
  if f[4] then
    finish(base, id, 'running', 'cancelled', f[4], ARGV[4], ARGV[6], f[5], ARGV[7])
  else
    local run_at = math.min(tonumber(f[3]), tonumber(ARGV[4]))
    redis.call('HSET', task, 's', 'pending', 'a', math.max(tonumber(f[1]) - 1, 0), 'l', '')
    redis.call('ZREM', KEYS[3], id)
    to_ready(KEYS[1], base, f[6], id, string.format('%.17g', -tonumber(f[2]) * 1e10 + run_at))
    woke = true
  end
end
redis.call('HDEL', KEYS[11], me)
if woke then redis.call('PUBLISH', ARGV[5], '') end
redis.call('ZREM', KEYS[8], me)
return redis.call('HDEL', KEYS[9], me)
