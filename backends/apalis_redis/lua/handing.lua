-- The idle listing and the tasks on their way, shared by every script that hands a task over or
-- reads what was handed (the store prepends this file to them: enqueue, claim, ack, heartbeat,
-- farewell; push.lua has it inside its function `handing`, with pushing.lua). A polling worker whose claim found fewer tasks than it had free slots is
-- listed idle for the rest: the zset `idle` scores it `until_ms * LISTED + slots`, the time in
-- ms until which the listing holds and how many tasks pushes may still hand it (1 to LISTED - 1).
-- A push of a task that would be claimed next claims it for the first listed worker, takes one
-- of its slots, and publishes the task on the wake channel (pushing.lua), so that worker starts
-- it without a claim of its own, also while it runs others. A run that ends gives its slot back
-- to the listing when its acknowledgement finds nothing to claim ahead (ack.lua).
-- `handed` (hash: worker id -> MessagePack array of the ids handed to it, in hand order, that it
-- may not have received yet) tells which tasks are on their way: the worker passes the id of the
-- last one it received (`got`; one pub/sub connection delivers them in order).
-- Both keys carry their format in their names (`idle:v2`, `handed:v2`: keys.HANDING_FORMAT):
-- daemons of the first format (a listing scored until_ms, one id per worker) use `idle` and
-- `handed`, so neither misreads the other's listings; a change of either format takes new names.

local LISTED = 1000

-- on_its_way(handed, base, worker, got): the tasks handed to `worker` that it has not received
-- (and still holds: one the heartbeat gave back as a lost claim no longer counts), in hand
-- order; those it received are forgotten.
local function on_its_way(handed, base, worker, got)
  local packed = redis.call('HGET', handed, worker)
  if not packed then return {} end
  local ids, out, from = cmsgpack.unpack(packed), {}, 1
  for i = #ids, 1, -1 do
    if ids[i] == got then
      from = i + 1
      break
    end
  end
  for i = from, #ids do
    local f = redis.call('HMGET', base .. 't:' .. ids[i], 's', 'l')
    if f[1] == 'running' and f[2] == worker then out[#out + 1] = ids[i] end
  end
  if #out == 0 then
    redis.call('HDEL', handed, worker)
  elseif #out < #ids then
    redis.call('HSET', handed, worker, cmsgpack.pack(out))
  end
  return out
end

-- list(idle, worker, slots, until_ms): `worker` may be handed `slots` tasks until `until_ms`
-- (unlisted when none).
local function list(idle, worker, slots, until_ms)
  if slots > 0 then
    redis.call('ZADD', idle, string.format('%d', tonumber(until_ms) * LISTED + math.min(slots, LISTED - 1)), worker)
  else
    redis.call('ZREM', idle, worker)
  end
end

-- list_more(idle, worker, slots, until_ms): `slots` more for `worker` (runs that ended freed
-- them), the listing now holding until `until_ms`.
local function list_more(idle, worker, slots, until_ms)
  if slots <= 0 then return end
  local score = redis.call('ZSCORE', idle, worker)
  if score then slots = slots + tonumber(score) % LISTED end
  list(idle, worker, slots, until_ms)
end

-- take_slot(idle, handed, worker, score, id): hand task `id` to `worker`, listed with `score`.
local function take_slot(idle, handed, worker, score, id)
  if score % LISTED > 1 then
    redis.call('ZADD', idle, string.format('%d', score - 1), worker)
  else
    redis.call('ZREM', idle, worker)
  end
  local packed = redis.call('HGET', handed, worker)
  local ids = packed and cmsgpack.unpack(packed) or {}
  ids[#ids + 1] = id
  redis.call('HSET', handed, worker, cmsgpack.pack(ids))
end
