-- receiveMessage for up to `limit` messages at once, each hidden for the lease (the visibility
-- timeout), its rc counted and fr set on the first receive, exactly as rsmq does. A message
-- that comes back while still locked by a worker was orphaned (its lease ran out): it carries
-- that error, and goes to the dead-letter queue instead when its attempts are exhausted, or as
-- cancelled when a cancel was requested of the run it lost. A paused queue hands out nothing.
-- KEYS: ns:<q>, ns:<q>:Q, ns:<q>:apalis, ns:<dead>, ns:<dead>:Q, ns:<dead>:apalis, claims
-- ARGV: limit, lease ms, worker id, default max attempts, control channel
-- Returns one MessagePack array of 6 per message: id, body, rc, fr, max_attempts, last error.
if redis.call('EXISTS', KEYS[3] .. ':paused') == 1 then return cmsgpack.pack({}) end
local ts = now_ms()
local now = string.format('%.0f', ts)
local hidden = string.format('%.0f', ts + tonumber(ARGV[2]))
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out, hide, claims, received = {}, {}, {}, 0
for _, id in ipairs(ids) do
  local body = redis.call('HGET', KEYS[2], id)
  if not body then
    redis.call('ZREM', KEYS[1], id) -- a score without a body: deleted under our feet
  else
    hide[#hide + 1], hide[#hide + 2] = hidden, id
    received = received + 1
    local rc = redis.call('HINCRBY', KEYS[2], id .. ':rc', 1)
    local fr
    if rc == 1 then
      fr = now
      redis.call('HSET', KEYS[2], id .. ':fr', now)
    else
      fr = redis.call('HGET', KEYS[2], id .. ':fr')
    end
    local side = redis.call('HMGET', KEYS[3], id .. ':ma', id .. ':lk', id .. ':e', id .. ':cr')
    local max_attempts = tonumber(side[1]) or tonumber(ARGV[4])
    local err = side[3]
    if side[2] then
      err = 'worker ' .. side[2] .. ' stopped sending heartbeats while running this task'
        .. ' (its lease, the visibility timeout, ran out)'
      redis.call('HSET', KEYS[3], id .. ':e', err)
    end
    if side[4] or rc > max_attempts then
      hide[#hide - 1], hide[#hide] = nil, nil
      if side[4] then -- cancelled while it ran: it never runs again
        to_dead(id, body, side[4], 'cancelled', now, rc - 1, max_attempts, ARGV[5])
      else
        to_dead(id, body, err or 'attempts exhausted', 'killed', now, rc - 1, max_attempts, ARGV[5])
      end
    else
      redis.call('HSET', KEYS[3], id .. ':lk', ARGV[3])
      claims[#claims + 1], claims[#claims + 2] = now, id
      local n = #out
      out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5], out[n + 6] = id, body, rc, fr, max_attempts, err or false
    end
  end
end
-- One ZADD and one HINCRBY for the batch: the same end state as rsmq's per-message calls.
for first = 1, #hide, 2000 do -- unpack() is bounded by Lua's stack: add in slices
  redis.call('ZADD', KEYS[1], unpack(hide, first, math.min(first + 1999, #hide)))
end
for first = 1, #claims, 2000 do
  redis.call('ZADD', KEYS[7], unpack(claims, first, math.min(first + 1999, #claims)))
end
if received > 0 then redis.call('HINCRBY', KEYS[2], 'totalrecv', received) end
return cmsgpack.pack(out)
