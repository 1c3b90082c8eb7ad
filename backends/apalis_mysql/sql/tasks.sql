-- Statements on tasks: `columns` is the shared task column list, `now` the server's clock in
-- epoch seconds. Statements with a list built per call (ids, rows) take positional parameters;
-- a named parameter given a list (`keys`, `running`) is bound as an `IN` list.

-- name: claim_select
-- Lock up to `limit` ready tasks among the first `candidates` (`claims.CANDIDATES`). They are
-- read without locking: a locking scan of the ready index stops at every entry earlier claims
-- moved out of it that purge has not removed yet (a band of thousands at its head mid-drain),
-- checking each for a lock through its row (~110 pages read per task claimed, 40-47 us of the
-- server's CPU); a plain read passes them. Then each candidate is locked by primary key, in the
-- candidates' order, and checked again on its latest version; SKIP LOCKED leaves those another
-- claimer holds to it, and the LIMIT stops locking once `limit` are had. Each row it returns
-- (locked) also joins the session's list `@apalis_ids` (quoted ids, after a first '' that no id
-- equals: `claim_start` sets it), which `claim_marked` claims in the same round trip.
SELECT STRAIGHT_JOIN {task_columns}, (@apalis_ids := CONCAT(@apalis_ids, ',', QUOTE(t.id))) IS NULL
FROM (
    SELECT id FROM {prefix}tasks
    WHERE queue = %(queue)s AND ready = 1 AND run_at <= {now}
      -- A paused queue hands out nothing: checked here, so no claim races a pause.
      AND NOT EXISTS (SELECT 1 FROM {prefix}queues AS p WHERE p.queue = %(queue)s AND p.paused = 1)
    ORDER BY priority DESC, run_at, id
    LIMIT %(candidates)s
) AS c
-- By primary key, whatever the table's statistics say: a scan of the table joined to the
-- candidates would lock every row it reads and lose the candidates' order.
JOIN {prefix}tasks AS t FORCE INDEX (PRIMARY) ON t.id = c.id
WHERE t.ready = 1 AND t.run_at <= {now}
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- name: claim_update
-- `claim_room` (migration 0008) made room on the row for `lock_by` and `lock_at`.
UPDATE {prefix}tasks
SET status = 'running', attempts = attempts + 1, lock_by = %s, lock_at = {now}, claim_room = NULL
WHERE id IN ({ids})

-- name: claim_start
SET @apalis_ids = QUOTE('')

-- name: claim_marked
-- The tasks `claim_select` just locked, claimed for one worker (`claim_update` with the ids the
-- server listed): the claim's UPDATE goes in the same round trip as its select, not in a second
-- one that waits for the client to read the rows and send their ids back.
EXECUTE IMMEDIATE CONCAT(
    'UPDATE {prefix}tasks SET status = ''running'', attempts = attempts + 1, lock_by = ', QUOTE(%s),
    ', lock_at = {now}, claim_room = NULL WHERE id IN (', @apalis_ids, ')')

-- name: insert
INSERT INTO {prefix}tasks
    (id, queue, payload, status, attempts, max_attempts, run_at, priority, idempotency_key, meta, waited,
     created_at)
VALUES {rows}
ON DUPLICATE KEY UPDATE id = id

-- name: key_holders
SELECT idempotency_key, id FROM {prefix}tasks WHERE queue = %(queue)s AND idempotency_key IN %(keys)s

-- name: acked_start
SET @apalis_waited = 0

-- name: acked_waited
-- Whether some task of an acknowledged batch ended while someone waits for it, as the
-- acknowledgement's UPDATEs found it, after `acked_start`: each that ends such a task sets
-- `@apalis_waited` on the way (rewriting `waited` as it was), so no second lookup of the batch's
-- rows (an acknowledgement alone, or carried by a limited claim: `ack_ahead`).
SELECT 1 FROM DUAL WHERE @apalis_waited = 1

-- name: ack_done
-- Runs that ended done under one worker with the same result; a task no longer running under
-- that worker (its lease was lost) is left alone. A task claimed by a daemon of the previous
-- version still holds its `claim_room` (migration 0008): dropped here.
UPDATE {prefix}tasks
SET status = 'done', result = %s, done_at = {now}, lock_by = NULL, lock_at = NULL, claim_room = NULL,
    waited = IF(waited = 1, @apalis_waited := 1, 0)
WHERE id IN ({ids}) AND lock_by = %s AND status = 'running'

