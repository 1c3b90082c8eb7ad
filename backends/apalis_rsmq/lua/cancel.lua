-- An operator's cancel of one message (the work is control.lua's cancel()).
-- KEYS: ns:<q>, ns:<q>:Q, ns:<q>:apalis, ns:<dead>, ns:<dead>:Q, ns:<dead>:apalis, claims
-- ARGV: id, reason, control channel
-- Returns 'cancelled', 'requested', 'final:<status>' for a message that had ended, or '' when not
-- found.
return cancel(ARGV[1], ARGV[2], ARGV[3]) or ''
