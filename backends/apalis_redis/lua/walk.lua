-- One step of a keyset walk through a sorted set, by (score, member): what a board's page of a
-- queue reads (apalis_redis.browse, apalis_rsmq.browse). The browse scripts start with this file.
-- A page resumes after the (score, member) of the last entry seen: found by ZRANK when that
-- member is still there at that score (a task claimed or finished since has moved), else by
-- ZCOUNT of the scores before it; both cost O(log n), so a deep page costs what the first does.
-- Ties of one score are in member order in Redis, so (score, member) is a total order.

-- `accept(member, score)` returns the row to page (an array) or nil to step over the entry.
-- Reads entries past (after_score, after_member) ('' and '': from the start), descending when
-- `reverse`, until `want` rows are accepted or `budget` entries are read.
-- Returns rows (each {member, score, row}), the last entry read (score, member), whether the
-- set was read to its end, and how many entries were read.
local function walk(zset, reverse, after_score, after_member, want, budget, accept)
  local start, moved, cut = 0, false, nil
  if after_member ~= '' then
    cut = tonumber(after_score)
    local score = redis.call('ZSCORE', zset, after_member)
    if score and tonumber(score) == cut then
      if reverse then
        start = redis.call('ZREVRANK', zset, after_member) + 1
      else
        start = redis.call('ZRANK', zset, after_member) + 1
      end
    else
      moved = true
      if reverse then
        start = redis.call('ZCOUNT', zset, '(' .. after_score, '+inf')
      else
        start = redis.call('ZCOUNT', zset, '-inf', '(' .. after_score)
      end
    end
  end
  local rows, read, chunk = {}, 0, 500
  local last_score, last_member = after_score, after_member
  while read < budget do
    local stop = start + math.min(chunk, budget - read) - 1
    local got
    if reverse then
      got = redis.call('ZREVRANGE', zset, start, stop, 'WITHSCORES')
    else
      got = redis.call('ZRANGE', zset, start, stop, 'WITHSCORES')
    end
    for i = 1, #got, 2 do
      local member, score = got[i], got[i + 1]
      read = read + 1
      -- After a moved member: its own score's ties up to it were on the page before.
      local seen = moved and tonumber(score) == cut
        and ((not reverse and member <= after_member) or (reverse and member >= after_member))
      if not seen then
        local row = accept(member, score)
        if row then rows[#rows + 1] = {member, score, row} end
      end
      last_score, last_member = score, member
      if #rows >= want then return rows, last_score, last_member, false, read end
    end
    if #got < 2 * (stop - start + 1) then return rows, last_score, last_member, true, read end
    start = stop + 1
  end
  return rows, last_score, last_member, false, read
end

-- Whether `text` (false or nil: none) holds `needle`, ignoring ASCII case ('' is in every text).
local function holds(text, needle)
  if needle == '' then return true end
  if not text then return false end
  return string.find(string.lower(text), needle, 1, true) ~= nil
end

