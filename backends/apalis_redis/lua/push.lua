-- One task pushed alone with no idempotency key, meta, limit key or unique key (enqueue.lua
-- takes every other push): the same effect as enqueue.lua given that one task, from plain
-- arguments (no MessagePack either way) and with fewer checks. A task id already stored (a call
-- made again after its reply was lost) inserts nothing twice. Returns the id.
-- The client decides what its own clock decides (a script's times are the client's): the task's
-- ready-set score (ready_score's, as the shortest text of the same double), or '' when it is not
-- due yet. A task due now at priority 0 (a push without options, the usual one) leaves out the
-- last three arguments: its run_at and its score are `now`. No number is parsed or formatted here
-- unless a worker is listed idle.
-- `handing` (the store wraps handing.lua and pushing.lua in it, before this file) defines the
-- hand-over's functions only when it is called: a push that finds no worker idle, the common one
-- under load, does not build them (a tenth of a push's instructions on the server).
-- KEYS: ready, scheduled, idle, handed, running
-- ARGV: base, wake channel, max_attempts, now, id, payload[, run_at, priority, ready score ('' =
--       not due)]
local base, now, id = ARGV[1], ARGV[4], ARGV[5]
local run_at, priority, score = ARGV[7] or now, ARGV[8] or '0', ARGV[9] or now
local task = base .. 't:' .. id
if redis.call('EXISTS', task) == 1 then return id end
redis.call('HSET', task, 'p', ARGV[6], 's', 'pending', 'a', '0', 'm', ARGV[3], 'r', run_at, 'pr', priority, 'c', now)
if score == '' then
  redis.call('ZADD', KEYS[2], run_at, id)
  return id
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  local may_hand, hand = handing()
  if may_hand(KEYS, base, tonumber(now))
      and hand(KEYS, base, now, ARGV[2], {id, ARGV[6], ARGV[3], run_at, priority, '', ''}) then
    return id
  end
end
redis.call('ZADD', KEYS[1], score, id)
redis.call('PUBLISH', ARGV[2], '')
return id
