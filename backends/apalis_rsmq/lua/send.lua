-- sendMessage for a batch: ids are base36(Redis TIME in µs, +1 per message so a batch keeps its
-- order among equal scores) followed by the 22 random characters given; score = visible-at ms.
-- KEYS: ns:<q>, ns:<q>:Q, ns:<q>:apalis (side hash: max attempts per message)
-- ARGV: realtime channel ('' = off), MessagePack array of 5 per message:
--       22 random characters, delay ms (-1 = the queue's delay), body, max_attempts, waited (1:
--       someone will wait for its end, so it is in <side>:waiting before any worker can end it)
-- Returns the ids as one MessagePack array.
local items = cmsgpack.unpack(ARGV[2])
local q = redis.call('HMGET', KEYS[2], 'delay', 'maxsize')
if not q[1] then return redis.error_reply('queueNotFound') end
local maxsize = tonumber(q[2])
for i = 3, #items, 5 do
  if maxsize ~= -1 and #items[i] > maxsize then return redis.error_reply('messageTooLong') end
end
local t = redis.call('TIME')
local ts = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local usec = tonumber(t[1]) * 1000000 + tonumber(t[2])
local digits = '0123456789abcdefghijklmnopqrstuvwxyz'
local function base36(n)
  local s = ''
  while n > 0 do
    local r = n % 36
    s = string.sub(digits, r + 1, r + 1) .. s
    n = (n - r) / 36
  end
  return s
end
local out = {}
for i = 1, #items, 5 do
  local id = base36(usec + (i - 1) / 5) .. items[i]
  local delay = tonumber(items[i + 1])
  if delay < 0 then delay = tonumber(q[1]) * 1000 end
  redis.call('ZADD', KEYS[1], string.format('%.0f', ts + delay), id)
  redis.call('HSET', KEYS[2], id, items[i + 2])
  redis.call('HSET', KEYS[3], id .. ':ma', items[i + 3])
  if items[i + 4] == 1 then redis.call('ZADD', KEYS[3] .. ':waiting', ts, id) end
  out[#out + 1] = id
end
redis.call('HINCRBY', KEYS[2], 'totalsent', #out)
if ARGV[1] ~= '' then redis.call('PUBLISH', ARGV[1], redis.call('ZCARD', KEYS[1])) end
return cmsgpack.pack(out)
