-- A limit key's line (global limits, apalis_cli.fleet): a due task pushed with a limit key (its
-- field 'lk') waits in its key's own sorted set ns:{q}:kp:<key>, not in the ready set, scored by
-- its ready set's score in whole milliseconds (head_ms; tasks of one key within a millisecond in
-- the order of their ids, which is the order they were pushed); the key is listed in
-- ns:{q}:heads, scored by its line's first task (after the key's turn in a claim, by the
-- claim's time at that task's priority: limited.lua's `turn_done`). A claim
-- within limits (limited.lua) walks the ready set and the heads together, in one order: it
-- meets one entry per key, however long that key's backlog, so a saturated key's tasks are never
-- walked nor moved one by one. A claim without limits puts every line back into the ready set
-- (claiming.lua's unpark). The store prepends this file to every script that puts a waiting task
-- into the ready set or takes one out of it (a script cannot call another).
-- ns:{q}:below (a set) holds the keys whose lines may hold a task of a priority below 0, added by
-- line_add, left when a line is found empty: a claim that takes a task of priority 0 from any
-- other key's line knows that the next one is of priority 0 too, without reading its score
-- (limited.lua). A line written by a daemon older than this set (a task below 0 added without
-- listing its key) may so have that task claimed at priority 0's place, once: an order, nothing
-- lost.

-- head_ms(score): a task's score in its key's line and its key's in the heads: the ready set's
-- `score` in whole milliseconds (floored). A small sorted set is a listpack, which parses a
-- fractional score from text at every entry it reads or an insert walks past (strtod took a
-- quarter of the server's time with 50 keys listed), but reads an integer as is; and a claim
-- reads each line's first two scores, which the server prints and Lua parses again, cheaper
-- for an integer.
local function head_ms(score)
  return string.format('%d', math.floor(tonumber(score) * 1000))
end

-- line_add(base, key, id, score): the due task `id` of `key` (of the ready set's `score`) joins
-- its key's line (a key parked by a claim, see limited.lua, may so be listed in the heads too:
-- the claim sorts it out).
local function line_add(base, key, id, score)
  local heads, ms = base .. 'heads', head_ms(score)
  redis.call('ZADD', base .. 'kp:' .. key, ms, id)
  local at, n = redis.call('ZSCORE', heads, key), tonumber(ms) -- (ZADD's LT would do this in one call from Redis 6.2)
  if not at or n < tonumber(at) then redis.call('ZADD', heads, ms, key) end
  if n >= 1e13 then redis.call('SADD', base .. 'below', key) end -- a priority below 0 (see `below`)
end

-- line_head(base, key, add): the key is listed in the heads by its line's first task (`add`:
-- even when it was not listed), or leaves them (and the parked keys) when its line is empty.
local function line_head(base, key, add)
  local first = redis.call('ZRANGE', base .. 'kp:' .. key, '0', '0', 'WITHSCORES')
  if #first == 0 then
    redis.call('ZREM', base .. 'heads', key)
    redis.call('ZREM', base .. 'parked', key)
    redis.call('SREM', base .. 'below', key)
  elseif add then
    redis.call('ZADD', base .. 'heads', first[2], key)
  else
    redis.call('ZADD', base .. 'heads', 'XX', first[2], key)
  end
end

-- line_leave(base, key, id): the waiting task `id` of `key` leaves its key's line (cancelled,
-- killed, deleted, replaced), if it is there.
local function line_leave(base, key, id)
  if redis.call('ZREM', base .. 'kp:' .. key, id) == 1 then line_head(base, key, false) end
end

-- to_ready(ready, base, key, id, score): a waiting task that falls due (pushed, promoted,
-- retried, released, recovered) joins the ready set, or its key's line when it has a limit key
-- (false or nil: none).
local function to_ready(ready, base, key, id, score)
  if key then
    line_add(base, key, id, score)
  else
    redis.call('ZADD', ready, score, id)
  end
end
