-- An operator's kill of a task that has not finished (pending, failed or running).
-- KEYS: ready, scheduled, running, failed, killed
-- ARGV: base, now, retention ms, task id, reason
local base, id = ARGV[1], ARGV[4]
local task = base .. 't:' .. id
local f = redis.call('HMGET', task, 's', 'k')
if f[1] ~= 'pending' and f[1] ~= 'failed' and f[1] ~= 'running' then return 0 end
for i = 1, 4 do redis.call(i == 4 and 'SREM' or 'ZREM', KEYS[i], id) end
redis.call('HSET', task, 's', 'killed', 'e', ARGV[5], 'd', ARGV[2])
redis.call('HSET', task, 'l', '')
redis.call('ZADD', KEYS[5], ARGV[2], id)
redis.call('PEXPIRE', task, ARGV[3])
if f[2] then redis.call('PEXPIRE', base .. 'k:' .. f[2], ARGV[3]) end
return 1
