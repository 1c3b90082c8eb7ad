-- Tasks this worker claimed but is not running (the claim's reply was lost with a connection),
-- locked longer than stale_after ago (a slow reply is not mistaken for a lost one): back to
-- pending, the attempt not counted.
UPDATE {schema}.tasks
SET status = 'pending', attempts = greatest(attempts - 1, 0), lock_by = NULL, lock_at = NULL
WHERE queue = %(queue)s AND status = 'running' AND lock_by = %(worker)s
  AND lock_at < extract(epoch FROM now())::float8 - %(grace)s
  AND NOT (id = ANY(%(running)s::text[]))
