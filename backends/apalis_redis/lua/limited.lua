-- The claim within global limits (apalis_cli.fleet), for one worker: `claim_within`. The store
-- prepends this file to claim_limited.lua (a limited worker's own claim) and to ack_limited (the
-- acknowledgement that carries a limited worker's next claim: ack.lua, as the claim ahead of a
-- worker without limits is carried); lines.lua and claiming.lua come before it (the keys' lines,
-- `promote`). The script's KEYS start with: ready, scheduled, running, failed.
-- A task with a limit key waits in its key's line, and the key is listed in the heads by its line's
-- first task (lines.lua): the claim walks the ready set (tasks without a key) and the heads
-- together in one order (priority, then run_at; across keys to the millisecond, the heads' unit),
-- so it meets one entry per key however long that key's backlog. A key with room gives its line's
-- first tasks (up to its room, while they come before the next entry of either set) and is listed
-- again by its next task, at that task's priority but behind what was due before the claim
-- (`turn_done`: keys take turns); a key at its limit is passed over where it is (one entry), and past
-- PASS_OVER such keys in one claim the next ones are parked in ns:{q}:parked, so a claim never
-- walks many keys at their limit: a parked key with room again is listed in the heads again, keys
-- taking turns from the one after :after. Running counts are read from the running set (a vanished
-- worker's tasks leave it with the orphan sweep: its slots come back with its leases); a rate is
-- one GCRA time per key in ns:{q}:rate_tats (a sorted set by that time: a time gone by carries
-- nothing, a full burst, and leaves it at the next claim).
-- Numbers go to redis.call as strings made by '%d' where they are made per task: a Lua number
-- passed as is is printed with '%.14g' (printf's floating-point path, some thousand instructions).

-- claim_within(base, now, limit, worker, limits, after): claim up to `limit` tasks for `worker`
-- within `limits` {concurrency (-1: none), keyed concurrency (0/1), rate (-1: none), per, keyed
-- rate (0/1)}, taking turns among the parked keys from the one after `after` ('' = the first).
-- Returns the tasks (10 fields each, as claiming.lua lists them), the `after` of the next claim,
-- when a rate next lets a start through ('' = no wait), and 1 when the walk stopped at its bound
-- with slots left (claim again at once), else 0.
local function claim_within(base, now_text, limit, worker, limits, after)
  local now = tonumber(now_text)
  local conc, keyed_conc = tonumber(limits[1]), tostring(limits[2]) == '1'
  local rate, per, keyed_rate = tonumber(limits[3]), tonumber(limits[4]), tostring(limits[5]) == '1'
  local parked, heads, rates, below = base .. 'parked', base .. 'heads', base .. 'rate_tats', base .. 'below'
  local NONE = false -- the group of tasks pushed without a key
  local SCAN = 4000 -- entries of the ready set and the heads one call looks at, at most
  local PASS_OVER = 64 -- keys at their limit one call passes over before it parks the next ones
  local TURNS = 10000 -- parked keys one call looks at, at most (the next call goes on after them)

  if redis.call('EXISTS', base .. 'paused') == 1 then return {}, after, '', 0 end -- paused
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
    for i, id in ipairs(redis.call('ZRANGE', KEYS[3], '0', '-1')) do
      keys_running[i] = redis.call('HGET', base .. 't:' .. id, 'lk')
    end
  end
  for _, key in ipairs(keys_running) do
    if key then running[key] = (running[key] or 0) + 1 end
    total = total + 1
  end
  local keyless_running = total
  for _, n in pairs(running) do keyless_running = keyless_running - n end

  -- The keys whose lines may hold a task of a priority below 0 (lines.lua's `below`): after a
  -- task of priority 0, only theirs may come next at another priority. Up to BELOW of them are
  -- read at once; past that, a key is looked up when it gives such a task (`ask_below`).
  local BELOW = 64
  local below_keys, ask_below = {}, false
  local below_count = redis.call('SCARD', below)
  if below_count > BELOW then
    ask_below = true
  elseif below_count > 0 then
    for _, key in ipairs(redis.call('SMEMBERS', below)) do below_keys[key] = true end
  end

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

  local budget = tonumber(limit)
  if conc >= 0 and not keyed_conc then budget = math.min(budget, conc - total) end
  if rate >= 0 and not keyed_rate then budget = math.min(budget, allowance('*')) end
  local out = {}
  if budget <= 0 then return out, after, wake_at and string.format('%.17g', wake_at) or '', 0 end
  local claimed = 0

  -- The functions the walk calls per entry, as locals (a global's lookup is two of a table's).
  local call, tonum, fmt, byte, min, huge = redis.call, tonumber, string.format, string.byte, math.min, math.huge
  local function room(key)
    local r = budget - claimed
    if keyed_conc then
      local free = conc - (key and (running[key] or 0) or keyless_running)
      if free < r then r = free end -- not min(): a call into C per entry walked
    end
    if keyed_rate and r > 0 then r = min(r, allowance(key and ('k:' .. key) or '-')) end
    return r
  end

  local function took(key)
    claimed = claimed + 1
    if key then running[key] = (running[key] or 0) + 1 else keyless_running = keyless_running + 1 end
    if keyed_rate then spend(key and ('k:' .. key) or '-', 1) end
  end

  local claimed_ms = fmt('%d', math.floor(now * 1000))
  -- turn_done(score): where a key that gave tasks is listed again, given its next task's `score`
  -- (ms, as the heads): at that task's priority, behind every key whose first task was due before
  -- this claim, so keys take turns as fleet.claim's walk has them. By their tasks' own scores, a
  -- key with an old backlog would come first again at every claim: two keys pushed first kept a
  -- worker's two slots until their backlogs ran out, while keys pushed later waited. (A score is
  -- -priority * 1e13 + run_at in ms, run_at below 1e13: the priority is minus its 1e13s, floored.)
  local now_ms = math.floor(now * 1000)
  -- The usual score, priority 0 and due before this claim, is told from its text alone: 13 digits
  -- (a run_at in ms from 2001 to 2286, as Redis prints a whole number) that sort before the
  -- claim's ms (digits collate in their order; a '-' is looked for apart, as a locale may skip it).
  -- Parsed and printed again, as below, it cost the server some thousands of instructions a task.
  local plain_turns = #claimed_ms == 13
  local function turn_done(score)
    if plain_turns and #score == 13 and score < claimed_ms and byte(score) ~= 45 then -- '-'
      return claimed_ms
    end
    local ms = tonum(score)
    local at = ms + math.floor(ms / 1e13) * -1e13
    if at >= now_ms then return score end
    return fmt('%d', ms - at + now_ms)
  end
  local started = {} -- claimed_ms, id, ...: added to the running set in one call at the end
  -- take(id): claim one task if it is still waiting (a parked or ready entry may be stale): its
  -- priority as stored (text; true if it has none), or false
  local function take(id)
    local task = base .. 't:' .. id
    local f = call('HMGET', task, 's', 'p', 'a', 'm', 'r', 'pr', 'k', 'mt', 'c', 'e')
    if f[1] ~= 'pending' and f[1] ~= 'failed' then return false end
    -- A first attempt, the usual case, without a number parsed and printed
    local attempts, text = 1, '1'
    if f[3] ~= '0' then
      attempts = tonum(f[3]) + 1
      text = fmt('%d', attempts)
    end
    call('HSET', task, 's', 'running', 'a', text, 'l', worker)
    started[#started + 1], started[#started + 2] = claimed_ms, id
    if f[1] == 'failed' then call('SREM', KEYS[4], id) end
    local n = #out
    out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5] = id, f[2], attempts, f[4], f[5]
    out[n + 6], out[n + 7], out[n + 8], out[n + 9], out[n + 10] = f[6], f[7], f[8], f[9], f[10]
    return f[6] or true
  end

  -- unpack() is bounded by Lua's stack: one command per slice of a long list.
  local function each_slice(command, key, list)
    for first = 1, #list, 2000 do
      call(command, key, unpack(list, first, min(first + 1999, #list)))
    end
  end

  -- 1. Parked keys with room again, in turns from the one after `after`, coming round once: each is
  -- listed in the heads again, where the walk below meets it in order with the others.
  local from = (after == '') and '-' or ('(' .. after)
  local seen, freed = 0, 0
  for pass = 1, 2 do
    local lo, hi = from, '+'
    if pass == 2 then
      if after == '' then break end
      lo, hi = '-', '[' .. after
    end
    while freed < budget and seen < TURNS do
      local keys = call('ZRANGEBYLEX', parked, lo, hi, 'LIMIT', '0', fmt('%d', min(2 * budget + 16, TURNS - seen)))
      if #keys == 0 then break end
      for _, key in ipairs(keys) do
        seen = seen + 1
        after = key
        if room(key) > 0 then
          call('ZREM', parked, key)
          line_head(base, key, true)
          freed = freed + 1
          if freed >= budget then break end
        end
      end
      lo = '(' .. after
    end
    if freed >= budget or seen >= TURNS then break end
  end

  -- 2. The ready set and the heads, merged in their order, a window of each at a time. Entries a
  -- window took out of a set leave it in one call before the next windows are read (they shift its
  -- ranks); entries passed over stay, and the next window starts after them. A window is taken
  -- only up to the last score read of a full window of the other set (what lies past it is unseen).
  local relisted, emptied = {}, {} -- keys whose line gave tasks: by their next task, or none left
  local r_skip, h_skip, scanned, passed, more = 0, 0, 0, 0, 0
  local size = 2 * budget + 16
  local function score_at(window, i) return window[i + 1] and tonum(window[i + 1]) end
  local function head_at(window, j) return window[j + 1] and tonum(window[j + 1]) / 1000 end -- ms
  -- visit(key, got, gone, bound): claim the tasks of `key`'s line in `got` (id, score, ...; their
  -- ids appended to `gone`) while the key has room and they come before `bound` (in ms, as the
  -- lines' scores; the first of the line always); the score of the first task it leaves, or nil
  -- when it took them all.
  local function visit(key, got, gone, bound)
    for k = 1, #got, 2 do
      if #gone > 0 and (tonum(got[k + 1]) > bound or room(key) <= 0 or claimed >= budget) then
        return got[k + 1]
      end
      gone[#gone + 1] = got[k]
      if take(got[k]) then took(key) end
    end
    return nil
  end
  while claimed < budget do
    if scanned >= SCAN then more = 1 break end -- bounded: the caller claims again at once
    local rw = call('ZRANGE', KEYS[1], fmt('%d', r_skip), fmt('%d', r_skip + size - 1), 'WITHSCORES')
    -- The heads' scores only to merge them with the ready set's (a score read is formatted, then
    -- parsed again: about a tenth of the server's time when every entry's was read).
    local scored = #rw > 0
    local hw, hstep
    if scored then
      hw, hstep = call('ZRANGE', heads, fmt('%d', h_skip), fmt('%d', h_skip + size - 1), 'WITHSCORES'), 2
    else
      hw, hstep = call('ZRANGE', heads, fmt('%d', h_skip), fmt('%d', h_skip + size - 1)), 1
    end
    if #rw == 0 and #hw == 0 then break end
    local horizon = huge
    if #rw == 2 * size then horizon = tonum(rw[#rw]) end
    if scored and #hw == 2 * size then horizon = min(horizon, tonum(hw[#hw]) / 1000) end
    local gone_r, gone_h, park, to_line = {}, {}, {}, {}
    local i, j = 1, 1
    while claimed < budget do
      local rs = scored and score_at(rw, i) -- false: none (a pure keyed queue)
      local hs = hw[j] and (scored and tonum(hw[j + 1]) / 1000 or -huge)
      if not rs and not hs then break end
      if (rs or huge) > horizon and (hs or huge) > horizon then break end
      scanned = scanned + 1
      if rs and (not hs or rs <= hs) then -- the ready set's: a task without a key (or one put there)
        local id = rw[i]
        i = i + 2
        local key = call('HGET', base .. 't:' .. id, 'lk') or NONE
        if room(key) > 0 then
          gone_r[#gone_r + 1] = id
          if take(id) then took(key) end
        elseif key then -- put into the ready set by a claim without limits: back into its line
          gone_r[#gone_r + 1] = id
          to_line[#to_line + 1] = {key, id, rw[i - 1]}
        else
          r_skip = r_skip + 1
        end
      else -- a key listed in the heads
        local key = hw[j]
        j = j + hstep
        local r = room(key) -- at most budget - claimed
        if r > 0 then
          h_skip = h_skip + 1 -- it stays where it is until the end, listed then by its next task
          -- Its line's first tasks, up to its room, while they come before the next entry of either
          -- set; the first one left gives the key its place in the heads.
          local bound = -huge -- room for one: its first task alone
          if scored then
            bound = min(score_at(rw, i) or huge, head_at(hw, j) or huge, horizon)
          elseif r > 1 then
            local next_at = hw[j] and call('ZSCORE', heads, hw[j])
            bound = next_at and tonum(next_at) / 1000 or huge
          end
          local line = base .. 'kp:' .. key
          local next_score, turn -- its next task's score, or its turn in the heads as is
          if r == 1 then -- its first task alone (a key limited to one at a time, a claim's last slot)
            -- Its first two ids without their scores, then the first leaves the line: a ZPOPMIN
            -- replies with the score, which Redis 7.0 prints with '%.17g' (3.8k instructions).
            local first = call('ZRANGE', line, '0', '1')
            if first[1] then
              call('ZREMRANGEBYRANK', line, '0', '0')
              local priority = take(first[1])
              if priority then took(key) end
              -- The next task's score is wanted for its priority (the key's place in the heads).
              -- After a task of priority 0 of a key with no task below 0, the next one (if any) is
              -- of priority 0 too (a line is in score order), due (a line holds due tasks): the
              -- key's turn is the claim's time (turn_done's), its score not read.
              if first[2] then
                if priority == '0' and not (below_keys[key] or ask_below and call('SISMEMBER', below, key) == 1) then
                  turn = claimed_ms
                else
                  next_score = call('ZRANGE', line, '0', '0', 'WITHSCORES')[2]
                end
              end
            end
          else
            local gone = {}
            local got = call('ZRANGE', line, '0', '1', 'WITHSCORES')
            bound = bound * 1000 -- the lines' unit: ms
            next_score = visit(key, got, gone, bound)
            local ended = #got < 4
            if not next_score and not ended then -- more of its tasks may come first: those before the bound
              got = call('ZRANGEBYSCORE', line, '-inf', fmt('%.17g', bound), 'WITHSCORES', 'LIMIT', '2', fmt('%d', r))
              next_score = visit(key, got, gone, bound)
            end
            call('ZREM', line, unpack(gone))
            if not next_score and not ended then next_score = call('ZRANGE', line, '0', '0', 'WITHSCORES')[2] end
          end
          if next_score then turn = turn_done(next_score) end
          if turn then
            relisted[#relisted + 1], relisted[#relisted + 2] = turn, key -- in ms, as the heads
          else
            emptied[#emptied + 1] = key
          end
        else
          passed = passed + 1
          if passed > PASS_OVER then
            gone_h[#gone_h + 1] = key
            park[#park + 1] = key
          else
            h_skip = h_skip + 1
          end
        end
      end
      if claimed >= budget then break end
    end
    each_slice('ZREM', KEYS[1], gone_r)
    each_slice('ZREM', heads, gone_h)
    for _, key in ipairs(park) do call('ZADD', parked, '0', key) end
    for _, entry in ipairs(to_line) do line_add(base, entry[1], entry[2], entry[3]) end
  end
  each_slice('ZADD', heads, relisted)
  each_slice('ZREM', heads, emptied)
  if below_count > 0 then each_slice('SREM', below, emptied) end
  each_slice('ZADD', KEYS[3], started)
  if rate >= 0 and not keyed_rate and claimed > 0 then spend('*', claimed) end
  if spent then -- the states go with the last of them, even if no claim comes again
    local last = redis.call('ZRANGE', rates, '-1', '-1', 'WITHSCORES')
    if #last > 0 then redis.call('PEXPIRE', rates, string.format('%d', math.ceil((tonumber(last[2]) - now) * 1000) + 1000)) end
  end
  return out, after, wake_at and string.format('%.17g', wake_at) or '', more
end
