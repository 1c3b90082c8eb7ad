-- Claims within global limits and unique pushes (apalis_cli.fleet, apalis_sql.limits). Each runs
-- in a transaction that first takes `advisory_lock` (one per queue for claims, one per queue and
-- key for unique pushes), so the counts it reads cannot change before it commits. Lists come
-- as JSON text.

-- name: advisory_lock
-- Held to the end of the transaction; `commit` sets its durability ('off' for claims). A holder
-- whose client stops mid-transaction (a frozen process keeps its connection open) is ended by
-- the server after 10 s idle in it, which frees the lock: no lock outlives a live transaction.
SELECT pg_advisory_xact_lock(hashtext(%(scope)s), hashtext(%(key)s)),
       set_config('synchronous_commit', coalesce(%(commit)s, current_setting('synchronous_commit')), true),
       set_config('idle_in_transaction_session_timeout', '10s', true)

-- name: limit_state
-- The server's clock, the pause, the queue-wide rate states, and the running tasks by key: the
-- rows themselves, so a vanished worker's slots come back with its leases. One row at least.
SELECT s.now, s.paused, s.queue_tat, s.keyless_tat, r.limit_key, r.running
FROM (
    SELECT extract(epoch FROM clock_timestamp())::float8 AS now,
           EXISTS (SELECT 1 FROM {schema}.queues AS p WHERE p.queue = %(queue)s AND p.paused) AS paused,
           (SELECT tat FROM {schema}.limit_rates WHERE queue = %(queue)s AND state = '*') AS queue_tat,
           (SELECT tat FROM {schema}.limit_rates WHERE queue = %(queue)s AND state = '-') AS keyless_tat
) AS s
LEFT JOIN (
    SELECT limit_key, count(*) AS running FROM {schema}.tasks
    WHERE queue = %(queue)s AND status = 'running'
    GROUP BY limit_key
) AS r ON true

-- name: _next_keys
UNION ALL
    SELECT (
        SELECT limit_key FROM {schema}.tasks
        WHERE queue = %(queue)s AND status IN ('pending', 'failed') AND limit_key > keys.key
        ORDER BY limit_key LIMIT 1
    ), n + 1
    FROM keys WHERE keys.key IS NOT NULL AND n < %(count)s

-- name: limit_keys_after
-- Up to :count keys with waiting tasks above :after, in order, one step in the keyed index each
-- (_next_keys), with each key's rate state.
WITH RECURSIVE keys(key, n) AS (
    SELECT (
        SELECT limit_key FROM {schema}.tasks
        WHERE queue = %(queue)s AND status IN ('pending', 'failed') AND limit_key > %(after)s
        ORDER BY limit_key LIMIT 1
    ), 1
    {_next_keys}
)
SELECT keys.key, r.tat FROM keys
LEFT JOIN {schema}.limit_rates AS r ON r.queue = %(queue)s AND r.state = 'k:' || keys.key
WHERE keys.key IS NOT NULL
ORDER BY keys.n

-- name: limit_keys_first
WITH RECURSIVE keys(key, n) AS (
    SELECT (
        SELECT limit_key FROM {schema}.tasks
        WHERE queue = %(queue)s AND status IN ('pending', 'failed') AND limit_key IS NOT NULL
        ORDER BY limit_key LIMIT 1
    ), 1
    {_next_keys}
)
SELECT keys.key, r.tat FROM keys
LEFT JOIN {schema}.limit_rates AS r ON r.queue = %(queue)s AND r.state = 'k:' || keys.key
WHERE keys.key IS NOT NULL
ORDER BY keys.n

-- name: limit_heads
-- The first ready task of each key in :keys, claimed in one statement (each key's by one step
-- in the keyed index). Columns in TASK_COLUMNS order, then the key.
UPDATE {schema}.tasks AS t
SET status = 'running', attempts = t.attempts + 1, lock_by = %(worker)s,
    lock_at = extract(epoch FROM now())::float8
WHERE t.id = ANY(ARRAY(
    SELECT head.id
    FROM json_array_elements_text(%(keys)s::json) AS k(key)
    CROSS JOIN LATERAL (
        SELECT id FROM {schema}.tasks
        WHERE queue = %(queue)s AND limit_key = k.key AND status IN ('pending', 'failed')
          AND run_at <= extract(epoch FROM now())::float8
        ORDER BY priority DESC, run_at, id
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    ) AS head
))
RETURNING {columns}, t.limit_key

-- name: limit_keyless
-- Tasks pushed without a key, among the first :scan ready tasks of the queue: bounded, since
-- the ready index cannot find them apart from the keyed ones.
UPDATE {schema}.tasks AS t
SET status = 'running', attempts = t.attempts + 1, lock_by = %(worker)s,
    lock_at = extract(epoch FROM now())::float8
