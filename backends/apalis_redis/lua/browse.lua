-- One step of a page of a queue's tasks (apalis_redis.browse): the tasks of one of its sorted
-- sets past a (score, member), of one status, whose last error holds a text; starts with walk.lua.
-- KEYS: the sorted set to read (ready, scheduled, a parked set, running, done, killed, cancelled)
-- ARGV: base, '1' to read descending, after score, after member ('' ''), rows wanted, entries to
--       read at most, status ('' any), text in the last error, lowercase ('' any), payload bytes
--       to keep ('' all)
-- Returns one MessagePack array: [[[id, score, [field, value, ...]], ...], last score read,
--   last member read, true when the set was read to its end, entries read]
local base, status, needle, keep = ARGV[1], ARGV[7], ARGV[8], tonumber(ARGV[9])

local function accept(id)
  local key = base .. 't:' .. id
  local f = redis.call('HMGET', key, 's', 'e')
  if not f[1] or (status ~= '' and f[1] ~= status) or not holds(f[2], needle) then return nil end
  local h = redis.call('HGETALL', key)
  if keep then
    for i = 1, #h, 2 do
      if h[i] == 'p' then h[i + 1] = string.sub(h[i + 1], 1, keep) end
    end
  end
  return h
end

local rows, last_score, last_member, done, read = walk(KEYS[1], ARGV[2] == '1', ARGV[3], ARGV[4],
  tonumber(ARGV[5]), tonumber(ARGV[6]), accept)
return cmsgpack.pack({rows, last_score, last_member, done, read})
