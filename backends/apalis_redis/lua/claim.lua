-- Claim up to `limit` ready tasks for one worker (the claim itself is in claiming.lua).
-- KEYS: ready, scheduled, running, failed
-- ARGV: base, now, limit, worker id
-- Returns one MessagePack array (one bulk string parses far faster in Python than nested
-- replies) with 10 fields per task, as claiming.lua lists them.
return cmsgpack.pack(claim(KEYS, ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], {}))
