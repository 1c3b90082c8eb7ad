-- Claims within global limits and unique pushes (apalis_cli.fleet, apalis_sql.limits). Each runs
-- in a transaction inside a named lock (`named_lock`: one per queue for claims, one per queue
-- and key for unique pushes), so the counts it reads cannot change before it commits; the lock
-- is the session's, freed after the commit (or by the server when the connection closes).
-- MariaDB has no UPDATE ... RETURNING: a claim statement locks its rows (FOR UPDATE SKIP
-- LOCKED) and `limit_mark` claims them by id. Keys and rate states come as JSON text.

-- name: named_lock
-- The lock's name is kept in `@apalis_lock` for `limit_claim_full`.
SELECT GET_LOCK(@apalis_lock := %(lock)s, 10)

-- name: named_unlock
SELECT RELEASE_LOCK(%(lock)s)

-- name: limit_claim_full
-- A keyed claim's first turn took all the claim asked for (`@apalis_n`, counted by `_turn`):
-- nothing is left for the client to decide, so the claim commits and frees its lock in the round
-- trip that sent the turn. Otherwise (or where the lock was not got: `in_named_lock` tries
-- again) the transaction stays open for the client's next statements. Returns 1 where it
-- committed, NULL where not.
EXECUTE IMMEDIATE IF(@apalis_n >= %(count)s AND IS_USED_LOCK(@apalis_lock) <=> CONNECTION_ID(), 'COMMIT', 'DO 0');
SELECT IF(@@in_transaction, NULL, RELEASE_LOCK(@apalis_lock))

-- name: idle_limit
-- A session idle for 10 s inside a transaction is ended by the server (MariaDB), and its named
-- lock freed with it: no lock outlives a live transaction.
SET SESSION idle_transaction_timeout = 10

-- name: limit_state
-- The server's clock, the pause, the queue-wide rate states, and the running tasks by key: the
-- rows themselves, so a vanished worker's slots come back with its leases. One row at least.
-- The running tasks are read from the status index, named: with the table's statistics as a
-- bulk push left them the server was seen to read the whole table instead (every task of every
-- queue, done ones included: 3,300 rows and 4.5 ms a claim in 55 claims of 100 after a push of
-- 5,000), and naming it spares planning the table's other six indexes.
SELECT s.now, s.paused, s.queue_tat, s.keyless_tat, r.limit_key, r.running
FROM (
    SELECT {now} AS now,
           EXISTS (SELECT 1 FROM {prefix}queues AS p WHERE p.queue = %(queue)s AND p.paused = 1) AS paused,
           (SELECT tat FROM {prefix}limit_rates WHERE queue = %(queue)s AND state = '*') AS queue_tat,
           (SELECT tat FROM {prefix}limit_rates WHERE queue = %(queue)s AND state = '-') AS keyless_tat
) AS s
LEFT JOIN (
    SELECT limit_key, COUNT(*) AS running FROM {prefix}tasks FORCE INDEX ({prefix}tasks_status)
    WHERE queue = %(queue)s AND status = 'running'
    GROUP BY limit_key
    ORDER BY NULL
) AS r ON 1 = 1

-- name: _one_step_per_key
GROUP BY queue, ready_key
ORDER BY queue, ready_key
LIMIT %(count)s

-- name: _with_key_rates
LEFT JOIN {prefix}limit_rates AS r ON r.queue = %(queue)s AND r.state = CONCAT('k:', walk.k)
ORDER BY walk.k

-- name: limit_keys_after
-- Up to :count keys with waiting tasks above :after, in order (_one_step_per_key: a loose index
-- scan, one step per key), with each key's rate state (_with_key_rates).
SELECT walk.k, r.tat
FROM (
    SELECT ready_key AS k FROM {prefix}tasks FORCE INDEX ({prefix}tasks_ready_keys)
    WHERE queue = %(queue)s AND ready_key > %(after)s
    {_one_step_per_key}
) AS walk
{_with_key_rates}

-- name: limit_keys_first
SELECT walk.k, r.tat
FROM (
    SELECT ready_key AS k FROM {prefix}tasks FORCE INDEX ({prefix}tasks_ready_keys)
    WHERE queue = %(queue)s AND ready_key IS NOT NULL
    {_one_step_per_key}
) AS walk
{_with_key_rates}

