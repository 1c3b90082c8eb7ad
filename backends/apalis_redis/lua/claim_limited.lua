-- A claim within global limits (apalis_cli.fleet), for one worker; claiming.lua is prepended
-- (for `promote`).
-- A task whose key is at its limit is parked: moved from the ready set into its key's own
-- parked set (ns:{q}:kp:<key>, same score), its key listed in ns:{q}:parked. The ready set so
-- holds only tasks that may run, and a busy key's backlog is stepped over once, not at every
-- claim. A parked key with room again is served from its parked set, keys taking turns from the
-- one after :after. Running counts are read from the running set (a vanished worker's tasks
-- leave it with the orphan sweep); a rate is one GCRA time per key in ns:{q}:rate_tats (a sorted
-- set by that time: a time gone by carries nothing, a full burst, and leaves it at the next claim).
-- KEYS: ready, scheduled, running, failed
-- ARGV: base, now, limit, worker, concurrency (-1: none), keyed concurrency (0/1), rate (-1: none),
--       per, keyed rate (0/1), after ('' = from the first parked key)
-- Returns one MessagePack array: {tasks (10 fields each, as claiming.lua lists them), after,
-- wake_at ('' = none), more (1: the walk stopped at its bound with slots left: claim again)}.
local base, now, limit, worker = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local conc, keyed_conc = tonumber(ARGV[5]), ARGV[6] == '1'
local rate, per, keyed_rate = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9] == '1'
local after = ARGV[10]
local parked, rates = base .. 'parked', base .. 'rate_tats'
local NONE = false -- the group of tasks pushed without a key
local SCAN = 4000 -- ready entries one call looks at, at most (a backlog is parked over a few calls)

if redis.call('EXISTS', base .. 'paused') == 1 then return cmsgpack.pack({{}, after, '', 0}) end -- paused
promote(KEYS, base, now)
redis.call('ZREMRANGEBYSCORE', rates, '-inf', now) -- rate states gone by: one per key ever limited

-- The limit key of each running task, by one SORT ... GET (a read of every hash in one command),
-- or one HGET each where SORT cannot: a Redis Cluster refuses its GET, and the key names may hold
-- its '*' or '->'.
local running, total, keys_running = {}, 0, nil
if not string.find(base, '*', 1, true) and not string.find(base, '->', 1, true) then
  keys_running = redis.pcall('SORT', KEYS[3], 'BY', 'nosort', 'GET', base .. 't:*->lk')
  if keys_running.err then keys_running = nil end
end
if not keys_running then
  keys_running = {}
  for i, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    keys_running[i] = redis.call('HGET', base .. 't:' .. id, 'lk')
  end
end
for _, key in ipairs(keys_running) do
  if key then running[key] = (running[key] or 0) + 1 end
  total = total + 1
end
local keyless_running = total
for _, n in pairs(running) do keyless_running = keyless_running - n end

local interval = (rate > 0) and (per / rate) or 0
local wake_at = nil
local tats, spent = {}, false
local function tat_of(state)
  if tats[state] == nil then tats[state] = tonumber(redis.call('ZSCORE', rates, state)) or false end
  return tats[state] or nil
end
local function allowance(state)
  local tat = tat_of(state)
  local ahead = math.max((tat or now) - now, 0)
  local n = math.max(0, math.min(rate, math.floor((per - ahead) / interval + 1e-9)))
  if n == 0 and tat then
    local at = tat - per + interval
    if not wake_at or at < wake_at then wake_at = at end
  end
  return n
end
local function spend(state, n)
  local tat = math.max(tat_of(state) or now, now) + n * interval
  tats[state], spent = tat, true
  redis.call('ZADD', rates, string.format('%.17g', tat), state)
end

local budget = limit
if conc >= 0 and not keyed_conc then budget = math.min(budget, conc - total) end
if rate >= 0 and not keyed_rate then budget = math.min(budget, allowance('*')) end
local out = {}
if budget <= 0 then return cmsgpack.pack({out, after, wake_at and string.format('%.17g', wake_at) or '', 0}) end
local claimed = 0

local function room(key)
  local r = budget - claimed
  if keyed_conc then
    local busy = key and (running[key] or 0) or keyless_running
    r = math.min(r, conc - busy)
  end
  if keyed_rate and r > 0 then r = math.min(r, allowance(key and ('k:' .. key) or '-')) end
  return r
end

local function took(key)
  claimed = claimed + 1
  if key then running[key] = (running[key] or 0) + 1 else keyless_running = keyless_running + 1 end
  if keyed_rate then spend(key and ('k:' .. key) or '-', 1) end
end

