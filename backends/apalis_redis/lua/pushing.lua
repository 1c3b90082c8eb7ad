-- The hand-over shared by enqueue.lua and push.lua: the store prepends this file to enqueue.lua,
-- and to push.lua inside the function `handing` (which builds these functions only when a push
-- finds a worker listed idle); a Redis script cannot call another. So a task pushed alone is
-- handed over exactly as one of a batch is. A new task that would be claimed next (due, nothing ready before it nor in a limit
-- key's line (lines.lua), no limit key, the queue not paused) is handed to a worker listed as
-- idle (handing.lua, prepended before this file): claimed for it here, one of its slots taken,
-- and published on the wake channel ('h' + MessagePack [worker id, the 10 fields claiming.lua
-- lists]), so that worker starts it at once.
-- keys: {ready, scheduled, idle, handed, running}

local HAND_MAX = 16384 -- larger payloads are not sent to every listening process

-- may_hand(keys, base, now): whether a task pushed now would be the next one claimed, and a
-- worker may be listed idle.
local function may_hand(keys, base, now)
  return redis.call('EXISTS', keys[3]) == 1 and redis.call('EXISTS', keys[1]) == 0
    and redis.call('EXISTS', base .. 'paused') == 0 and redis.call('EXISTS', base .. 'parked', base .. 'heads') == 0
    and #redis.call('ZRANGEBYSCORE', keys[2], '-inf', now, 'LIMIT', 0, 1) == 0
end

-- hand(keys, base, now_text, wake, task): claim the new task for the first worker listed idle
-- (listings past their time are dropped) and publish it on `wake`; true when handed. `task` is
-- {id, payload, max_attempts, run_at, priority, idempotency key, meta} as pushed (strings).
local function hand(keys, base, now_text, wake, task)
  if #task[2] > HAND_MAX then return false end
  local now_ms = math.floor(tonumber(now_text) * 1000)
  while true do
    local first = redis.call('ZRANGE', keys[3], 0, 0, 'WITHSCORES')
    if #first == 0 then return false end
    local worker, score = first[1], tonumber(first[2])
    if score - score % LISTED >= now_ms * LISTED then
      local id = task[1]
      take_slot(keys[3], keys[4], worker, score, id)
      redis.call('HSET', base .. 't:' .. id, 's', 'running', 'a', '1', 'l', worker)
      redis.call('ZADD', keys[5], string.format('%d', now_ms), id)
      redis.call('PUBLISH', wake, 'h' .. cmsgpack.pack({worker, id, task[2], 1, task[3], task[4], task[5],
        task[6], task[7], now_text, ''}))
      return true
    end
    redis.call('ZREM', keys[3], worker)
  end
end

-- ready_score(priority, run_at): the ready set's score (ZPOPMIN: priority DESC, run_at ASC).
local function ready_score(priority, run_at)
  return string.format('%.17g', -priority * 1e10 + run_at)
end