WHERE t.id = ANY(ARRAY(
    SELECT id FROM {schema}.tasks
    WHERE id = ANY(ARRAY(
        SELECT id FROM (
            SELECT id, limit_key FROM {schema}.tasks
            WHERE queue = %(queue)s AND status IN ('pending', 'failed')
              AND run_at <= extract(epoch FROM now())::float8
            ORDER BY priority DESC, run_at, id
            LIMIT %(scan)s
        ) AS first
        WHERE first.limit_key IS NULL
        LIMIT %(limit)s
    )) AND status IN ('pending', 'failed')
    FOR UPDATE SKIP LOCKED
))
RETURNING {columns}

-- name: limit_take
-- Up to :limit ready tasks in the queue's order (a queue-wide limit, no key).
UPDATE {schema}.tasks AS t
SET status = 'running', attempts = t.attempts + 1, lock_by = %(worker)s,
    lock_at = extract(epoch FROM now())::float8
WHERE t.id = ANY(ARRAY(
    SELECT id FROM {schema}.tasks
    WHERE queue = %(queue)s AND status IN ('pending', 'failed')
      AND run_at <= extract(epoch FROM now())::float8
    ORDER BY priority DESC, run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
))
RETURNING {columns}

-- name: limit_rates_set
-- :rates is a JSON array of [state, tat] pairs.
INSERT INTO {schema}.limit_rates AS r (queue, state, tat)
SELECT %(queue)s, pair ->> 0, (pair ->> 1)::float8 FROM json_array_elements(%(rates)s::json) AS pair
ON CONFLICT (queue, state) DO UPDATE SET tat = excluded.tat

-- name: limit_rates_forget
-- States in the past carry nothing (a full burst is available): dropped now and then.
DELETE FROM {schema}.limit_rates WHERE queue = %(queue)s AND tat <= %(now)s

-- name: enqueue_keyed
-- As `enqueue`, with each task's limit key.
WITH inserted AS (
    INSERT INTO {schema}.tasks
        (id, queue, payload, run_at, priority, max_attempts, idempotency_key, meta, created_at, limit_key)
    SELECT u.id, %(queue)s, u.payload, u.run_at, u.priority, u.max_attempts, u.key, coalesce(u.meta::jsonb, '{}'),
           extract(epoch FROM now())::float8, u.limit_key
    FROM unnest(%(ids)b::text[], %(payloads)b::bytea[], %(run_ats)b::float8[], %(priorities)b::int[],
                %(max_attempts)b::int[], %(keys)b::text[], %(metas)b::text[], %(limit_keys)b::text[])
         AS u(id, payload, run_at, priority, max_attempts, key, meta, limit_key)
    ON CONFLICT DO NOTHING
    RETURNING id
)
SELECT inserted.id
FROM inserted,
     (SELECT pg_notify({channel}, %(queue)s)) AS notified,
     (SELECT set_config('synchronous_commit', coalesce(%(commit)s, current_setting('synchronous_commit')), true))
         AS durability

-- name: unique_holder
-- The newest task holding a unique key in one of the push's states, within its window.
SELECT id FROM {schema}.tasks
WHERE queue = %(queue)s AND unique_key = %(key)s
  AND (unique_until IS NULL OR unique_until > %(now)s)
  AND status = ANY(%(states)s::text[])
ORDER BY created_at DESC
LIMIT 1

-- name: unique_insert
-- One unique task, in the push's transaction (its durability set by `advisory_lock`).
INSERT INTO {schema}.tasks
    (id, queue, payload, run_at, priority, max_attempts, idempotency_key, meta, created_at,
     limit_key, unique_key, unique_until)
VALUES (%(id)s, %(queue)s, %(payload)s, %(run_at)s, %(priority)s, %(max_attempts)s, %(idempotency_key)s,
        coalesce(%(meta)s::jsonb, '{}'), extract(epoch FROM now())::float8, %(limit_key)s, %(unique_key)s,
        %(unique_until)s)
ON CONFLICT DO NOTHING

-- name: unique_extend
UPDATE {schema}.tasks SET unique_until = %(until)s WHERE id = %(id)s

-- name: unique_replace
-- A pending duplicate takes the new push's content; a running or finished one is left alone.
UPDATE {schema}.tasks
SET payload = %(payload)s, run_at = %(run_at)s, priority = %(priority)s, max_attempts = %(max_attempts)s,
    meta = coalesce(%(meta)s::jsonb, '{}'), limit_key = %(limit_key)s
WHERE id = %(id)s AND status = 'pending'