-- name: limit_heads
-- Lock the first ready task of each key in :keys (each found by one step in the keyed index,
-- then read by primary key). Columns in TASK_COLUMNS order, then the key.
SELECT STRAIGHT_JOIN {columns}, limit_key
FROM (
    SELECT (
        SELECT h.id FROM {prefix}tasks AS h
        WHERE h.queue = %(queue)s AND h.ready_key = k.k AND h.run_at <= {now}
        ORDER BY h.priority DESC, h.run_at, h.id
        LIMIT 1
    ) AS head
    FROM JSON_TABLE(%(keys)s, '$[*]' COLUMNS (k VARCHAR(255) PATH '$')) AS k
) AS heads
JOIN {prefix}tasks ON id = heads.head
WHERE ready = 1
FOR UPDATE SKIP LOCKED

-- name: _turn
-- One turn of a keyed claim in one statement (`apalis_cli.fleet.claim.Turn`, `turns`): the walk
-- (up to :walk keys in order, a loose index scan, one step per key however deep its backlog),
-- each key's rate state, whether it is open (not in :blocked, at its concurrency or out of rate
-- in this claim, nor by its stored state more than :ahead seconds ahead of :now), and the
-- first due task of each open key (one step in `tasks_ready_by_key`), locked (SKIP LOCKED: NULL
-- where another transaction holds it). One row per key walked, in key order: TASK_COLUMNS (NULL
-- where no task was locked), the key, its rate state, whether it was open. Which of them the
-- turn takes (`limit_mark` claims them) is worked out by the caller (`turns.account`): window
-- functions to count them here cost the server more than the whole statement. The rate states
-- are read only under a keyed rate (:ahead set): without one, the lookup of each key's was a
-- sixth of the statement's server CPU (300 runs, walks of 70 keys, 5 interleaved rounds on a
-- private mariadbd: 1,233 -> 1,033 us median, lower in each round). The tasks' indexes are
-- named: a third of the statement's server time is its planning (its EXPLAIN alone 300 us),
-- and weighing the table's other indexes for the head and the row was a fifth of that.
-- A claim's first turn rides in the claim's first round trip, before `limit_state` has told the
-- client which keys are at their concurrency: it sends :cap (the keyed concurrency) and no
-- :now instead, and the statement finds the keys with :cap running tasks itself (one pass over
-- the queue's running tasks, as `limit_state`'s count) and reads the server's clock (no later
-- than `limit_state`'s, read after it: a rate state is never judged open sooner than the
-- client's clock would). Later turns send :cap NULL (that count then reads nothing).
-- The turn takes the first :count heads it locked, in key order, itself (`taken`, the last
-- column): each is counted in `@apalis_n` and listed in `@apalis_ids` (after `limit_turn_start`)
-- as its row is sent, which the plan does in key order (the walk sorted, then each key's head
-- joined by primary key), for `limit_marked` to claim them in the same round trip. The client
-- takes the rows so flagged, whatever order the server sent them in (`turns.account`).
SELECT STRAIGHT_JOIN {task_columns}, w.k, w.tat, w.is_open,
       (t.id IS NOT NULL AND @apalis_n < %(count)s AND (@apalis_n := @apalis_n + 1) > 0
        AND (@apalis_ids := CONCAT(@apalis_ids, ',', QUOTE(t.id))) IS NOT NULL) AS taken
FROM (
    SELECT g.k, g.tat, g.is_open,
           CASE WHEN g.is_open THEN (
               SELECT h.id FROM {prefix}tasks AS h FORCE INDEX ({prefix}tasks_ready_by_key)
               WHERE h.queue = %(queue)s AND h.ready_key = g.k AND h.run_at <= {now}
               ORDER BY h.priority DESC, h.run_at, h.id
               LIMIT 1
           ) END AS head
    FROM (
        SELECT walk.k, r.tat,
               walk.k NOT IN %(blocked)s
               AND (%(cap)s IS NULL OR walk.k NOT IN (
                   SELECT limit_key FROM {prefix}tasks FORCE INDEX ({prefix}tasks_status)
                   WHERE queue = %(queue)s AND status = 'running' AND limit_key IS NOT NULL
                   GROUP BY limit_key
                   HAVING COUNT(*) >= %(cap)s
               ))
               AND (%(ahead)s IS NULL OR r.tat IS NULL OR r.tat - COALESCE(%(now)s, {now}) < %(ahead)s) AS is_open
        FROM walk
        LEFT JOIN {prefix}limit_rates AS r
            ON %(ahead)s IS NOT NULL AND r.queue = %(queue)s AND r.state = CONCAT('k:', walk.k)
    ) AS g
) AS w
LEFT JOIN {prefix}tasks AS t FORCE INDEX (PRIMARY) ON t.id = w.head AND t.ready = 1
ORDER BY w.k
FOR UPDATE SKIP LOCKED

