-- One task pushed alone with no idempotency key, meta, limit key or unique key (enqueue.lua
-- takes every other push): the same effect as enqueue.lua given that one task, from plain
-- arguments (no MessagePack either way) and with fewer checks. A task id already stored (a call
-- made again after its reply was lost) inserts nothing twice. Returns the id.
-- KEYS: ready, scheduled, idle, handed, running
-- ARGV: base, now, wake channel, id, payload, run_at, priority, max_attempts
local base, now_text, id = ARGV[1], ARGV[2], ARGV[4]
local task = base .. 't:' .. id
if redis.call('EXISTS', task) == 1 then return id end
redis.call('HSET', task, 'p', ARGV[5], 's', 'pending', 'a', 0, 'm', ARGV[8], 'r', ARGV[6], 'pr', ARGV[7], 'c', now_text)
local now, run_at = tonumber(now_text), tonumber(ARGV[6])
if run_at > now then
  redis.call('ZADD', KEYS[2], string.format('%.17g', run_at), id)
elseif not (may_hand(KEYS, base, now)
    and hand(KEYS, base, now_text, ARGV[3], {id, ARGV[5], ARGV[8], ARGV[6], ARGV[7], '', ''})) then
  redis.call('ZADD', KEYS[1], ready_score(tonumber(ARGV[7]), run_at), id)
  redis.call('PUBLISH', ARGV[3], '')
end
return id
