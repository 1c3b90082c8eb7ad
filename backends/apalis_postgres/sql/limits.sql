-- Claims within global limits and unique pushes (apalis_cli.fleet, apalis_sql.limits). Each runs
-- in a transaction that first takes `advisory_lock` (one per queue for claims, one per queue and
-- key for unique pushes), so the counts it reads cannot change before it commits. Lists come
-- as JSON text or arrays. A keyed claim walks the keys and claims their first tasks in one
-- statement per turn (`limit_turn_*`: `apalis_cli.fleet.claim.Turn`).

-- name: advisory_lock
-- Held to the end of the transaction; `commit` sets its durability ('off' for claims). A holder
-- whose client stops mid-transaction (a frozen process keeps its connection open) is ended by
-- the server after 10 s idle in it, which frees the lock: no lock outlives a live transaction.
-- The statements after it run their prepared plans as planned once (generic): planned at each
-- run, as the server would choose for most of them here, planning took longer than the run
-- (1.0-1.4 ms for a `limit_turn_*`, about a third of a limited claim's server time). And they
-- are planned without explicit sorts where an index gives the order: a queue the statistics do
-- not know is taken for one of a row or two, and a walk's step then read the queue's whole
-- ready index and sorted it (`tasks_ready`, 3 ms a key, 30-150 ms a claim) rather than step in
-- the keyed one. A sort that cannot be avoided then costs the planner a fortune, which would
-- have the statement compiled to machine code (JIT, a second at each planning): no JIT.
SELECT pg_advisory_xact_lock(hashtext(%(scope)s), hashtext(%(key)s)),
       set_config('synchronous_commit', coalesce(%(commit)s, current_setting('synchronous_commit')), true),
       set_config('idle_in_transaction_session_timeout', '10s', true),
       set_config('plan_cache_mode', 'force_generic_plan', true),
       set_config('enable_sort', 'off', true),
       set_config('jit', 'off', true)

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

-- name: _turn_gate
-- For the key `nxt` a walk stepped on: its rate state where a keyed rate holds; whether it is
-- open (not in :blocked, at its concurrency or out of rate in this claim, nor by its stored
-- state more than :ahead seconds ahead of :now: GCRA, no start allowed); and, where open, its
-- first task due now: its first in the index or, rarely (one scheduled ahead of the others),
-- one more step. (OFFSET 0: each is worked out once per key, however often it is read; the
-- state is looked up by the whole primary key, in the column's collation, not the key's.)
CROSS JOIN LATERAL (
    SELECT CASE WHEN %(ahead)s::float8 IS NOT NULL THEN (
        SELECT r.tat FROM {schema}.limit_rates AS r
        WHERE r.queue = %(queue)s AND r.state = ('k:' || nxt.key) COLLATE "default"
    ) END AS tat
    OFFSET 0
) AS rate
CROSS JOIN LATERAL (
    SELECT nxt.key <> ALL(%(blocked)s::text[])
           AND (rate.tat IS NULL OR rate.tat - %(now)s::float8 < %(ahead)s::float8) AS open
    OFFSET 0
) AS gate
CROSS JOIN LATERAL (
    SELECT CASE WHEN gate.open THEN coalesce(
        CASE WHEN nxt.run_at <= %(now)s::float8 THEN nxt.id END,
        (SELECT d.id FROM {schema}.tasks AS d
         WHERE d.queue = %(queue)s AND d.limit_key = nxt.key AND d.status IN ('pending', 'failed')
           AND d.run_at <= %(now)s::float8
         ORDER BY d.priority DESC, d.run_at, d.id
         LIMIT 1)
    ) END AS id
    OFFSET 0
) AS head

-- name: _turn
-- The walk's steps after its first key (one index step per key however deep its backlog,
-- the key's first task with it), until :count tasks are chosen, :scan keys seen, or a key past
-- :upto (where the walk came round), then the claim of the chosen (SKIP LOCKED). One row per
-- task claimed (columns in TASK_COLUMNS order, then its key and rate state), each with the
-- walk's account: keys seen, tasks chosen (some may have been skipped, locked by another
-- transaction), the last key, the earliest rate state of a key passed over for its rate, and
-- whether the queue was announced; where none was claimed, one row of NULL task columns with
-- that account.
  UNION ALL
    SELECT nxt.key, head.id, rate.tat, gate.open, w.n + 1, w.chosen + (head.id IS NOT NULL)::int
    FROM walk AS w
    CROSS JOIN LATERAL (
        SELECT limit_key AS key, id, run_at FROM {schema}.tasks
        WHERE queue = %(queue)s AND status IN ('pending', 'failed') AND limit_key > w.key
        ORDER BY limit_key, priority DESC, run_at, id
        LIMIT 1
    ) AS nxt
    {_turn_gate}
    WHERE w.n < %(scan)s AND w.chosen < %(count)s AND (%(upto)s::text IS NULL OR nxt.key <= %(upto)s::text)
),
-- The chosen are fetched by primary key and locked; the status is checked again on the row
-- locked (a task cancelled since the walk's snapshot is left). That check is written so that no
-- index can serve it: as a plain `status IN (...)`, the planner may rather read the whole ready
-- index (its predicate) and AND it with the ids, on a table it has no statistics of yet.
picked AS MATERIALIZED (
    SELECT ARRAY(
        SELECT id FROM {schema}.tasks
        WHERE id = ANY(ARRAY(SELECT head FROM walk WHERE head IS NOT NULL))
          AND status || '' IN ('pending', 'failed')
        FOR UPDATE SKIP LOCKED
    ) AS ids
),
claimed AS (
    UPDATE {schema}.tasks AS t
    SET status = 'running', attempts = t.attempts + 1, lock_by = %(worker)s,
        lock_at = extract(epoch FROM now())::float8
    WHERE t.id = ANY((SELECT ids FROM picked)::text[])
    RETURNING {columns}, t.limit_key
),
-- A turn that chose all it was asked for may have left more that other daemons could start:
-- the queue's listeners are told (on commit), as by a push. Without it a daemon idle since its
-- last claim found every key at its limit would learn that a slot freed only at its next poll,
-- when the daemon that freed it took other keys' tasks for its own slots.
account AS (
    SELECT coalesce(max(n), 0) AS seen, coalesce(max(chosen), 0) AS chosen,
           (SELECT key FROM walk ORDER BY n DESC LIMIT 1) AS last,
           min(tat) FILTER (WHERE NOT open AND key <> ALL(%(blocked)s::text[])) AS wake_tat,
           CASE WHEN max(chosen) >= %(count)s THEN pg_notify({channel}, %(queue)s)::text END AS told
    FROM walk
)
SELECT claimed.*, walk.tat, account.seen, account.chosen, account.last, account.wake_tat, account.told
FROM account
LEFT JOIN claimed ON true
LEFT JOIN walk ON walk.key = claimed.limit_key

-- name: limit_turn_after
-- One turn of a keyed claim in one statement: the keys with waiting tasks above :after, in
-- key order, each open one giving its first due task (_turn).
WITH RECURSIVE walk(key, head, tat, open, n, chosen) AS (
    SELECT nxt.key, head.id, rate.tat, gate.open, 1, (head.id IS NOT NULL)::int
    FROM (
        SELECT limit_key AS key, id, run_at FROM {schema}.tasks
        WHERE queue = %(queue)s AND status IN ('pending', 'failed') AND limit_key > %(after)s
        ORDER BY limit_key, priority DESC, run_at, id
        LIMIT 1
    ) AS nxt
    {_turn_gate}
    WHERE %(upto)s::text IS NULL OR nxt.key <= %(upto)s::text
{_turn}

-- name: limit_turn_first
WITH RECURSIVE walk(key, head, tat, open, n, chosen) AS (
    SELECT nxt.key, head.id, rate.tat, gate.open, 1, (head.id IS NOT NULL)::int
    FROM (
        SELECT limit_key AS key, id, run_at FROM {schema}.tasks
        WHERE queue = %(queue)s AND status IN ('pending', 'failed') AND limit_key IS NOT NULL
        ORDER BY limit_key, priority DESC, run_at, id
        LIMIT 1
    ) AS nxt
    {_turn_gate}
    WHERE %(upto)s::text IS NULL OR nxt.key <= %(upto)s::text
{_turn}

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
    )) AND status || '' IN ('pending', 'failed')  -- by primary key only (see `_turn`)
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