-- name: _turn_bounds
AND (%(upto)s IS NULL OR ready_key <= %(upto)s)
-- A paused queue hands out nothing (its turns take nothing: a claim's first one is sent before
-- `limit_state` says so, and claimed in the same round trip).
AND NOT EXISTS (SELECT 1 FROM {prefix}queues AS p WHERE p.queue = %(queue)s AND p.paused = 1)
GROUP BY queue, ready_key
ORDER BY queue, ready_key
LIMIT %(walk)s

-- name: limit_turn_after
WITH walk AS (
    SELECT ready_key AS k FROM {prefix}tasks FORCE INDEX ({prefix}tasks_ready_keys)
    WHERE queue = %(queue)s AND ready_key > %(after)s
    {_turn_bounds}
)
{_turn}

-- name: limit_turn_first
WITH walk AS (
    SELECT ready_key AS k FROM {prefix}tasks FORCE INDEX ({prefix}tasks_ready_keys)
    WHERE queue = %(queue)s AND ready_key IS NOT NULL
    {_turn_bounds}
)
{_turn}

-- name: limit_scan
-- A claim under a per-key concurrency alone as one range scan of the keys' tasks interleaved
-- (migration 0009: `tasks_ready_by_seq`, every key's first waiting task, then every key's
-- second, and so on), as PostgreSQL's (its 0016/0017): the first :window entries (the key is in
-- the index: no row read for an entry of a key at its limit), those whose key is under :cap,
-- each locked by primary key in the scan's order if due, at most :lock of them. A key at its limit
-- costs an entry a place, however deep its backlog. The turn's way of taking (`_turn`): the first
-- :count locked whose key has room left are taken, counted in `@apalis_n` and listed in
-- `@apalis_ids` (after `limit_scan_start`) for `limit_marked` in the same round trip, and
-- `limit_claim_full` commits where they were all the claim asked for. A key's room within the
-- claim is counted in `@apalis_keys` (each key taken, quoted, between commas: QUOTE escapes every
-- quote inside, so an entry is found only whole), plus, under a cap above 1, its running tasks
-- (with a cap of 1 a key with any is passed over already). The key's room is counted as rows are
-- sent, not by a window function over the scan: that one's temporary table and sorts cost the
-- server more than the rest of the statement (2,000 against 900 us a claim of 48).
-- Columns: TASK_COLUMNS, the key, whether taken. A paused queue hands out nothing.
SELECT STRAIGHT_JOIN {task_columns}, c.limit_key,
       (@apalis_n < %(count)s
        AND (LENGTH(@apalis_keys) - LENGTH(REPLACE(@apalis_keys, @apalis_key := CONCAT(',', QUOTE(c.limit_key), ','), '')))
            DIV LENGTH(@apalis_key)
            + IF(%(cap)s > 1, (
                SELECT COUNT(*) FROM {prefix}tasks AS r FORCE INDEX ({prefix}tasks_status)
                WHERE r.queue = %(queue)s AND r.status = 'running' AND r.limit_key = c.limit_key), 0) < %(cap)s
        AND (@apalis_n := @apalis_n + 1) > 0
        AND (@apalis_keys := CONCAT(@apalis_keys, @apalis_key)) IS NOT NULL
        AND (@apalis_ids := CONCAT(@apalis_ids, ',', QUOTE(t.id))) IS NOT NULL) AS taken
