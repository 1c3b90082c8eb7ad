-- The board's reads: pages by keyset (run_at, id) within one status, and activity.
-- A search first looks for an id or idempotency key equal to it (two index lookups); only when
-- none is, the pages hold the tasks whose last error contains it (%(pattern)s, any case).

-- name: find_exact
SELECT t.id, t.queue, t.payload, t.status, t.attempts, t.max_attempts, t.run_at, t.priority,
    t.idempotency_key, t.meta, t.lock_by, t.last_error, t.result::text, t.created_at, t.done_at
FROM {schema}.tasks AS t
WHERE t.queue = %(queue)s AND (t.id = %(search)s::text OR t.idempotency_key = %(search)s::text)

-- name: page_forward
SELECT t.id, t.queue,
    CASE WHEN %(preview)s::int IS NULL THEN t.payload ELSE substring(t.payload FROM 1 FOR %(preview)s::int) END,
    t.status, t.attempts, t.max_attempts, t.run_at, t.priority, t.idempotency_key, t.meta,
    t.lock_by, t.last_error, t.result::text, t.created_at, t.done_at
FROM {schema}.tasks AS t
WHERE t.queue = %(queue)s AND t.status = %(status)s AND (t.run_at, t.id) > (%(run_at)s::float8, %(id)s::text)
  AND (%(pattern)s::text IS NULL OR t.last_error ILIKE %(pattern)s::text)
ORDER BY t.run_at, t.id
LIMIT %(limit)s

-- name: page_backward
SELECT t.id, t.queue,
    CASE WHEN %(preview)s::int IS NULL THEN t.payload ELSE substring(t.payload FROM 1 FOR %(preview)s::int) END,
    t.status, t.attempts, t.max_attempts, t.run_at, t.priority, t.idempotency_key, t.meta,
    t.lock_by, t.last_error, t.result::text, t.created_at, t.done_at
FROM {schema}.tasks AS t
WHERE t.queue = %(queue)s AND t.status = %(status)s AND (t.run_at, t.id) < (%(run_at)s::float8, %(id)s::text)
  AND (%(pattern)s::text IS NULL OR t.last_error ILIKE %(pattern)s::text)
ORDER BY t.run_at DESC, t.id DESC
LIMIT %(limit)s

-- name: oldest_waiting
-- The earliest run_at among the tasks waiting to run, each status read from the front of its index.
SELECT least(
    (SELECT min(run_at) FROM {schema}.tasks WHERE queue = %(queue)s AND status = 'pending'),
    (SELECT min(run_at) FROM {schema}.tasks WHERE queue = %(queue)s AND status = 'failed'))

-- name: finished_per_minute
SELECT floor(done_at / 60)::bigint, status, count(*) FROM {schema}.tasks
WHERE queue = %(queue)s AND status IN ('done', 'killed') AND done_at >= %(since)s::float8
GROUP BY 1, 2
