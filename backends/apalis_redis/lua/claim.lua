-- Claim up to `limit` ready tasks for one worker, promoting the due scheduled ones first.
-- Order: priority DESC, run_at ASC (the ready score is -priority * 1e10 + run_at).
-- KEYS: ready, scheduled, running, failed
-- ARGV: base, now, limit, worker id
-- Returns one MessagePack array (one bulk string parses far faster in Python than nested
-- replies) with 10 fields per task: id, payload, attempts, max_attempts, run_at, priority,
-- idempotency key, meta, created_at, last_error.
local base, now = ARGV[1], ARGV[2]
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(due) do
  local f = redis.call('HMGET', base .. 't:' .. id, 'pr', 'r')
  if f[1] then
    redis.call('ZADD', KEYS[1], string.format('%.17g', -tonumber(f[1]) * 1e10 + tonumber(f[2])), id)
  end
  redis.call('ZREM', KEYS[2], id)
end
local popped = redis.call('ZPOPMIN', KEYS[1], tonumber(ARGV[3]))
local out, running = {}, {}
for i = 1, #popped, 2 do
  local id = popped[i]
  local task = base .. 't:' .. id
  local f = redis.call('HMGET', task, 's', 'p', 'a', 'm', 'r', 'pr', 'k', 'mt', 'c', 'e')
  if f[1] == 'pending' or f[1] == 'failed' then
    local attempts = tonumber(f[3]) + 1
    redis.call('HSET', task, 's', 'running', 'a', attempts, 'l', ARGV[4])
    running[#running + 1], running[#running + 2] = now, id
    if f[1] == 'failed' then redis.call('SREM', KEYS[4], id) end
    local n = #out
    out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5] = id, f[2], attempts, f[4], f[5]
    out[n + 6], out[n + 7], out[n + 8], out[n + 9], out[n + 10] = f[6], f[7], f[8], f[9], f[10]
  end
end
for first = 1, #running, 2000 do -- unpack() is bounded by Lua's stack: add in slices
  redis.call('ZADD', KEYS[3], unpack(running, first, math.min(first + 1999, #running)))
end
return cmsgpack.pack(out)