FROM (
    SELECT id, limit_key FROM {prefix}tasks FORCE INDEX ({prefix}tasks_ready_by_seq)
    WHERE queue = %(queue)s AND ready_seq IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM {prefix}queues AS p WHERE p.queue = %(queue)s AND p.paused = 1)
    ORDER BY ready_seq, limit_key, id
    LIMIT %(window)s
) AS c
JOIN {prefix}tasks AS t FORCE INDEX (PRIMARY) ON t.id = c.id AND t.ready = 1
WHERE t.run_at <= {now} AND c.limit_key NOT IN (
    SELECT limit_key FROM {prefix}tasks FORCE INDEX ({prefix}tasks_status)
    WHERE queue = %(queue)s AND status = 'running' AND limit_key IS NOT NULL
    GROUP BY limit_key
    HAVING COUNT(*) >= %(cap)s
)
LIMIT %(lock)s
FOR UPDATE SKIP LOCKED

-- name: limit_scan_start
SET @apalis_n = 0, @apalis_ids = QUOTE(''), @apalis_keys = ','

-- name: limit_keyless_from
-- Lock tasks pushed without a key among the next :scan ready tasks of the queue in its order,
-- from the place (:kp, :kr, :ki: priority, run_at, id) where the worker's last scan that found
-- none stopped (NULL: from the first), so those behind a keyed backlog of any depth are reached
-- within a few claims (the ready index cannot find them apart from the keyed ones; an index of
-- their own would cost every push an entry). One range scan of `tasks_ready` in its order: the
-- rest of the place's priority, then the lower ones. The scan counts its rows and keeps its
-- last place in session variables (`limit_keyless_place` reads them, sent with the commit):
-- no second scan.
SELECT STRAIGHT_JOIN {columns}
FROM (
    SELECT s.id AS head FROM (
        SELECT id, limit_key, run_at,
               @keyless_n := @keyless_n + 1 AS n, @keyless_p := priority AS p,
               @keyless_r := run_at AS r, @keyless_i := id AS i
        FROM {prefix}tasks FORCE INDEX ({prefix}tasks_ready)
        WHERE queue = %(queue)s AND ready = 1
          AND (%(ki)s IS NULL OR priority < %(kp)s OR (priority = %(kp)s AND run_at >= %(kr)s))
          AND (%(ki)s IS NULL OR priority < %(kp)s OR run_at > %(kr)s OR id > %(ki)s)
        ORDER BY priority DESC, run_at, id
        LIMIT %(scan)s
    ) AS s
    WHERE s.limit_key IS NULL AND s.run_at <= {now}
    LIMIT %(limit)s
) AS heads
JOIN {prefix}tasks ON id = heads.head
WHERE ready = 1
FOR UPDATE SKIP LOCKED

-- name: limit_keyless_count
SET @keyless_n = 0, @keyless_p = NULL, @keyless_r = NULL, @keyless_i = NULL

-- name: limit_keyless_place
-- How many ready tasks `limit_keyless_from` scanned, and the place of the last.
SELECT @keyless_n, @keyless_p, @keyless_r, @keyless_i

-- name: limit_take
-- Lock up to :limit ready tasks in the queue's order (a queue-wide limit, no key).
SELECT {columns} FROM {prefix}tasks
WHERE queue = %(queue)s AND ready = 1 AND run_at <= {now}
ORDER BY priority DESC, run_at, id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- name: limit_turn_start
SET @apalis_n = 0, @apalis_ids = QUOTE('')

-- name: limit_marked
-- Claim the heads the last turn took (`_turn`: `@apalis_ids`), in the round trip of the turn
-- (`claim_room`: as `claim_update` takes it back).
EXECUTE IMMEDIATE CONCAT(
    'UPDATE {prefix}tasks SET status = ''running'', attempts = attempts + 1, lock_by = ', QUOTE(%(worker)s),
    ', lock_at = {now}, claim_room = NULL WHERE id IN (', @apalis_ids, ')')

-- name: limit_mark
-- Claim the tasks a claim statement above locked (`claim_room`: as `claim_update` takes it back).
UPDATE {prefix}tasks
SET status = 'running', attempts = attempts + 1, lock_by = %(worker)s, lock_at = {now}, claim_room = NULL
WHERE id IN %(ids)s

