-- The board's reads: pages by keyset (run_at, id) within one status, and activity.
-- A search first looks for an id or idempotency key equal to it (two index lookups); only when
-- none is, the pages hold the tasks whose last error contains it (%(pattern)s, any case: the
-- column's binary collation is set aside for the comparison).

-- name: find_exact
SELECT {columns} FROM {prefix}tasks WHERE queue = %(queue)s AND id = %(search)s
UNION
SELECT {columns} FROM {prefix}tasks WHERE queue = %(queue)s AND idempotency_key = %(search)s

-- name: page_forward
SELECT id, queue, CASE WHEN %(preview)s IS NULL THEN payload ELSE SUBSTRING(payload, 1, %(preview)s) END,
    status, attempts, max_attempts, run_at, priority, idempotency_key, meta,
    lock_by, last_error, result, created_at, done_at
FROM {prefix}tasks
WHERE queue = %(queue)s AND status = %(status)s AND run_at >= %(run_at)s AND (run_at > %(run_at)s OR id > %(id)s)
  AND (%(pattern)s IS NULL OR last_error COLLATE utf8mb4_general_ci LIKE %(pattern)s)
ORDER BY run_at, id
LIMIT %(limit)s

-- name: page_backward
SELECT id, queue, CASE WHEN %(preview)s IS NULL THEN payload ELSE SUBSTRING(payload, 1, %(preview)s) END,
    status, attempts, max_attempts, run_at, priority, idempotency_key, meta,
    lock_by, last_error, result, created_at, done_at
FROM {prefix}tasks
WHERE queue = %(queue)s AND status = %(status)s AND run_at <= %(run_at)s AND (run_at < %(run_at)s OR id < %(id)s)
  AND (%(pattern)s IS NULL OR last_error COLLATE utf8mb4_general_ci LIKE %(pattern)s)
ORDER BY run_at DESC, id DESC
LIMIT %(limit)s

-- name: oldest_waiting
SELECT LEAST(
    COALESCE((SELECT MIN(run_at) FROM {prefix}tasks WHERE queue = %(queue)s AND status = 'pending'), 1e300),
    COALESCE((SELECT MIN(run_at) FROM {prefix}tasks WHERE queue = %(queue)s AND status = 'failed'), 1e300))

-- name: finished_per_minute
SELECT FLOOR(done_at / 60), status, COUNT(*) FROM {prefix}tasks
WHERE queue = %(queue)s AND status IN ('done', 'killed') AND done_at >= %(since)s
GROUP BY 1, 2
