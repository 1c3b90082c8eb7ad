-- Claim up to `limit` ready tasks for one worker (the claim itself is in claiming.lua), and list
-- the worker as idle for the slots left unfilled, so the next pushes hand it their tasks
-- (handing.lua).
-- KEYS: ready, scheduled, running, failed, idle, handed
-- ARGV: base, now, limit (the worker's free slots), worker id, the id of the last task handed to
--       it that it received ('' = none), the time in ms until which its idle listing holds
-- Returns one MessagePack array (one bulk string parses far faster in Python than nested
-- replies) with 10 fields per task, as claiming.lua lists them.
local base, worker, limit = ARGV[1], ARGV[4], tonumber(ARGV[3])
-- The tasks handed to this worker and still on their way take some of the slots the worker
-- counted as free: backpressure holds.
limit = limit - #on_its_way(KEYS[6], base, worker, ARGV[5])
local out = {}
if limit > 0 then out = claim(KEYS, base, ARGV[2], limit, worker, out) end
list(KEYS[5], worker, limit - #out / 10, ARGV[6])
return cmsgpack.pack(out)
