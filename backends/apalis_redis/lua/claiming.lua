-- The claim shared by claim.lua and ack.lua: the store prepends this file to both when it loads
-- them (a Redis script cannot call another), so a claim made alongside acknowledgements is the
-- very same claim.
-- keys: {ready, scheduled, running, failed}

-- promote(keys, base, now): the scheduled tasks that fell due join the ready set (a task with a
-- limit key joins its key's line: lines.lua, prepended).
local function promote(keys, base, now)
  local due = redis.call('ZRANGEBYSCORE', keys[2], '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(due) do
    local f = redis.call('HMGET', base .. 't:' .. id, 'pr', 'r', 'lk')
    if f[1] then
      to_ready(keys[1], base, f[3], id, string.format('%.17g', -tonumber(f[1]) * 1e10 + tonumber(f[2])))
    end
    redis.call('ZREM', keys[2], id)
  end
end

-- unpark(keys, base): the limit keys' lines (lines.lua) go back into the ready set whole, for a
-- worker that claims without those limits, their scores from milliseconds to the ready set's
-- seconds. Fewer tasks than the ready set holds are added one by one (each O(log N)): keyed
-- pushes arriving for such a worker would otherwise rebuild the whole ready set at every claim.
-- More are merged by one ZUNIONSTORE per 1000 lines (each rebuilds the ready set, so not one per
-- line).
local function unpark(keys, base)
  local parked, heads = base .. 'parked', base .. 'heads'
  local sets = {}
  for _, key in ipairs(redis.call('ZRANGE', parked, 0, -1)) do sets[#sets + 1] = base .. 'kp:' .. key end
  for _, key in ipairs(redis.call('ZRANGE', heads, 0, -1)) do sets[#sets + 1] = base .. 'kp:' .. key end
  local moving = 0
  for _, set in ipairs(sets) do moving = moving + redis.call('ZCARD', set) end
  if moving < redis.call('ZCARD', keys[1]) then
    for _, set in ipairs(sets) do
      local lined = redis.call('ZRANGE', set, 0, -1, 'WITHSCORES')
      for first = 1, #lined, 2000 do
        local added = {}
        for i = first, math.min(first + 1999, #lined), 2 do
          added[#added + 1], added[#added + 2] = string.format('%.17g', tonumber(lined[i + 1]) / 1000), lined[i]
        end
        redis.call('ZADD', keys[1], unpack(added))
      end
      redis.call('DEL', set)
    end
  else
    for first = 1, #sets, 1000 do
      local last = math.min(first + 999, #sets)
      local union = {keys[1], unpack(sets, first, last)}
      local count = #union
      union[#union + 1], union[#union + 2] = 'WEIGHTS', '1'
      for _ = 2, count do union[#union + 1] = '0.001' end
      union[#union + 1], union[#union + 2] = 'AGGREGATE', 'MIN'
      redis.call('ZUNIONSTORE', keys[1], count, unpack(union))
      redis.call('DEL', unpack(sets, first, last))
    end
  end
  redis.call('DEL', parked, heads, base .. 'below')
end

-- claim(keys, base, now, limit, worker, out): unless the queue is paused (the key base ..
-- 'paused', see control.lua), promote the due scheduled tasks, then take up to
-- `limit` ready tasks for `worker`, priority DESC then run_at ASC (the ready score is
-- -priority * 1e10 + run_at); appends 10 fields per task to `out`: id, payload, attempts,
-- max_attempts, run_at, priority, idempotency key, meta, created_at, last_error.
local function claim(keys, base, now, limit, worker, out)
  if redis.call('EXISTS', base .. 'paused') == 1 then return out end -- paused: nothing handed out
  promote(keys, base, now)
  if redis.call('EXISTS', base .. 'parked', base .. 'heads') > 0 then unpark(keys, base) end
  local popped = redis.call('ZPOPMIN', keys[1], limit)
  -- Claim time in integer milliseconds: a small sorted set is a listpack, which parses a
  -- fractional score from text at every entry it walks past, but reads an integer as is.
  local claimed_ms, running = string.format('%d', math.floor(tonumber(now) * 1000)), {}
  for i = 1, #popped, 2 do
    local id = popped[i]
    local task = base .. 't:' .. id
    local f = redis.call('HMGET', task, 's', 'p', 'a', 'm', 'r', 'pr', 'k', 'mt', 'c', 'e')
    if f[1] == 'pending' or f[1] == 'failed' then
      -- A first attempt, the usual case, written as is: a number passed to redis.call is printed
      -- with '%.14g' (printf's floating-point path), and '%d' parses it back from text first.
      local attempts, text = 1, '1'
      if f[3] ~= '0' then
        attempts = tonumber(f[3]) + 1
        text = string.format('%d', attempts)
      end
      redis.call('HSET', task, 's', 'running', 'a', text, 'l', worker)
      running[#running + 1], running[#running + 2] = claimed_ms, id
      if f[1] == 'failed' then redis.call('SREM', keys[4], id) end
      local n = #out
      out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5] = id, f[2], attempts, f[4], f[5]
      out[n + 6], out[n + 7], out[n + 8], out[n + 9], out[n + 10] = f[6], f[7], f[8], f[9], f[10]
    end
  end
  for first = 1, #running, 2000 do -- unpack() is bounded by Lua's stack: add in slices
    redis.call('ZADD', keys[3], unpack(running, first, math.min(first + 1999, #running)))
  end
  return out
end
