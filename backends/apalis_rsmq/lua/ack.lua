-- Apply a batch of outcomes, each only to a message still locked by the worker that ran it:
-- done deletes it (deleteMessage); retry makes it visible after the backoff with its error;
-- release makes it visible now without counting the receive; kill moves it to the dead-letter
-- queue (a plain rsmq queue) with its error, cancel too (marked cancelled). A run whose cancel
-- was requested and that would run again (retry, release) is cancelled instead. Whoever waits
-- for a task that ends is told; a done one's end is kept for them (control.lua).
-- KEYS: ns:<q>, ns:<q>:Q, ns:<q>:apalis, ns:<dead>, ns:<dead>:Q, ns:<dead>:apalis, claims
-- ARGV: realtime channel ('' = off), MessagePack array of 6 per outcome:
--       id, lock_by, rc when claimed, kind (d=done k=kill c=cancel r=retry l=release), error
--       (the result for done), delay ms; then the control channel, the retention in ms
-- (a changed rc means another client received the message since: the lease was lost)
local items = cmsgpack.unpack(ARGV[2])
local ts = now_ms()
local now = string.format('%.0f', ts)
local waited = redis.call('EXISTS', KEYS[3] .. ':waiting') == 1
local woke = false
local gone, bodies, sides, settled = {}, {}, {}, {}
for i = 1, #items, 6 do
  local id, kind = items[i], items[i + 3]
  local side = redis.call('HMGET', KEYS[3], id .. ':lk', id .. ':ma')
  if side[1] == items[i + 1] and tonumber(redis.call('HGET', KEYS[2], id .. ':rc')) == tonumber(items[i + 2]) then
    settled[#settled + 1] = id
    local text = items[i + 4]
    if kind == 'r' or kind == 'l' then
      local requested = redis.call('HGET', KEYS[3], id .. ':cr')
      if requested then kind, text = 'c', requested end -- cancelled while it ran: never again
    end
    if kind == 'k' or kind == 'c' then
      to_dead(id, redis.call('HGET', KEYS[2], id), text, kind == 'k' and 'killed' or 'cancelled', now,
        redis.call('HGET', KEYS[2], id .. ':rc'), side[2], ARGV[3])
    elseif kind == 'd' then
      if waited and ended(id, ARGV[3]) then
        local q = redis.call('HMGET', KEYS[2], id, id .. ':rc')
        redis.call('SET', KEYS[3] .. ':end:' .. id, cmsgpack.pack({text, now, q[2] or 0, side[2] or '', q[1] or ''}),
          'PX', ARGV[4])
      end
      local n, m = #bodies, #sides
      gone[#gone + 1] = id
      bodies[n + 1], bodies[n + 2], bodies[n + 3] = id, id .. ':rc', id .. ':fr'
      sides[m + 1], sides[m + 2], sides[m + 3], sides[m + 4] = id .. ':ma', id .. ':lk', id .. ':e', id .. ':cr'
    elseif kind == 'r' then
      local delay = tonumber(items[i + 5])
      redis.call('ZADD', KEYS[1], string.format('%.0f', ts + delay), id)
      redis.call('HSET', KEYS[3], id .. ':e', items[i + 4])
      redis.call('HDEL', KEYS[3], id .. ':lk')
      if delay <= 0 then woke = true end
    else
      redis.call('ZADD', KEYS[1], now, id)
      if redis.call('HINCRBY', KEYS[2], id .. ':rc', -1) <= 0 then
        redis.call('HDEL', KEYS[2], id .. ':rc', id .. ':fr')
      end
      redis.call('HDEL', KEYS[3], id .. ':lk')
      woke = true
    end
  end
end
-- deleteMessage for the whole batch in three commands, in slices (unpack() is bounded).
for first = 1, #gone, 1000 do
  local last = math.min(first + 999, #gone)
  redis.call('ZREM', KEYS[1], unpack(gone, first, last))
  redis.call('HDEL', KEYS[2], unpack(bodies, 3 * first - 2, 3 * last))
  redis.call('HDEL', KEYS[3], unpack(sides, 4 * first - 3, 4 * last))
end
for first = 1, #settled, 2000 do
  redis.call('ZREM', KEYS[7], unpack(settled, first, math.min(first + 1999, #settled)))
end
if woke and ARGV[1] ~= '' then redis.call('PUBLISH', ARGV[1], redis.call('ZCARD', KEYS[1])) end
return 0