local claimed_ms = string.format('%d', math.floor(now * 1000))
local started = {} -- claimed_ms, id, ...: added to the running set in one call at the end
-- take(id): claim one task if it is still waiting (a parked or ready entry may be stale)
local function take(id)
  local task = base .. 't:' .. id
  local f = redis.call('HMGET', task, 's', 'p', 'a', 'm', 'r', 'pr', 'k', 'mt', 'c', 'e')
  if f[1] ~= 'pending' and f[1] ~= 'failed' then return false end
  local attempts = tonumber(f[3]) + 1
  redis.call('HSET', task, 's', 'running', 'a', attempts, 'l', worker)
  started[#started + 1], started[#started + 2] = claimed_ms, id
  if f[1] == 'failed' then redis.call('SREM', KEYS[4], id) end
  local n = #out
  out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5] = id, f[2], attempts, f[4], f[5]
  out[n + 6], out[n + 7], out[n + 8], out[n + 9], out[n + 10] = f[6], f[7], f[8], f[9], f[10]
  return true
end

-- unpack() is bounded by Lua's stack: one command per slice of a long list.
local function each_slice(command, key, list)
  for first = 1, #list, 2000 do
    redis.call(command, key, unpack(list, first, math.min(first + 1999, #list)))
  end
end

-- 1. Parked keys with room, in turns from the one after `after`, coming round once.
local function serve(key)
  local r = room(key)
  local set = base .. 'kp:' .. key
  while r > 0 do
    local popped = redis.call('ZPOPMIN', set, r)
    if #popped == 0 then redis.call('ZREM', parked, key) return end
    for i = 1, #popped, 2 do
      if take(popped[i]) then took(key) r = r - 1 end
    end
  end
  if redis.call('EXISTS', set) == 0 then redis.call('ZREM', parked, key) end
end
local from = (after == '') and '-' or ('(' .. after)
local seen = 0
for pass = 1, 2 do
  local lo, hi = from, '+'
  if pass == 2 then
    if after == '' then break end
    lo, hi = '-', '[' .. after
  end
  while claimed < budget and seen < 10000 do
    local keys = redis.call('ZRANGEBYLEX', parked, lo, hi, 'LIMIT', 0, 2 * (budget - claimed) + 16)
    if #keys == 0 then break end
    for _, key in ipairs(keys) do
      seen = seen + 1
      after = key
      serve(key)
      if claimed >= budget then break end
    end
    lo = '(' .. after
  end
  if claimed >= budget then break end
end

-- 2. The ready set in its order: a task whose key has room is claimed, one whose key has none
-- is parked (tasks without a key are left where they are). The entries a window took out of
-- the ready set leave it in one call before the next window is read (they shift its ranks), and
-- those parked join their keys' sets in one call per key; a window that parked half of what it
-- read doubles, up to 1000 (a backlog is stepped over in a few reads).
local skipped, scanned, more = 0, 0, 0
local size = 2 * (budget - claimed) + 16
while claimed < budget do
  if scanned >= SCAN then more = 1 break end -- bounded: the caller claims again at once
  local window = redis.call('ZRANGE', KEYS[1], skipped, skipped + size - 1, 'WITHSCORES')
  if #window == 0 then break end
  local gone, park, parked_now = {}, {}, 0
  for i = 1, #window, 2 do
    local id, score = window[i], window[i + 1]
    scanned = scanned + 1
    local key = redis.call('HGET', base .. 't:' .. id, 'lk') or NONE
    if room(key) > 0 then
      gone[#gone + 1] = id
      if take(id) then took(key) end
    elseif key then
      gone[#gone + 1] = id
      local set = park[key]
      if not set then set = {} park[key] = set end
      set[#set + 1], set[#set + 2] = score, id
      parked_now = parked_now + 1
    else
      skipped = skipped + 1
    end
    if claimed >= budget then break end
  end
  each_slice('ZREM', KEYS[1], gone)
  for key, set in pairs(park) do
    each_slice('ZADD', base .. 'kp:' .. key, set)
    redis.call('ZADD', parked, 0, key)
  end
  if parked_now * 4 >= #window then size = math.min(size * 2, 1000) end
end
each_slice('ZADD', KEYS[3], started)
if rate >= 0 and not keyed_rate and claimed > 0 then spend('*', claimed) end
if spent then -- the states go with the last of them, even if no claim comes again
  local last = redis.call('ZRANGE', rates, -1, -1, 'WITHSCORES')
  if #last > 0 then redis.call('PEXPIRE', rates, math.ceil((tonumber(last[2]) - now) * 1000) + 1000) end
end
return cmsgpack.pack({out, after, wake_at and string.format('%.17g', wake_at) or '', more})