-- name: limit_rates_set
-- :rates is a JSON array of [state, tat] pairs.
INSERT INTO {prefix}limit_rates (queue, state, tat)
SELECT %(queue)s, r.state, r.tat
FROM JSON_TABLE(%(rates)s, '$[*]' COLUMNS (state VARCHAR(300) PATH '$[0]', tat DOUBLE PATH '$[1]')) AS r
ON DUPLICATE KEY UPDATE tat = VALUES(tat)

-- name: limit_rates_forget
-- States in the past carry nothing (a full burst is available): dropped now and then.
DELETE FROM {prefix}limit_rates WHERE queue = %(queue)s AND tat <= %(now)s

-- name: insert_keyed
-- As `insert`, with each task's limit key and its number within the key (migration 0009; no
-- trigger: see there), worked out by the client from `limit_numbers`.
INSERT INTO {prefix}tasks
    (id, queue, payload, status, attempts, max_attempts, run_at, priority, idempotency_key, meta, waited,
     created_at, limit_key, limit_seq)
VALUES {rows}
ON DUPLICATE KEY UPDATE id = id

-- name: limit_numbers
-- What numbers a batch's keyed tasks (`insert_keyed`): for each of the batch's keys with tasks
-- waiting, its highest waiting number plus one (one GROUP BY on `tasks_ready_keys`); then, keyed
-- NULL, the queue's first waiting number, which a key with none waiting starts from (it takes its
-- turn with the keys' first tasks). Parameters: the queue, the keys, the queue. One statement a
-- batch before its insert, not two scalar subqueries a row in it: those, each planned, cost 110 us
-- of server CPU a keyed task in batches of 1,000, and an INSERT ... SELECT joining them once a
-- batch 70 (the trigger of 0009's first form 36, a push before 0009 19).
SELECT ready_key, MAX(ready_seq) + 1 FROM {prefix}tasks
WHERE queue = %s AND ready_key IN ({keys})
GROUP BY ready_key
UNION ALL
SELECT NULL, MIN(ready_seq) FROM {prefix}tasks WHERE queue = %s

-- name: unique_holder
-- The newest task holding a unique key in one of the push's states, within its window.
SELECT id FROM {prefix}tasks
WHERE queue = %(queue)s AND unique_key = %(key)s
  AND (unique_until IS NULL OR unique_until > %(now)s)
  AND status IN %(states)s
ORDER BY created_at DESC
LIMIT 1

-- name: unique_insert
INSERT INTO {prefix}tasks
    (id, queue, payload, status, attempts, max_attempts, run_at, priority, idempotency_key, meta, waited,
     created_at, limit_key, unique_key, unique_until, limit_seq)
VALUES (%(id)s, %(queue)s, %(payload)s, 'pending', 0, %(max_attempts)s, %(run_at)s, %(priority)s, %(idempotency_key)s,
        %(meta)s, %(waited)s, {now}, %(limit_key)s, %(unique_key)s, %(unique_until)s,
        IF(%(limit_key)s IS NULL, NULL, COALESCE(
            (SELECT MAX(d.ready_seq) + 1 FROM {prefix}tasks AS d WHERE d.queue = %(queue)s AND d.ready_key = %(limit_key)s),
            (SELECT MIN(d.ready_seq) FROM {prefix}tasks AS d WHERE d.queue = %(queue)s),
            1)))
ON DUPLICATE KEY UPDATE id = id

-- name: unique_extend
UPDATE {prefix}tasks SET unique_until = %(until)s WHERE id = %(id)s

-- name: unique_replace
-- A pending duplicate takes the new push's content; a running or finished one is left alone. It
-- keeps its number within a key (`insert_keyed_row`), or is given one if it had none.
UPDATE {prefix}tasks
SET payload = %(payload)s, run_at = %(run_at)s, priority = %(priority)s, max_attempts = %(max_attempts)s,
    meta = %(meta)s, limit_key = %(limit_key)s,
    limit_seq = IF(%(limit_key)s IS NULL OR limit_seq IS NOT NULL, limit_seq, COALESCE(
        (SELECT MAX(d.ready_seq) + 1 FROM {prefix}tasks AS d WHERE d.queue = %(queue)s AND d.ready_key = %(limit_key)s),
        (SELECT MIN(d.ready_seq) FROM {prefix}tasks AS d WHERE d.queue = %(queue)s),
        1))
WHERE id = %(id)s AND status = 'pending'
