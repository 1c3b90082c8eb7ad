-- Insert tasks (one call for a whole batch); a known idempotency key or task id returns the
-- existing id instead, so a retried call after a lost reply inserts nothing twice. Returns
-- the ids as one MessagePack array. A new task that would be claimed next is handed to a worker
-- listed as idle (pushing.lua, prepended); a due task with a limit key joins its key's line
-- (lines.lua, prepended). A task pushed alone with none of an idempotency key, meta, limit key or
-- unique key goes through push.lua instead.
-- KEYS: ready, scheduled, idle, handed, running
-- ARGV: base, now, wake channel, and one MessagePack array of 9 per task: id, payload, run_at,
--       priority, max_attempts, idempotency key ('' = none), meta JSON ('' = none), limit key
--       ('' = none, else '=' .. key), unique ('' = none, else {key, until ('' = no end), states
--       as "pending,running", on_conflict})
-- A unique task's holders are listed in ns:{q}:u:<key> (unique.lua, prepended); the answer comes
-- from their hashes (status, window end `uu`), so nothing else is kept that could go stale.
local base, now = ARGV[1], tonumber(ARGV[2])
local out, woke = {}, false
local items = cmsgpack.unpack(ARGV[4])

local handing = may_hand(KEYS, base, now)

-- A task with a limit key (`lk`: '' = none, else '=' .. key) joins its key's line (lines.lua).
local function place(id, run_at, priority, lk)
  if run_at <= now then
    if lk == '' then
      redis.call('ZADD', KEYS[1], ready_score(priority, run_at), id)
    else
      line_add(base, string.sub(lk, 2), id, ready_score(priority, run_at))
    end
    woke = true
  else
    redis.call('ZADD', KEYS[2], string.format('%.17g', run_at), id)
  end
end

-- The newest task holding a unique key in one of `states`, within its window (the list is in
-- the order of the windows' ends, and of the tasks' ids, which are made in order, among ties).
local function holder(ukey, states)
  local set = base .. 'u:' .. ukey
  redis.call('ZREMRANGEBYSCORE', set, '-inf', ARGV[2])
  for _, hid in ipairs(redis.call('ZREVRANGE', set, 0, -1)) do
    local f = redis.call('HMGET', base .. 't:' .. hid, 's', 'uu')
    if not f[1] then
      redis.call('ZREM', set, hid) -- purged since
    elseif states[f[1]] and (not f[2] or f[2] == '' or tonumber(f[2]) > now) then
      return hid, f[1]
    end
  end
  return nil
end

for i = 1, #items, 9 do
  local id, key, lk, unique = items[i], items[i + 5], items[i + 7], items[i + 8]
  local existing = false
  if key ~= '' then
    existing = redis.call('GET', base .. 'k:' .. key)
    if existing and redis.call('EXISTS', base .. 't:' .. existing) == 0 then existing = false end
  end
  if not existing and redis.call('EXISTS', base .. 't:' .. id) == 1 then existing = id end
  if not existing and unique ~= '' then
    local states = {}
    for state in string.gmatch(unique[3], '[^,]+') do states[state] = true end
    local hid, status = holder(unique[1], states)
    if hid then
      existing = hid
      local task = base .. 't:' .. hid
      if unique[4] == 'extend' then
        redis.call('HSET', task, 'uu', unique[2])
        redis.call('ZADD', base .. 'u:' .. unique[1], unique[2] == '' and 'inf' or unique[2], hid)
        unique_tidy(base, unique[1], ARGV[2])
      elseif unique[4] == 'replace' and status == 'pending' then
        local old = redis.call('HGET', task, 'lk')
        redis.call('ZREM', KEYS[1], hid)
        redis.call('ZREM', KEYS[2], hid)
        if old then line_leave(base, old, hid) end
        redis.call('HSET', task, 'p', items[i + 1], 'r', items[i + 2], 'pr', items[i + 3], 'm', items[i + 4])
        if items[i + 6] ~= '' then redis.call('HSET', task, 'mt', items[i + 6]) else redis.call('HDEL', task, 'mt') end
        if lk ~= '' then redis.call('HSET', task, 'lk', string.sub(lk, 2)) else redis.call('HDEL', task, 'lk') end
        place(hid, tonumber(items[i + 2]), tonumber(items[i + 3]), lk)
      end
    end
  end
  if existing then
    out[#out + 1] = existing
  else
    local task = base .. 't:' .. id
    redis.call('HSET', task, 'p', items[i + 1], 's', 'pending', 'a', '0', 'm', items[i + 4],
      'r', items[i + 2], 'pr', items[i + 3], 'c', ARGV[2])
    if key ~= '' then
      redis.call('HSET', task, 'k', key)
      redis.call('SET', base .. 'k:' .. key, id)
    end
    if items[i + 6] ~= '' then redis.call('HSET', task, 'mt', items[i + 6]) end
    if lk ~= '' then redis.call('HSET', task, 'lk', string.sub(lk, 2)) end
    if unique ~= '' then
      redis.call('HSET', task, 'uk', unique[1], 'uu', unique[2])
      redis.call('ZADD', base .. 'u:' .. unique[1], unique[2] == '' and 'inf' or unique[2], id)
      unique_tidy(base, unique[1], ARGV[2])
    end
    local run_at = tonumber(items[i + 2])
    if not (handing and run_at <= now and lk == ''
        and hand(KEYS, base, ARGV[2], ARGV[3], {id, items[i + 1], items[i + 4], items[i + 2], items[i + 3], key, items[i + 6]})) then
      if run_at <= now then handing = false end -- ready now: what comes after it waits behind it
      place(id, run_at, tonumber(items[i + 3]), lk)
    end
    out[#out + 1] = id
  end
end
if woke then redis.call('PUBLISH', ARGV[3], '') end
return cmsgpack.pack(out)