-- name: ack
-- Apply a batch of outcomes in one statement; a task no longer running under the same worker
-- (its lease was lost) is left alone. `u` holds one row per outcome with the new status. A run
-- whose task had a cancel requested (`cancel_reason`) and that would run again (retried,
-- released) ends cancelled instead. Assignments read the values set before them: status last.
UPDATE {prefix}tasks AS t
JOIN ({outcomes}) AS u ON t.id = u.id AND t.lock_by = u.lock_by
SET t.attempts = IF(u.status = 'pending' AND t.cancel_reason IS NULL, GREATEST(t.attempts - 1, 0), t.attempts),
    t.run_at = CASE WHEN t.cancel_reason IS NOT NULL THEN t.run_at
        WHEN u.status = 'failed' THEN COALESCE(u.run_at, {now})
        WHEN u.status = 'pending' THEN LEAST(t.run_at, {now})
        ELSE t.run_at END,
    t.result = IF(u.status = 'done', u.result, t.result),
    t.last_error = CASE WHEN t.cancel_reason IS NOT NULL AND u.status IN ('failed', 'pending') THEN t.cancel_reason
        WHEN u.status IN ('failed', 'killed', 'cancelled') THEN u.error
        ELSE t.last_error END,
    t.done_at = IF(u.status IN ('done', 'killed', 'cancelled') OR t.cancel_reason IS NOT NULL, {now}, NULL),
    t.lock_by = NULL,
    t.lock_at = NULL,
    t.claim_room = NULL,
    t.waited = IF(t.waited = 1 AND (u.status IN ('done', 'killed', 'cancelled') OR t.cancel_reason IS NOT NULL),
        @apalis_waited := 1, t.waited),
    t.status = IF(t.cancel_reason IS NOT NULL AND u.status IN ('failed', 'pending'), 'cancelled', u.status)
WHERE t.status = 'running'

