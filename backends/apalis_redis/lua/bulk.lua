-- One batch of a bulk action (retry, cancel, kill, purge) over one of the queue's collections,
-- in the order it keeps (finished tasks by done_at, waiting ones by run_at), or a count of what
-- it would change (dry run). The caller calls it again with the cursor it returns.
-- KEYS: ready, scheduled, running, failed, done, killed, cancelled, and a limit key's line
--       (lines.lua) when that is walked
-- ARGV: base, now, retention ms, control channel, wake channel, action, dry run ('1' or ''),
--       source (1-8: which of KEYS to walk), cursor (a rank in a sorted set; an SSCAN cursor in
--       the failed set), batch (entries to look at), room (tasks to change at most),
--       statuses (',pending,failed,': what to take), since, until ('' when not given),
--       needle (lowercase text the last error must contain, '' for any), reason
-- Returns {next cursor ('' once the collection is walked), tasks changed (or counted)}
local base, now, ttl, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local action, dry, source = ARGV[6], ARGV[7] == '1', tonumber(ARGV[8])
local batch, room, statuses = tonumber(ARGV[10]), tonumber(ARGV[11]), ARGV[12]
local since, till, needle, reason = tonumber(ARGV[13]), tonumber(ARGV[14]), ARGV[15], ARGV[16]
local ids, cursor
if source == 4 then
  local scanned = redis.call('SSCAN', KEYS[4], ARGV[9], 'COUNT', batch)
  cursor, ids = scanned[1], scanned[2]
  if cursor == '0' then cursor = '' end
else
  local offset = tonumber(ARGV[9])
  ids = redis.call('ZRANGE', KEYS[source], offset, offset + batch - 1)
  cursor = offset
end
local changed, stayed, retried = 0, 0, false
for _, id in ipairs(ids) do
  local taken = false
  if changed < room then
    local f = redis.call('HMGET', base .. 't:' .. id, 's', 'd', 'c', 'e', 'k', 'pr', 'cr')
    local status = f[1]
    local ok = status and string.find(statuses, ',' .. status .. ',', 1, true)
    if ok then
      local at = tonumber(f[2] or f[3])
      ok = (not since or at >= since) and (not till or at <= till)
    end
    if ok and needle ~= '' then ok = f[4] and string.find(string.lower(f[4]), needle, 1, true) end
    if ok and action == 'cancel' and status == 'running' and f[7] then ok = false end -- asked already
    if ok then
      changed = changed + 1
      if not dry then
        taken = action ~= 'cancel' or status ~= 'running'
        if action == 'retry' then
          again(base, id, status, f[6], f[5], now)
          retried = true
        elseif action == 'kill' then
          finish(base, id, status, 'killed', reason, now, ttl, f[5], channel)
        elseif action == 'cancel' then
          cancel(base, id, reason, now, ttl, channel)
        else
          forget(base, id, status, f[5])
        end
      end
    end
  end
  if not taken then stayed = stayed + 1 end
end
if retried then redis.call('PUBLISH', ARGV[5], '') end
if source ~= 4 then
  cursor = #ids < batch and '' or tostring(cursor + stayed)
end
return {cursor, changed}
