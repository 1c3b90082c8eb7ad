-- One step of a page of a queue's tasks (apalis_rsmq.browse): the messages of the queue's sorted
-- set, or of its dead letters', past a (score, member), of one status, whose last error holds a
-- text; starts with apalis_redis's walk.lua.
-- KEYS: ns:<q>, ns:<q>:Q, ns:<q>:apalis, ns:<dead>, ns:<dead>:Q, ns:<dead>:apalis
-- ARGV: 'dead' to read the dead letters, '1' to read descending, after score, after member
--       ('' ''), rows wanted, entries to read at most, status ('' any), text in the last error,
--       lowercase ('' any), body bytes to keep ('' all)
-- Returns one MessagePack array: [[[id, score, [body, rc, ma, lk, e, dead rc, at, st]], ...],
--   last score read, last member read, true when the set was read to its end, entries read]
local dead, status, needle, keep = ARGV[1] == 'dead', ARGV[7], ARGV[8], tonumber(ARGV[9])
local zset, qhash, side = KEYS[1], KEYS[2], KEYS[3]
if dead then zset, qhash, side = KEYS[4], KEYS[5], KEYS[6] end

local function accept(id)
  -- What tells the status and the error first: most entries a search reads are stepped over.
  local lock, error, ended = unpack(redis.call('HMGET', side, id .. ':lk', id .. ':e', id .. ':st'))
  local is
  if dead then
    is = ended == 'cancelled' and 'cancelled' or 'killed'
  else
    is = lock and 'running' or (error and 'failed' or 'pending')
  end
  if (status ~= '' and is ~= status) or not holds(error, needle) then return nil end
  local q = redis.call('HMGET', qhash, id, id .. ':rc')
  if not q[1] then return nil end
  local body = q[1]
  if keep then body = string.sub(body, 1, keep) end
  local more = redis.call('HMGET', side, id .. ':ma', id .. ':rc', id .. ':at')
  return {body, q[2], more[1], lock, error, more[2], more[3], ended}
end

local rows, last_score, last_member, done, read = walk(zset, ARGV[2] == '1', ARGV[3], ARGV[4],
  tonumber(ARGV[5]), tonumber(ARGV[6]), accept)
return cmsgpack.pack({rows, last_score, last_member, done, read})
