-- Claims within global limits (apalis_sql.limits.LimitedClaims over pgmq's tables). Each runs in
-- a transaction that first takes `limit_lock`, so the counts it reads cannot change before it
-- commits. A message's limit key is its "apalis" header `limit_key` (`_key`, compared byte by
-- byte as the claim's turns compare keys in Python); the key index (`create_key_index`) orders
-- a queue's messages by key, then vt: a key's ready messages come first in its range, and the
-- messages it has in flight last. "Ready" is `vt <= now()`, the transaction's start (a stable
-- value, so the index can check it): a message that came due while the claim waited for the
-- lock waits for the next claim, and so does one pushed after a pause that committed while the
-- claim was under way (after `limit_state` read the pause): the pause holds it back. A claimed
-- message is read as pgmq.read reads it: vt moved by the lease, read_ct + 1, last_read_at now.

-- name: _key
(headers -> 'apalis' ->> 'limit_key') COLLATE "C"

-- name: _read
SET vt = clock_timestamp() + make_interval(secs => %(lease)s::float8), read_ct = m.read_ct + 1,
    last_read_at = clock_timestamp()

-- name: _claimed
RETURNING m.msg_id, m.read_ct, extract(epoch FROM m.enqueued_at)::float8, m.message, m.headers -> 'apalis',
          %(worker)s::text

-- name: limit_lock
-- Held to the end of the transaction; `commit` sets its durability ('off' for claims: a claim
-- lost in a crash is only read again). A holder whose client stops mid-transaction is ended by
-- the server after 10 s idle in it, which frees the lock.
SELECT pg_advisory_xact_lock(hashtext('apalis_pgmq:' || %(lock)s || ':' || %(queue)s), hashtext(%(key)s)),
       set_config('synchronous_commit', coalesce(%(commit)s, current_setting('synchronous_commit')), true),
       set_config('idle_in_transaction_session_timeout', '10s', true)

-- name: limit_state
-- The server's clock, the pause, the queue-wide rate states, and the messages in flight by key:
-- read and hidden by a live lease, so a vanished worker's slots come back when its leases end.
-- pgmq's vt index finds them (`vt > now()` can use it; the status then reads the clock). One row
-- at least.
SELECT s.now, s.paused, s.queue_tat, s.keyless_tat, r.limit_key, r.running
FROM (
    SELECT extract(epoch FROM clock_timestamp())::float8 AS now,
           EXISTS (SELECT 1 FROM apalis_pgmq.queues AS p WHERE p.queue = %(queue)s AND p.paused) AS paused,
           (SELECT tat FROM apalis_pgmq.limit_rates WHERE queue = %(queue)s AND state = '*') AS queue_tat,
           (SELECT tat FROM apalis_pgmq.limit_rates WHERE queue = %(queue)s AND state = '-') AS keyless_tat
) AS s
LEFT JOIN (
    SELECT {_key} AS limit_key, count(*) AS running FROM {q}
    WHERE vt > now() AND {status} = 'running'
    GROUP BY 1
) AS r ON true

-- name: _next_keys
    UNION ALL
    SELECT (SELECT {_key} FROM {q} WHERE {_key} > keys.key AND vt <= now() ORDER BY {_key} LIMIT 1), n + 1
    FROM keys WHERE keys.key IS NOT NULL AND n < %(count)s
)
SELECT keys.key, r.tat FROM keys
LEFT JOIN apalis_pgmq.limit_rates AS r ON r.queue = %(queue)s AND r.state = 'k:' || keys.key
WHERE keys.key IS NOT NULL
ORDER BY keys.n

-- name: limit_keys_after
-- Up to :count keys with ready messages above :after, in order, one step in the key index each
-- (the rest of the walk is `_next_keys`), with each key's rate state.
WITH RECURSIVE keys(key, n) AS (
    SELECT (SELECT {_key} FROM {q} WHERE {_key} > %(after)s AND vt <= now() ORDER BY {_key} LIMIT 1), 1
    {_next_keys}

-- name: limit_keys_first
WITH RECURSIVE keys(key, n) AS (
    SELECT (SELECT {_key} FROM {q} WHERE {_key} IS NOT NULL AND vt <= now() ORDER BY {_key} LIMIT 1), 1
    {_next_keys}

-- name: limit_heads
-- The first ready message of each key in :keys (oldest due first: vt, then msg_id), read in one
-- statement, each key's by one step in the key index. The key comes last.
UPDATE {q} AS m
{_read}
WHERE m.msg_id = ANY(ARRAY(
    SELECT head.msg_id
    FROM json_array_elements_text(%(keys)s::json) AS k(key)
    CROSS JOIN LATERAL (
        SELECT msg_id FROM {q}
        WHERE {_key} = k.key AND vt <= now()
        ORDER BY vt, msg_id
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    ) AS head
))
{_claimed}, {_key}

-- name: limit_keyless
-- Messages sent without a key (by a producer that knows of no keyed limit), oldest due first:
-- the key index holds them too (a NULL key), so they are found however deep the keyed backlog.
UPDATE {q} AS m
{_read}
WHERE m.msg_id = ANY(ARRAY(
    SELECT msg_id FROM {q}
    WHERE {_key} IS NULL AND vt <= now()
    ORDER BY vt, msg_id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
))
{_claimed}

-- name: limit_take
-- Up to :limit messages in the queue's order (a queue-wide limit, no key): pgmq.read's own
-- statement, ready by `now()` (pgmq.read reads `clock_timestamp()` in a snapshot of its own, so
-- it would hand out a message pushed after a pause that `limit_state` did not see yet). now() is
-- read once, as a parameter the planner cannot see, so the plan stays along msg_id as the
-- ordinary claim's (`read`): with `vt <= now()` a plan cached while a delayed backlog was not due
-- sorted the whole backlog at every claim once it was.
UPDATE {q} AS m
{_read}
WHERE m.msg_id = ANY(ARRAY(
    SELECT msg_id FROM {q}
    WHERE vt <= (SELECT now())
    ORDER BY msg_id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
))
{_claimed}

-- name: limit_rates_set
-- :rates is a JSON array of [state, tat] pairs.
INSERT INTO apalis_pgmq.limit_rates AS r (queue, state, tat)
SELECT %(queue)s, pair ->> 0, (pair ->> 1)::float8 FROM json_array_elements(%(rates)s::json) AS pair
ON CONFLICT (queue, state) DO UPDATE SET tat = excluded.tat

-- name: limit_rates_forget
-- States in the past carry nothing (a full burst is available): dropped now and then.
DELETE FROM apalis_pgmq.limit_rates WHERE queue = %(queue)s AND tat <= %(now)s

-- name: key_index_exists
SELECT to_regclass(%(index)s) IS NOT NULL

-- name: create_key_index
-- The one index apalis adds to a pgmq queue table, as pgmq.create_fifo_index adds one for its
-- message groups: made when a worker with a keyed limit first claims from the queue, under
-- pgmq's queue lock. It changes no column and no pgmq call; pgmq.drop_queue drops it.
CREATE INDEX IF NOT EXISTS {key_index} ON {q} (({_key}), vt, msg_id)
