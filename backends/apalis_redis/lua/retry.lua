-- An operator's retry: a failed, killed or cancelled task runs again now with a fresh count of
-- attempts.
-- KEYS: ready, scheduled, running, failed, done, killed, cancelled
-- ARGV: base, now, wake channel, task id
local base, id = ARGV[1], ARGV[4]
local f = redis.call('HMGET', base .. 't:' .. id, 's', 'pr', 'k')
if f[1] ~= 'failed' and f[1] ~= 'killed' and f[1] ~= 'cancelled' then return 0 end
again(base, id, f[1], f[2], f[3], ARGV[2])
redis.call('PUBLISH', ARGV[3], '')
return 1
