-- Tasks this worker claimed but is not running (the claim's reply was lost with a connection),
-- locked longer than stale_after ago (a slow reply is not mistaken for a lost one): back to
-- pending, the attempt not counted; cancelled instead if a cancel was asked meanwhile.
UPDATE {schema}.tasks
SET status = CASE WHEN cancel_reason IS NULL THEN 'pending' ELSE 'cancelled' END,
    attempts = CASE WHEN cancel_reason IS NULL THEN greatest(attempts - 1, 0) ELSE attempts END,
    last_error = coalesce(cancel_reason, last_error),
    done_at = CASE WHEN cancel_reason IS NOT NULL THEN extract(epoch FROM now())::float8 END,
    lock_by = NULL, lock_at = NULL
WHERE queue = %(queue)s AND status = 'running' AND lock_by = %(worker)s
  AND lock_at < extract(epoch FROM now())::float8 - %(grace)s
  AND NOT (id = ANY(%(running)s::text[]))
