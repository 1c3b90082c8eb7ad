-- Insert tasks (one call for a whole batch); a known idempotency key or task id returns the
-- existing id instead, so a retried call after a lost reply inserts nothing twice. Returns
-- the ids as one MessagePack array.
-- KEYS: ready, scheduled
-- ARGV: base, now, wake channel, and one MessagePack array of 7 per task: id, payload, run_at,
--       priority, max_attempts, idempotency key ('' = none), meta JSON ('' = none)
local base, now = ARGV[1], tonumber(ARGV[2])
local out, woke = {}, false
local items = cmsgpack.unpack(ARGV[4])
for i = 1, #items, 7 do
  local id, key = items[i], items[i + 5]
  local existing = false
  if key ~= '' then
    existing = redis.call('GET', base .. 'k:' .. key)
    if existing and redis.call('EXISTS', base .. 't:' .. existing) == 0 then existing = false end
  end
  if not existing and redis.call('EXISTS', base .. 't:' .. id) == 1 then existing = id end
  if existing then
    out[#out + 1] = existing
  else
    local run_at, priority = tonumber(items[i + 2]), tonumber(items[i + 3])
    local task = base .. 't:' .. id
    redis.call('HSET', task, 'p', items[i + 1], 's', 'pending', 'a', 0, 'm', items[i + 4],
      'r', items[i + 2], 'pr', items[i + 3], 'c', ARGV[2])
    if key ~= '' then
      redis.call('HSET', task, 'k', key)
      redis.call('SET', base .. 'k:' .. key, id)
    end
    if items[i + 6] ~= '' then redis.call('HSET', task, 'mt', items[i + 6]) end
    if run_at <= now then
      redis.call('ZADD', KEYS[1], string.format('%.17g', -priority * 1e10 + run_at), id)
      woke = true
    else
      redis.call('ZADD', KEYS[2], items[i + 2], id)
    end
    out[#out + 1] = id
  end
end
if woke then redis.call('PUBLISH', ARGV[3], '') end
return cmsgpack.pack(out)
