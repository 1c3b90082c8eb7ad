-- An operator's kill of a task that has not finished (pending, failed or running).
-- KEYS: ready, scheduled, running, failed, done, killed, cancelled
-- ARGV: base, now, retention ms, task id, reason, control channel
local base, id = ARGV[1], ARGV[4]
local f = redis.call('HMGET', base .. 't:' .. id, 's', 'k')
if f[1] ~= 'pending' and f[1] ~= 'failed' and f[1] ~= 'running' then return 0 end
finish(base, id, f[1], 'killed', ARGV[5], ARGV[2], ARGV[3], f[2], ARGV[6])
return 1
