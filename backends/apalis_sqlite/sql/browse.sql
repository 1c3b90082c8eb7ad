-- The board's reads: pages by keyset (run_at, id) within one status, and activity.
-- A search first looks for an id or idempotency key equal to it (two index lookups); only when
-- none is, the pages hold the tasks whose last error contains it (:pattern, any case).

-- name: find_exact
SELECT id, queue, payload, status, attempts, max_attempts, run_at, priority, idempotency_key, meta,
    lock_by, last_error, result, created_at, done_at
FROM {prefix}tasks
WHERE queue = :queue AND id = :search
UNION
SELECT id, queue, payload, status, attempts, max_attempts, run_at, priority, idempotency_key, meta,
    lock_by, last_error, result, created_at, done_at
FROM {prefix}tasks
WHERE queue = :queue AND idempotency_key = :search;

-- name: page_forward
SELECT id, queue, CASE WHEN :preview IS NULL THEN payload ELSE substr(payload, 1, :preview) END,
    status, attempts, max_attempts, run_at, priority, idempotency_key, meta,
    lock_by, last_error, result, created_at, done_at
FROM {prefix}tasks
WHERE queue = :queue AND status = :status AND run_at >= :run_at AND (run_at > :run_at OR id > :id)
  AND (:pattern IS NULL OR last_error LIKE :pattern ESCAPE '\')
ORDER BY run_at, id
LIMIT :limit;

-- name: page_backward
SELECT id, queue, CASE WHEN :preview IS NULL THEN payload ELSE substr(payload, 1, :preview) END,
    status, attempts, max_attempts, run_at, priority, idempotency_key, meta,
    lock_by, last_error, result, created_at, done_at
FROM {prefix}tasks
WHERE queue = :queue AND status = :status AND run_at <= :run_at AND (run_at < :run_at OR id < :id)
  AND (:pattern IS NULL OR last_error LIKE :pattern ESCAPE '\')
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
-- Read from the status index alone (it holds done_at): every finished task of the queue is
-- visited, but no table row is.
SELECT CAST(done_at / 60 AS INTEGER), status, count(*) FROM {prefix}tasks
WHERE queue = :queue AND status IN ('done', 'killed') AND done_at >= :since
GROUP BY 1, 2;
