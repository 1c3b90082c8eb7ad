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
-- One atomic statement: lock up to :limit ready tasks for :worker. RETURNING order is not
-- guaranteed, so the caller sorts. Columns in apalis_sql.TASK_COLUMNS order.
UPDATE {prefix}tasks
SET status = 'running', attempts = attempts + 1, lock_by = :worker, locked_at = :now
WHERE id IN (
    SELECT id FROM {prefix}tasks
    WHERE queue = :queue AND status IN ('pending', 'failed') AND run_at <= :now
    ORDER BY priority DESC, run_at, id
    LIMIT :limit
)
RETURNING id, queue, payload, status, attempts, max_attempts, run_at, priority, idempotency_key, meta,
    lock_by, last_error, result, created_at, done_at;

-- name: ack_done
-- (result, done_at, id, lock_by): only a task still running under the same lock.
UPDATE {prefix}tasks
SET status = 'done', result = ?1, done_at = ?2, lock_by = NULL, locked_at = NULL
WHERE id = ?3 AND status = 'running' AND lock_by = ?4;

-- name: ack_retry
-- (error, run_at, id, lock_by)
UPDATE {prefix}tasks
SET status = 'failed', last_error = ?1, run_at = ?2, lock_by = NULL, locked_at = NULL
WHERE id = ?3 AND status = 'running' AND lock_by = ?4;

-- name: ack_kill
-- (error, done_at, id, lock_by)
UPDATE {prefix}tasks
SET status = 'killed', last_error = ?1, done_at = ?2, lock_by = NULL, locked_at = NULL
WHERE id = ?3 AND status = 'running' AND lock_by = ?4;

-- name: ack_release
-- (now, id, lock_by): back to pending, the attempt not counted.
UPDATE {prefix}tasks
SET status = 'pending', attempts = max(attempts - 1, 0), run_at = min(run_at, ?1), lock_by = NULL, locked_at = NULL
WHERE id = ?2 AND status = 'running' AND lock_by = ?3;
