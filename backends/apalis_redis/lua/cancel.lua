-- An operator's cancel of one task (the work is control.lua's cancel()).
-- KEYS: ready, scheduled, running, failed, done, killed, cancelled
-- ARGV: base, now, retention ms, control channel, task id, reason
-- Returns 'cancelled', 'requested', 'final:<status>' for a task that had ended, or '' when there
-- is no such task.
return cancel(ARGV[1], ARGV[5], ARGV[6], ARGV[2], ARGV[3], ARGV[4]) or ''
