-- Tasks this worker claimed but is not running (the claim's reply was lost with a connection),
-- locked longer than stale_after ago (a slow reply is not mistaken for a lost one): back to
-- pending, the attempt not counted; cancelled instead if a cancel was asked meanwhile.
-- Not the task a push handed to it that it has not `received`: its NOTIFY is on the way, late
-- (a slow LISTEN connection), and would start it after another claim had (apalis_postgres.handing).
UPDATE {schema}.tasks
SET status = CASE WHEN cancel_reason IS NULL THEN 'pending' ELSE 'cancelled' END,
    attempts = CASE WHEN cancel_reason IS NULL THEN greatest(attempts - 1, 0) ELSE attempts END,
    last_error = coalesce(cancel_reason, last_error),
    done_at = CASE WHEN cancel_reason IS NOT NULL THEN extract(epoch FROM now())::float8 END,
    lock_by = NULL, lock_at = NULL
WHERE queue = %(queue)s AND status = 'running' AND lock_by = %(worker)s
  AND lock_at < extract(epoch FROM now())::float8 - %(grace)s
  AND NOT (id = ANY(%(running)s::text[]))
  AND NOT EXISTS (
      SELECT 1 FROM {schema}.idle_workers AS w
      WHERE w.worker = %(worker)s AND w.handed = {schema}.tasks.id AND w.handed IS DISTINCT FROM %(received)s::text
  )
