-- createQueue as rsmq does it, for a queue and its dead-letter queue; an existing queue is kept
-- as it is (its attributes may have been set by another client).
-- KEYS: ns:QUEUES, then pairs of queue hash (ns:<q>:Q) per queue
-- ARGV: vt, delay, maxsize, then the queue names in KEYS order
local now = redis.call('TIME')[1]
local created = 0
for i = 2, #KEYS do
  if redis.call('HSETNX', KEYS[i], 'vt', ARGV[1]) == 1 then
    redis.call('HSETNX', KEYS[i], 'delay', ARGV[2])
    redis.call('HSETNX', KEYS[i], 'maxsize', ARGV[3])
    redis.call('HSETNX', KEYS[i], 'created', now)
    redis.call('HSETNX', KEYS[i], 'modified', now)
    redis.call('SADD', KEYS[1], ARGV[i + 2])
    created = created + 1
  end
end
return created
