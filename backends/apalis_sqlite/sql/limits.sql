-- Claims within global limits and unique pushes (apalis_cli.fleet), each run inside the one
-- write transaction of a claim or a push, so the counts they read cannot change under them.

-- name: limit_state
-- What a limited claim reads first, as one row: whether the queue is paused, and the key of
-- each running task (a JSON array, null for a task without one), counted in Python. Read from
-- the rows themselves, so a vanished worker's slots come back with its leases: few rows (at
-- most every worker's concurrency), found by the status index. Neither a row per key nor a
-- GROUP BY: a drain's 50 running rows cost 18 us so, 44 us as rows grouped (its sorter).
SELECT
    (SELECT paused FROM {prefix}queues WHERE queue = :queue),
    (SELECT json_group_array(limit_key) FROM {prefix}tasks WHERE queue = :queue AND status = 'running');

-- name: _next_keys
UNION ALL
    SELECT t.limit_key, t.rowid, t.run_at, keys.n + 1
    FROM keys, {prefix}tasks AS t
    WHERE keys.n < :walk AND (:upto IS NULL OR keys.key < :upto) AND t.rowid = (
        SELECT rowid FROM {prefix}tasks
        WHERE queue = :queue AND status IN ('pending', 'failed') AND limit_key > keys.key
        ORDER BY limit_key, priority DESC, run_at, id LIMIT 1
    )

-- name: _walk_after
-- Up to :walk keys with waiting tasks above :after, in order, up to the first past :upto (NULL:
-- none), each with its first waiting task (the row and its run_at): one step in the keyed index
-- and the row's own each (_next_keys). A coroutine: each key is walked when it is read.
WITH RECURSIVE keys(key, rid, run_at, n) AS (
    SELECT t.limit_key, t.rowid, t.run_at, 1 FROM {prefix}tasks AS t WHERE t.rowid = (
        SELECT rowid FROM {prefix}tasks
        WHERE queue = :queue AND status IN ('pending', 'failed') AND limit_key > :after
        ORDER BY limit_key, priority DESC, run_at, id LIMIT 1
    )
    {_next_keys}
)

-- name: _walk_first
-- As _walk_after, from the first key.
WITH RECURSIVE keys(key, rid, run_at, n) AS (
    SELECT t.limit_key, t.rowid, t.run_at, 1 FROM {prefix}tasks AS t WHERE t.rowid = (
        SELECT rowid FROM {prefix}tasks
        WHERE queue = :queue AND status IN ('pending', 'failed') AND limit_key IS NOT NULL
        ORDER BY limit_key, priority DESC, run_at, id LIMIT 1
    )
    {_next_keys}
)

