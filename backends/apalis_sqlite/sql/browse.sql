-- The board's reads: pages by keyset (run_at, id) within one status, and activity.
-- :search matches an id or idempotency key exactly, or a piece of the last error (any case).

-- name: page_forward
SELECT id, queue, CASE WHEN :preview IS NULL THEN payload ELSE substr(payload, 1, :preview) END,
    status, attempts, max_attempts, run_at, priority, idempotency_key, meta,
    lock_by, last_error, result, created_at, done_at
FROM {prefix}tasks
WHERE queue = :queue AND status = :status AND run_at >= :run_at AND (run_at > :run_at OR id > :id)
  AND (:search IS NULL OR id = :search OR idempotency_key = :search OR last_error LIKE :pattern ESCAPE '\')
ORDER BY run_at, id
LIMIT :limit;

-- name: page_backward
SELECT id, queue, CASE WHEN :preview IS NULL THEN payload ELSE substr(payload, 1, :preview) END,
    status, attempts, max_attempts, run_at, priority, idempotency_key, meta,
    lock_by, last_error, result, created_at, done_at
FROM {prefix}tasks
WHERE queue = :queue AND status = :status AND run_at <= :run_at AND (run_at < :run_at OR id < :id)
  AND (:search IS NULL OR id = :search OR idempotency_key = :search OR last_error LIKE :pattern ESCAPE '\')
ORDER BY run_at DESC, id DESC
LIMIT :limit;

-- name: oldest_waiting
-- The earliest run_at among the tasks waiting to run (each status read from the front of its index).
SELECT min(first) FROM (
    SELECT min(run_at) AS first FROM {prefix}tasks WHERE queue = :queue AND status = 'pending'
    UNION ALL
    SELECT min(run_at) FROM {prefix}tasks WHERE queue = :queue AND status = 'failed'
);

-- name: finished_per_minute
SELECT CAST(done_at / 60 AS INTEGER), status, count(*) FROM {prefix}tasks
WHERE queue = :queue AND done_at IS NOT NULL AND done_at >= :since
GROUP BY 1, 2;
