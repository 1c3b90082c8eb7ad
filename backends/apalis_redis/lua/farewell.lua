-- A worker that stops unregisters, so what it left running is recovered at the next sweep; it
-- is no longer listed idle, and a task handed to it that it has not received (claiming.lua)
-- goes back to the queue, its attempt not counted (ended cancelled if a cancel was requested,
-- as ack.lua ends a released run).
-- KEYS: ready, scheduled, running, failed, done, killed, cancelled, workers, worker info, idle,
--       handed
-- ARGV: worker id, the id of the last task handed to it that it received ('' = none), base,
--       now, wake channel, retention ms, control channel
local me, base = ARGV[1], ARGV[3]
redis.call('ZREM', KEYS[10], me)
local last = redis.call('HGET', KEYS[11], me)
redis.call('HDEL', KEYS[11], me)
if last and last ~= ARGV[2] then
  local task = base .. 't:' .. last
  local f = redis.call('HMGET', task, 's', 'l', 'a', 'pr', 'r', 'cr', 'k', 'lk')
  if f[1] == 'running' and f[2] == me then
    if f[6] then
      finish(base, last, 'running', 'cancelled', f[6], ARGV[4], ARGV[6], f[7], ARGV[7])
    else
      local run_at = math.min(tonumber(f[5]), tonumber(ARGV[4]))
      redis.call('HSET', task, 's', 'pending', 'a', math.max(tonumber(f[3]) - 1, 0), 'l', '')
      redis.call('ZREM', KEYS[3], last)
      to_ready(KEYS[1], base, f[8], last, string.format('%.17g', -tonumber(f[4]) * 1e10 + run_at))
      redis.call('PUBLISH', ARGV[5], '')
    end
  end
end
redis.call('ZREM', KEYS[8], me)
return redis.call('HDEL', KEYS[9], me)
