-- Claim up to `limit` ready tasks for one worker (the claim itself is in claiming.lua), and
-- list the worker as idle when it found none, so the next push hands it its task.
-- KEYS: ready, scheduled, running, failed, idle, handed
-- ARGV: base, now, limit, worker id, the id of the last task handed to it that it received
--       ('' = none), the time in ms until which its idle listing holds
-- Returns one MessagePack array (one bulk string parses far faster in Python than nested
-- replies) with 10 fields per task, as claiming.lua lists them.
local base, worker, limit = ARGV[1], ARGV[4], tonumber(ARGV[3])
-- A task handed to this worker and still on its way takes one of the slots the worker counted
-- as free: backpressure holds.
local coming = in_flight(KEYS[6], base, worker, ARGV[5])
if coming then limit = limit - 1 end
local out = {}
if limit > 0 then out = claim(KEYS, base, ARGV[2], limit, worker, out) end
enlist(KEYS[5], worker, #out == 0 and not coming, ARGV[6])
return cmsgpack.pack(out)