-- name: release_lost
-- Tasks this worker claimed but is not running (a claim whose reply was lost with its
-- connection), locked longer than stale_after ago: back to pending, the attempt not counted;
-- cancelled instead if a cancel was asked meanwhile.
-- Found by a plain read of the status index, then changed by primary key, checked again: a
-- locking UPDATE over the queue's running tasks waited for every claim and acknowledgement in
-- flight in the queue (the index entries they move are locked until their commit), for up to the
-- lock wait timeout, while the worker's beat grew stale; and with `id NOT IN` the planner made it
-- a scan of the whole table, done tasks included. The common case (none lost) changes nothing.
-- `group_concat_max_len` is the session's (`connection._connect`): the LIMIT keeps the list
-- under it; the rest go at the next beat.
-- The grace counts back from `@apalis_beat_at`, the start of the beat's script (`beat_start`),
-- when the worker's running tasks were read: a task it claimed after that may be missing from
-- the list (a statement before this one held up by a lock: the server runs the script on).
SET @apalis_ids = NULL;
SELECT GROUP_CONCAT(QUOTE(id)) INTO @apalis_ids FROM (
    SELECT id FROM {prefix}tasks FORCE INDEX ({prefix}tasks_status)
    WHERE queue = %(queue)s AND status = 'running' AND lock_by = %(worker)s
      AND lock_at < @apalis_beat_at - %(grace)s AND id NOT IN %(running)s
    LIMIT 10000
) AS lost;
EXECUTE IMMEDIATE IF(@apalis_ids IS NULL, 'DO ?, ?', CONCAT(
    'UPDATE {prefix}tasks
    SET attempts = IF(cancel_reason IS NULL, GREATEST(attempts - 1, 0), attempts),
        last_error = COALESCE(cancel_reason, last_error),
        done_at = IF(cancel_reason IS NULL, NULL, {now}),
        lock_by = NULL, lock_at = NULL,
        status = IF(cancel_reason IS NULL, ''pending'', ''cancelled'')
    WHERE id IN (', @apalis_ids, ') AND status = ''running'' AND lock_by = ? AND lock_at < @apalis_beat_at - ?'))
    USING %(worker)s, %(grace)s

-- name: recover
-- Running tasks whose worker stopped beating: run again now, or killed if out of attempts, or
-- cancelled if a cancel was asked of the run. Run before `forget_workers`, which deletes the
-- rows of the stale workers read here.
-- A task a push handed to its worker (`idle.handed`, sql/idle.sql) that never beat after the
-- hand-over goes back pending with its attempt not counted: such a worker was killed while
-- listed idle (its listing outlives it for up to SPAN seconds), so no handler received the task,
-- and an attempt counted would kill a task allowed one without its ever running. (A worker that
-- received it and was killed before its next beat gets it back the same way: at most one run
-- not counted, since a task that comes back is claimed, never handed, again.) The first
-- assignment marks such a task (`lock_at` -1) for the ones after it, which MariaDB makes in
-- order; `lock_at` ends NULL.
-- Found by a plain read, changed by primary key and checked again, as `release_lost` is: the
-- sweep waits for no claim or acknowledgement of a live worker, and reads no done task.
-- First, keyed tasks waiting without a number within their key (pushed by a daemon of schema
-- version 8, whose inserts name none: migration 0009) are numbered, up to 1,000 a sweep, each
-- key's after its highest waiting number (or from the queue's first for a key with none): the
-- claim's scan (`limit_scan`) reads numbered tasks alone, and a scan that keeps filling its
-- claims would pass them over for good (the walk finds them only when a scan comes short).
-- Found by a plain read of `tasks_ready_keys` (index alone: 2.8 ms of server CPU over 30,000
-- waiting keyed tasks), numbered by primary key only where some were found (the UPDATE joined
-- to that read cost 30 ms, and a sweep must not wait on the queue's other rows).
SET @apalis_ids = NULL;
SELECT GROUP_CONCAT(QUOTE(id)) INTO @apalis_ids FROM (
    SELECT id FROM {prefix}tasks FORCE INDEX ({prefix}tasks_ready_keys)
    WHERE queue = %(queue)s AND ready_key IS NOT NULL AND ready_seq IS NULL
    LIMIT 1000
) AS unnumbered;
EXECUTE IMMEDIATE IF(@apalis_ids IS NULL, 'DO 0', CONCAT(
    'UPDATE (
        SELECT s.id, s.base + ROW_NUMBER() OVER (PARTITION BY s.limit_key ORDER BY s.priority DESC, s.run_at, s.id) AS seq
        FROM (
            SELECT d.id, d.limit_key, d.priority, d.run_at, COALESCE(
                (SELECT MAX(m.ready_seq) FROM {prefix}tasks AS m WHERE m.queue = d.queue AND m.ready_key = d.limit_key),
                (SELECT MIN(m.ready_seq) - 1 FROM {prefix}tasks AS m WHERE m.queue = d.queue),
                0) AS base
            FROM {prefix}tasks AS d
            WHERE d.id IN (', @apalis_ids, ') AND d.limit_seq IS NULL AND d.ready_key IS NOT NULL
        ) AS s
    ) AS n STRAIGHT_JOIN {prefix}tasks AS t FORCE INDEX (PRIMARY) ON t.id = n.id
    SET t.limit_seq = n.seq
    WHERE t.limit_seq IS NULL AND t.ready_key IS NOT NULL'));
SET @apalis_ids = NULL;
SELECT GROUP_CONCAT(QUOTE(id)) INTO @apalis_ids FROM (
    SELECT t.id FROM {prefix}tasks AS t FORCE INDEX ({prefix}tasks_status)
    WHERE t.queue = %(queue)s AND t.status = 'running'
      AND NOT EXISTS (
          SELECT 1 FROM {prefix}workers AS w
          WHERE w.id = t.lock_by AND w.last_seen >= {now} - %(stale_after)s
      )
    LIMIT 10000
) AS stale;
EXECUTE IMMEDIATE IF(@apalis_ids IS NULL, 'DO ?', CONCAT(
    'UPDATE {prefix}tasks AS t
    SET t.lock_at = IF(
            EXISTS (SELECT 1 FROM {prefix}idle AS i
                    WHERE i.worker_id = t.lock_by AND JSON_CONTAINS(i.handed, JSON_QUOTE(t.id)))
            AND NOT EXISTS (SELECT 1 FROM {prefix}workers AS w WHERE w.id = t.lock_by AND w.last_seen >= t.lock_at),
            -1, t.lock_at),
        t.last_error = IF(t.lock_at <=> -1, COALESCE(t.cancel_reason, t.last_error),
            COALESCE(t.cancel_reason, CONCAT(''worker '', t.lock_by, '' stopped sending heartbeats while running this task''))),
        t.done_at = IF(t.cancel_reason IS NOT NULL OR (NOT (t.lock_at <=> -1) AND t.attempts >= t.max_attempts), {now}, NULL),
        t.run_at = IF(t.cancel_reason IS NOT NULL OR (NOT (t.lock_at <=> -1) AND t.attempts >= t.max_attempts), t.run_at, {now}),
        t.status = CASE WHEN t.cancel_reason IS NOT NULL THEN ''cancelled'' WHEN t.lock_at <=> -1 THEN ''pending''
            WHEN t.attempts >= t.max_attempts THEN ''killed'' ELSE ''failed'' END,
        t.attempts = IF(t.lock_at <=> -1 AND t.cancel_reason IS NULL, GREATEST(t.attempts - 1, 0), t.attempts),
        t.lock_by = NULL,
        t.lock_at = NULL
    WHERE t.id IN (', @apalis_ids, ') AND t.status = ''running''
      AND NOT EXISTS (
          SELECT 1 FROM {prefix}workers AS w
          WHERE w.id = t.lock_by AND w.last_seen >= {now} - ?
      )'))
    USING %(stale_after)s

-- name: purge_expired
DELETE FROM {prefix}tasks
WHERE queue = %(queue)s AND status IN ('done', 'killed', 'cancelled') AND done_at < {now} - %(retention)s
