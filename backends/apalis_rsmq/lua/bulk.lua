-- One batch of a bulk action (retry, cancel, kill, purge) over the queue (source 1) or its
-- dead letters (source 4), in visibility / death order, or a count of what it would change.
-- rsmq keeps no status: a live message is running while one of our workers holds it (lk),
-- failed when it carries an error, pending otherwise; a dead letter is cancelled or killed.
-- Done messages are deleted by rsmq: nothing to act on.
-- KEYS: ns:<q>, ns:<q>:Q, ns:<q>:apalis, ns:<dead>, ns:<dead>:Q, ns:<dead>:apalis, claims
-- ARGV: action, dry run ('1' or ''), source (1 or 4), rank to start at, batch, room (tasks to
--       change at most), statuses (',pending,failed,'), since ms, until ms ('' when not given),
--       needle (lowercase text the last error must contain, '' for any), reason, control channel,
--       realtime channel ('' = off)
-- Returns {next rank ('' once the collection is walked), tasks changed (or counted)}
local action, dry, source, offset = ARGV[1], ARGV[2] == '1', tonumber(ARGV[3]), tonumber(ARGV[4])
local batch, room, statuses = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local since, till, needle, reason, channel = tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10], ARGV[11], ARGV[12]
local dead = source == 4
local now = string.format('%.0f', now_ms())
local entries = redis.call('ZRANGE', KEYS[source], offset, offset + batch - 1, 'WITHSCORES')
local changed, stayed, retried = 0, 0, false
for e = 1, #entries, 2 do
  local id, score = entries[e], tonumber(entries[e + 1])
  local taken = false
  if changed < room then
    local status, at, err, asked
    if dead then
      local f = redis.call('HMGET', KEYS[6], id .. ':st', id .. ':at', id .. ':e')
      status, at, err = f[1] or 'killed', tonumber(f[2]), f[3]
    else
      local f = redis.call('HMGET', KEYS[3], id .. ':lk', id .. ':e', id .. ':cr')
      status = f[1] and 'running' or (f[2] and 'failed' or 'pending')
      err, asked = f[2], f[3]
    end
    -- A message's id starts with base36 of its send time in microseconds.
    at = at or math.floor((tonumber(string.sub(id, 1, 10), 36) or 0) / 1000)
    local ok = string.find(statuses, ',' .. status .. ',', 1, true)
    if ok then ok = (not since or at >= since) and (not till or at <= till) end
    if ok and needle ~= '' then ok = err and string.find(string.lower(err), needle, 1, true) end
    if ok and action == 'cancel' and status == 'running' and asked then ok = false end -- asked already
    -- A failed message is retried while it waits for its backoff; one due already (or just
    -- retried by an earlier batch) runs as soon as a worker asks.
    if ok and action == 'retry' and not dead and score <= tonumber(now) then ok = false end
    if ok then
      changed = changed + 1
      if not dry then
        taken = action ~= 'cancel' or status ~= 'running'
        if action == 'retry' then
          if dead then
            revive(id, now)
          else
            redis.call('ZADD', KEYS[1], now, id)
            redis.call('HDEL', KEYS[2], id .. ':rc', id .. ':fr') -- moved behind the walk: taken
          end
          retried = true
        elseif action == 'kill' then
          bury(id, reason, 'killed', channel)
        elseif action == 'cancel' then
          cancel(id, reason, channel)
        elseif dead then
          redis.call('ZREM', KEYS[4], id)
          redis.call('HDEL', KEYS[5], id, id .. ':rc', id .. ':fr')
          redis.call('HDEL', KEYS[6], id .. ':e', id .. ':rc', id .. ':ma', id .. ':at', id .. ':st')
        else
          redis.call('ZREM', KEYS[1], id)
          redis.call('ZREM', KEYS[7], id)
          redis.call('HDEL', KEYS[2], id, id .. ':rc', id .. ':fr')
          redis.call('HDEL', KEYS[3], id .. ':ma', id .. ':lk', id .. ':e', id .. ':cr')
        end
      end
    end
  end
  if not taken then stayed = stayed + 1 end
end
if retried and ARGV[13] ~= '' then redis.call('PUBLISH', ARGV[13], redis.call('ZCARD', KEYS[1])) end
return {#entries < 2 * batch and '' or tostring(offset + stayed), changed}
