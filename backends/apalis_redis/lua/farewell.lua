-- A worker that stops unregisters, so what it left running is recovered at the next sweep.
-- KEYS: workers, worker info
-- ARGV: worker id
redis.call('ZREM', KEYS[1], ARGV[1])
return redis.call('HDEL', KEYS[2], ARGV[1])
