-- The bookkeeping of unique keys, shared by enqueue.lua (which holds keys) and heartbeat.lua
-- (which drops what no task needs any more); the store prepends this file to both.
-- The tasks pushed with unique key K are listed in base .. 'u:' .. K, each scored by the end of
-- its window ('inf': none), so a window that ended is dropped by score and the list itself
-- expires with its last window. A list that holds a task of no window cannot expire: its key is
-- listed in base .. 'uniques' (by when it was last looked at), and the heartbeat looks a few of
-- them over at each beat, dropping the tasks that are gone (purged, or expired after their
-- retention). The answer to a push still comes from the tasks' own hashes (status, `uu`).

-- unique_tidy(base, key, now): drop from K's list the windows that ended; then give the list the
-- expiry of its last window, or list K for the heartbeat when a task of no window is in it.
local function unique_tidy(base, key, now)
  local set = base .. 'u:' .. key
  redis.call('ZREMRANGEBYSCORE', set, '-inf', now)
  local last = redis.call('ZRANGE', set, -1, -1, 'WITHSCORES')
  if #last == 0 then
    redis.call('ZREM', base .. 'uniques', key)
  elseif last[2] == 'inf' then
    redis.call('PERSIST', set)
    redis.call('ZADD', base .. 'uniques', 'NX', now, key)
  else
    -- Relative to the caller's clock, which set the window (the server's may differ); a second
    -- more, so the list never goes before the window it serves.
    redis.call('PEXPIRE', set, math.ceil((tonumber(last[2]) - tonumber(now)) * 1000) + 1000)
    redis.call('ZREM', base .. 'uniques', key)
  end
end

-- unique_sweep(base, now, keys, tasks): look over up to `keys` listed keys (those looked at least
-- recently first) and up to `tasks` of each one's tasks: a task whose hash is gone is dropped.
local function unique_sweep(base, now, keys, tasks)
  local uniques = base .. 'uniques'
  for _, key in ipairs(redis.call('ZRANGE', uniques, 0, keys - 1)) do
    local set = base .. 'u:' .. key
    for _, id in ipairs(redis.call('ZRANGE', set, 0, tasks - 1)) do
      if redis.call('EXISTS', base .. 't:' .. id) == 0 then redis.call('ZREM', set, id) end
    end
    redis.call('ZADD', uniques, 'XX', now, key)
    unique_tidy(base, key, now)
  end
end
