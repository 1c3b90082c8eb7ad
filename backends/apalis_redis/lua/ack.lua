-- Apply a batch of outcomes; each only to a task still running under the same lock. Then, in
-- the same call, claim ahead for the workers whose runs ended here (claiming.lua's claim), so a
-- busy worker's acknowledgements and its next claim are one round trip.
-- A run whose cancel was requested and that would run again (retry, release) ends cancelled
-- instead; whoever waits for a task that ends is told (control.lua's ended()).
-- A worker whose runs freed slots the claim could not fill is listed idle for them, its listing
-- growing by as many (handing.lua).
-- KEYS: ready, scheduled, running, failed, done, killed, cancelled, idle, handed
-- ARGV: base, now, wake channel, retention ms, one MessagePack array of 5 per outcome:
--       id, lock_by, kind (d=done k=kill c=cancel r=retry l=release), text (result, error or
--       reason), run_at; then one MessagePack array of 4 per claim: worker id, limit, the id of
--       the last task handed to it that it received, the time in ms until which its idle
--       listing holds (or '' for none); then the control channel; then, only in ack_limited
--       (limited.lua prepended), one MessagePack array of 8 per claim of a worker with global
--       limits: worker id, limit, after, and its limits as limited.lua's claim_within reads them
-- Returns 0 without claims, else one MessagePack array holding, per claim, an array of 10
-- fields per task claimed; in ack_limited, {those arrays, per limited claim {tasks, after,
-- wake_at, more} as claim_limited.lua returns them}.
-- The sorted-set changes of the whole batch go in one command each: fewer calls per task.
local base, now, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[4]
local items = cmsgpack.unpack(ARGV[5])
local unrun, done, killed, cancelled = {}, {}, {}, {}
local woke, ends = false, {}
for i = 1, #items, 5 do
  local id, kind, text = items[i], items[i + 2], items[i + 3]
  local task = base .. 't:' .. id
  -- Only the fields every outcome needs: each field read costs (about 0.4 us), and a finished
  -- run, the common case, needs no more.
  local f = redis.call('HMGET', task, 's', 'l', 'k')
  if f[1] == 'running' and f[2] == items[i + 1] then
    unrun[#unrun + 1] = id
    if kind == 'r' or kind == 'l' then
      local requested = redis.call('HGET', task, 'cr')
      if requested then kind, text = 'c', requested end -- cancelled while it ran: never again
    end
    if kind ~= 'r' and kind ~= 'l' then ends[#ends + 1] = id end
    if kind == 'c' then
      redis.call('HSET', task, 's', 'cancelled', 'd', ARGV[2], 'e', text, 'l', '')
      redis.call('HDEL', task, 'cr')
      cancelled[#cancelled + 1], cancelled[#cancelled + 2] = ARGV[2], id
      redis.call('PEXPIRE', task, ttl)
      if f[3] then redis.call('PEXPIRE', base .. 'k:' .. f[3], ttl) end
    elseif kind == 'd' or kind == 'k' then
      if kind == 'd' then
        if text ~= '' then
          redis.call('HSET', task, 's', 'done', 'd', ARGV[2], 'l', '', 'res', text)
        else
          redis.call('HSET', task, 's', 'done', 'd', ARGV[2], 'l', '')
        end
        done[#done + 1], done[#done + 2] = ARGV[2], id
      else
        redis.call('HSET', task, 's', 'killed', 'd', ARGV[2], 'e', text, 'l', '')
        killed[#killed + 1], killed[#killed + 2] = ARGV[2], id
      end
      -- A safety net: the heartbeat purges finished tasks, this expires them even if none runs.
      redis.call('PEXPIRE', task, ttl)
      if f[3] then redis.call('PEXPIRE', base .. 'k:' .. f[3], ttl) end
    else
      local g = redis.call('HMGET', task, 'pr', 'a', 'r', 'lk')
      local priority, run_at, attempts = tonumber(g[1]), tonumber(items[i + 4]), tonumber(g[2])
      if kind == 'r' then
        redis.call('HSET', task, 's', 'failed', 'e', text, 'r', items[i + 4], 'l', '')
        redis.call('SADD', KEYS[4], id)
      else
        run_at = math.min(tonumber(g[3]), now)
        redis.call('HSET', task, 's', 'pending', 'a', math.max(attempts - 1, 0), 'r', string.format('%.17g', run_at), 'l', '')
      end
      if run_at <= now then
        to_ready(KEYS[1], base, g[4], id, string.format('%.17g', -priority * 1e10 + run_at))
        woke = true
      else
        redis.call('ZADD', KEYS[2], items[i + 4], id)
      end
    end
  end
end
-- unpack() is bounded by Lua's stack: apply in slices.
local function each_slice(list, step, apply)
  for first = 1, #list, step do
    apply(unpack(list, first, math.min(first + step - 1, #list)))
  end
end
each_slice(unrun, 2000, function(...) redis.call('ZREM', KEYS[3], ...) end)
each_slice(done, 2000, function(...) redis.call('ZADD', KEYS[5], ...) end)
each_slice(killed, 2000, function(...) redis.call('ZADD', KEYS[6], ...) end)
each_slice(cancelled, 2000, function(...) redis.call('ZADD', KEYS[7], ...) end)
if woke then redis.call('PUBLISH', ARGV[3], '') end
if #ends > 0 and redis.call('EXISTS', base .. 'waiting') == 1 then
  for _, id in ipairs(ends) do ended(base, id, ARGV[7]) end
end
local limited = nil
if ARGV[8] then -- ack_limited: claim_within is limited.lua's, prepended
  local claims = cmsgpack.unpack(ARGV[8])
  limited = {}
  for i = 1, #claims, 8 do
    local limits = {claims[i + 3], claims[i + 4], claims[i + 5], claims[i + 6], claims[i + 7]}
    local out, after, wake_at, more = claim_within(base, ARGV[2], claims[i + 1], claims[i], limits, claims[i + 2])
    limited[#limited + 1] = {out, after, wake_at, more}
  end
end
if ARGV[6] == '' then
  if limited then return cmsgpack.pack({{}, limited}) end
  return 0
end
local claims, claimed = cmsgpack.unpack(ARGV[6]), {}
for i = 1, #claims, 4 do
  local worker, limit = claims[i], claims[i + 1]
  -- The tasks on their way to it took slots of its listing, not these: only forgotten once it
  -- has them (handing.lua).
  on_its_way(KEYS[9], base, worker, claims[i + 2])
  local out = claim(KEYS, base, ARGV[2], limit, worker, {})
  -- Slots these runs freed that no ready task fills: pushes may hand them their tasks.
  if claims[i + 3] ~= '' then list_more(KEYS[8], worker, limit - #out / 10, claims[i + 3]) end
  claimed[#claimed + 1] = out
end
if limited then return cmsgpack.pack({claimed, limited}) end
return cmsgpack.pack(claimed)
