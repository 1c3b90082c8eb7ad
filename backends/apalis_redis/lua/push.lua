-- One task pushed alone with no idempotency key, meta, limit key or unique key (enqueue.lua
-- takes every other push): the same effect as enqueue.lua given that one task, from plain
-- arguments (no MessagePack either way) and with fewer checks. A task id already stored (a call
-- made again after its reply was lost) inserts nothing twice. Returns the id.
-- The client decides what its own clock decides (a script's times are the client's): the task's
-- ready-set score (ready_score's, as the shortest text of the same double), or '' when it is not
-- due yet. No number is parsed or formatted here unless a worker is listed idle.
-- `handing` (the store wraps handing.lua and pushing.lua in it, before this file) defines the
-- hand-over's functions only when it is called: a push that finds no worker idle, the common one
-- under load, does not build them (a tenth of a push's instructions on the server).
-- KEYS: ready, scheduled, idle, handed, running
-- ARGV: base, now, wake channel, id, payload, run_at, priority, max_attempts, ready score ('' =
--       not due)
local id = ARGV[4]
local task = ARGV[1] .. 't:' .. id
if redis.call('EXISTS', task) == 1 then return id end
redis.call('HSET', task, 'p', ARGV[5], 's', 'pending', 'a', '0', 'm', ARGV[8], 'r', ARGV[6], 'pr', ARGV[7], 'c', ARGV[2])
local score = ARGV[9]
if score == '' then
  redis.call('ZADD', KEYS[2], ARGV[6], id)
  return id
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  local may_hand, hand = handing()
  if may_hand(KEYS, ARGV[1], tonumber(ARGV[2]))
      and hand(KEYS, ARGV[1], ARGV[2], ARGV[3], {id, ARGV[5], ARGV[8], ARGV[6], ARGV[7], '', ''}) then
    return id
  end
end
redis.call('ZADD', KEYS[1], score, id)
redis.call('PUBLISH', ARGV[3], '')
return id
