-- A limited worker's own claim (limited.lua's claim_within, prepended with lines.lua and
-- claiming.lua): when it has free slots no acknowledgement of its runs claimed for (ack.lua).
-- KEYS: ready, scheduled, running, failed
-- ARGV: base, now, limit, worker, concurrency (-1: none), keyed concurrency (0/1), rate (-1: none),
--       per, keyed rate (0/1), after ('' = from the first parked key)
-- Returns one MessagePack array: {tasks (10 fields each, as claiming.lua lists them), after,
-- wake_at ('' = none), more (1: the walk stopped at its bound with slots left: claim again)}.
local limits = {ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]}
local out, after, wake_at, more = claim_within(ARGV[1], ARGV[2], ARGV[3], ARGV[4], limits, ARGV[10])
return cmsgpack.pack({out, after, wake_at, more})
