-- The hot path: push, claim, acknowledge. Times come from Python (epoch seconds).

-- name: insert
-- Parameters in apalis_sql.INSERT_COLUMNS order; a known id or (queue, key) is skipped.
INSERT INTO {prefix}tasks
    (id, queue, payload, status, attempts, max_attempts, run_at, priority, idempotency_key, meta, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT DO NOTHING;

-- name: ids_by_key
-- The task that holds each idempotency key (a JSON array of keys).
SELECT idempotency_key, id FROM {prefix}tasks
WHERE queue = :queue AND idempotency_key IN (SELECT value FROM json_each(:keys));

-- name: claim
-- One atomic statement: lock up to :limit ready tasks for :worker, none while the queue is
-- paused. A cancel is one UPDATE of the same rows, so SQLite's write lock orders the two: a
-- cancelled task is never claimed. RETURNING order is not guaranteed, so the caller sorts.
-- Columns in apalis_sql.TASK_COLUMNS order. The ready tasks are in two indexes of one order
-- (without a limit key, with one: 0005_ready_split.sql), read in step by a merge. The rows are
-- found by the rowid each index entry carries, not each looked up again by its id in the
-- primary key's index (a descent over 30-character ids per task).
UPDATE {prefix}tasks
SET status = 'running', attempts = attempts + 1, lock_by = :worker, locked_at = :now
WHERE rowid IN (
    SELECT rid FROM (
        SELECT rowid AS rid, priority, run_at, id FROM {prefix}tasks
        WHERE queue = :queue AND status IN ('pending', 'failed') AND limit_key IS NULL AND run_at <= :now
        UNION ALL
        SELECT rowid AS rid, priority, run_at, id FROM {prefix}tasks
        WHERE queue = :queue AND status IN ('pending', 'failed') AND limit_key IS NOT NULL AND run_at <= :now
        ORDER BY priority DESC, run_at, id
        LIMIT :limit
    )
    WHERE NOT EXISTS (SELECT 1 FROM {prefix}queues WHERE queue = :queue AND paused = 1)
)
RETURNING id, queue, payload, status, attempts, max_attempts, run_at, priority, idempotency_key, meta,
    lock_by, last_error, result, created_at, done_at;

-- name: any_ready
-- Whether `claim` would find a task (the queue's pause aside), read without the write lock.
SELECT EXISTS (
    SELECT 1 FROM {prefix}tasks
    WHERE queue = :queue AND status IN ('pending', 'failed') AND limit_key IS NULL AND run_at <= :now
) OR EXISTS (
    SELECT 1 FROM {prefix}tasks
    WHERE queue = :queue AND status IN ('pending', 'failed') AND limit_key IS NOT NULL AND run_at <= :now
);

-- name: ack_done
-- (result, done_at, id, lock_by): only a task still running under the same lock.
UPDATE {prefix}tasks
SET status = 'done', result = ?1, done_at = ?2, lock_by = NULL, locked_at = NULL, cancel_reason = NULL
WHERE id = ?3 AND status = 'running' AND lock_by = ?4;

-- name: ack_retry
-- (error, run_at, id, lock_by); a task with a cancel requested is cancelled instead, never run again.
UPDATE {prefix}tasks
SET status = CASE WHEN cancel_reason IS NULL THEN 'failed' ELSE 'cancelled' END,
    last_error = coalesce(cancel_reason, ?1),
    run_at = CASE WHEN cancel_reason IS NULL THEN ?2 ELSE min(run_at, ?2) END,
    done_at = CASE WHEN cancel_reason IS NULL THEN NULL ELSE (julianday('now') - 2440587.5) * 86400.0 END,
    lock_by = NULL, locked_at = NULL, cancel_reason = NULL
WHERE id = ?3 AND status = 'running' AND lock_by = ?4;

-- name: ack_kill
-- (error, done_at, id, lock_by)
UPDATE {prefix}tasks
SET status = 'killed', last_error = ?1, done_at = ?2, lock_by = NULL, locked_at = NULL, cancel_reason = NULL
WHERE id = ?3 AND status = 'running' AND lock_by = ?4;

-- name: ack_cancel
-- (reason, done_at, id, lock_by): the run was stopped on a cancel.
UPDATE {prefix}tasks
SET status = 'cancelled', last_error = ?1, done_at = ?2, run_at = min(run_at, ?2), lock_by = NULL,
    locked_at = NULL, cancel_reason = NULL
WHERE id = ?3 AND status = 'running' AND lock_by = ?4;

-- name: ack_release
-- (now, id, lock_by): back to pending, the attempt not counted; cancelled if a cancel was requested.
UPDATE {prefix}tasks
SET status = CASE WHEN cancel_reason IS NULL THEN 'pending' ELSE 'cancelled' END,
    attempts = max(attempts - 1, 0), run_at = min(run_at, ?1),
    last_error = coalesce(cancel_reason, last_error),
    done_at = CASE WHEN cancel_reason IS NULL THEN done_at ELSE ?1 END,
    lock_by = NULL, locked_at = NULL, cancel_reason = NULL
WHERE id = ?2 AND status = 'running' AND lock_by = ?3;