-- name: keys_after
-- (A keyed rate's walk: a keyed concurrency alone claims in turns, claim_turn_*.) The keys of
-- _walk_after, to the claim in Python (:upto NULL).
{_walk_after}
SELECT key, rid, run_at FROM keys;

-- name: keys_from_first
{_walk_first}
SELECT key, rid, run_at FROM keys;

-- name: _turn_claim
-- The claim of a turn (`apalis_cli.fleet.Turn`) over the walk `keys`: the first ready task of
-- each key up to :upto (NULL: the last) that is not in :blocked (a JSON array: the keys at their
-- concurrency), until :count are claimed, in one statement: the walk's rows never reach Python.
-- Where a key's first waiting task is not due, its first due task is looked up (as claim_heads).
-- The walk is read only as far as the claim needs (a LIMIT over a recursive CTE stops it).
-- Columns in TASK_COLUMNS order, then the key.
UPDATE {prefix}tasks
SET status = 'running', attempts = attempts + 1, lock_by = :worker, locked_at = :now
WHERE rowid IN (
    SELECT head FROM (
        SELECT CASE WHEN keys.run_at <= :now THEN keys.rid ELSE (
            SELECT rowid FROM {prefix}tasks
            WHERE queue = :queue AND limit_key = keys.key AND status IN ('pending', 'failed') AND run_at <= :now
            ORDER BY priority DESC, run_at, id
            LIMIT 1
        ) END AS head
        FROM keys
        WHERE (:upto IS NULL OR keys.key <= :upto) AND keys.key NOT IN (SELECT value FROM json_each(:blocked))
    )
    WHERE head IS NOT NULL
    LIMIT :count
) AND status IN ('pending', 'failed')
RETURNING id, queue, payload, status, attempts, max_attempts, run_at, priority, idempotency_key, meta,
    lock_by, last_error, result, created_at, done_at, limit_key;

-- name: claim_turn_after
-- A turn of the keys above :after (`_turn_claim`; :walk the keys it may look at).
{_walk_after}
{_turn_claim}

-- name: claim_turn_first
-- A turn of the keys from the first (`_turn_claim`).
{_walk_first}
{_turn_claim}

-- name: claim_rows
-- The rows in :rows (a JSON array of rowids: the walk's first tasks of the chosen keys, all due),
-- claimed by rowid, not looked up again by key and by id. Columns in TASK_COLUMNS order, without
-- the key: the claim knows each row's key from its walk.
UPDATE {prefix}tasks
SET status = 'running', attempts = attempts + 1, lock_by = :worker, locked_at = :now
WHERE rowid IN (SELECT value FROM json_each(:rows)) AND status IN ('pending', 'failed')
RETURNING id, queue, payload, status, attempts, max_attempts, run_at, priority, idempotency_key, meta,
    lock_by, last_error, result, created_at, done_at;

-- name: claim_heads
-- The first ready task of each key in :keys (a JSON array), in one statement (where the first
-- waiting task of one of the keys is not due yet: claim_rows otherwise). Columns in
-- TASK_COLUMNS order, then the key.
UPDATE {prefix}tasks
SET status = 'running', attempts = attempts + 1, lock_by = :worker, locked_at = :now
WHERE id IN (
    SELECT (
        SELECT id FROM {prefix}tasks
        WHERE queue = :queue AND limit_key = keys.value AND status IN ('pending', 'failed') AND run_at <= :now
        ORDER BY priority DESC, run_at, id
        LIMIT 1
    )
    FROM json_each(:keys) AS keys
)
RETURNING id, queue, payload, status, attempts, max_attempts, run_at, priority, idempotency_key, meta,
    lock_by, last_error, result, created_at, done_at, limit_key;

-- name: claim_keyless
-- Tasks pushed without a key, in the queue's order, from their own index (0005_ready_split.sql):
-- however many tasks of keys at their limit wait before them, none is stepped over.
UPDATE {prefix}tasks
SET status = 'running', attempts = attempts + 1, lock_by = :worker, locked_at = :now
WHERE id IN (
    SELECT id FROM {prefix}tasks
    WHERE queue = :queue AND status IN ('pending', 'failed') AND limit_key IS NULL AND run_at <= :now
    ORDER BY priority DESC, run_at, id
    LIMIT :limit
)
RETURNING id, queue, payload, status, attempts, max_attempts, run_at, priority, idempotency_key, meta,
    lock_by, last_error, result, created_at, done_at;

-- name: rate_state
SELECT tat FROM {prefix}limit_rates WHERE queue = :queue AND state = :state;

-- name: set_rate_state
INSERT INTO {prefix}limit_rates (queue, state, tat) VALUES (?, ?, ?)
ON CONFLICT (queue, state) DO UPDATE SET tat = excluded.tat;

-- name: forget_rate_states
-- States in the past carry nothing (a full burst is available): dropped now and then.
DELETE FROM {prefix}limit_rates WHERE queue = :queue AND tat <= :now;

-- name: insert_keyed
-- As `insert`, with the limit key and the unique key and window (INSERT_COLUMNS, then these).
INSERT INTO {prefix}tasks
    (id, queue, payload, status, attempts, max_attempts, run_at, priority, idempotency_key, meta, created_at,
     limit_key, unique_key, unique_until)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT DO NOTHING;

-- name: unique_holder
-- The newest task holding a unique key in one of the push's states, within its window.
SELECT id, status FROM {prefix}tasks
WHERE queue = :queue AND unique_key = :key
    AND (unique_until IS NULL OR unique_until > :now)
    AND status IN (SELECT value FROM json_each(:states))
ORDER BY created_at DESC
LIMIT 1;

-- name: unique_extend
UPDATE {prefix}tasks SET unique_until = :until WHERE id = :id;

-- name: unique_replace
-- A pending duplicate takes the new push's content; a running or finished one is left alone.
UPDATE {prefix}tasks
SET payload = :payload, run_at = :run_at, priority = :priority, max_attempts = :max_attempts, meta = :meta,
    limit_key = :limit_key
WHERE id = :id AND status = 'pending';
