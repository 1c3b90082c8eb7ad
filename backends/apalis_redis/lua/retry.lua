-- An operator's retry: a failed or killed task runs again now with a fresh count of attempts.
-- KEYS: ready, scheduled, failed, killed
-- ARGV: base, now, wake channel, task id
local base, id = ARGV[1], ARGV[4]
local task = base .. 't:' .. id
local f = redis.call('HMGET', task, 's', 'pr', 'k')
if f[1] ~= 'failed' and f[1] ~= 'killed' then return 0 end
redis.call('PERSIST', task)
if f[3] then redis.call('PERSIST', base .. 'k:' .. f[3]) end
redis.call('HSET', task, 's', 'pending', 'a', 0, 'r', ARGV[2])
redis.call('HDEL', task, 'd')
redis.call('SREM', KEYS[3], id)
redis.call('ZREM', KEYS[4], id)
redis.call('ZREM', KEYS[2], id)
redis.call('ZADD', KEYS[1], string.format('%.17g', -tonumber(f[2]) * 1e10 + tonumber(ARGV[2])), id)
redis.call('PUBLISH', ARGV[3], '')
return 1
