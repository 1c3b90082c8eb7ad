-- An operator's kill: the message moves to the dead-letter queue with the reason.
-- KEYS: ns:<q>, ns:<q>:Q, ns:<q>:apalis, ns:<dead>, ns:<dead>:Q, ns:<dead>:apalis, claims
-- ARGV: id, reason, control channel
local id = ARGV[1]
if not redis.call('ZSCORE', KEYS[1], id) then return 0 end
return bury(id, ARGV[2], 'killed', ARGV[3]) and 1 or 0
