-- Kill a task that has not finished; whoever waits for it is told.
UPDATE {schema}.tasks
SET status = 'killed', last_error = %(reason)s, lock_by = NULL, lock_at = NULL,
    done_at = extract(epoch FROM now())::float8
WHERE queue = %(queue)s AND id = %(id)s AND status IN ('pending', 'running', 'failed')
RETURNING id, CASE WHEN waited THEN pg_notify({control}, 'd' || id) END
