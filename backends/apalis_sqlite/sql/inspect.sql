-- The Inspector: peek, count, and the operator's retry/kill/purge.

-- name: get_task
SELECT id, queue, payload, status, attempts, max_attempts, run_at, priority, idempotency_key, meta,
    lock_by, last_error, result, created_at, done_at
FROM {prefix}tasks WHERE queue = :queue AND id = :id;

-- name: stats
-- Per status: how many, and how many wait for a run_at still to come (read from the status index).
SELECT status, count(*), sum(status IN ('pending', 'failed') AND run_at > :now)
FROM {prefix}tasks WHERE queue = :queue GROUP BY status;

-- name: retry
-- A failed, killed or cancelled task runs again now, with a fresh count of attempts.
UPDATE {prefix}tasks
SET status = 'pending', attempts = 0, run_at = :now, done_at = NULL, lock_by = NULL, locked_at = NULL,
    cancel_reason = NULL
WHERE queue = :queue AND id = :id AND status IN ('failed', 'killed', 'cancelled');

-- name: kill
UPDATE {prefix}tasks
SET status = 'killed', last_error = :reason, done_at = :now, run_at = min(run_at, :now), lock_by = NULL,
    locked_at = NULL, cancel_reason = NULL
WHERE queue = :queue AND id = :id AND status NOT IN ('done', 'killed', 'cancelled');

-- name: purge
DELETE FROM {prefix}tasks
WHERE queue = :queue AND status = :status AND coalesce(done_at, created_at) <= :cutoff;
