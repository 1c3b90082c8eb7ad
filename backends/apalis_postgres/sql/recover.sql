-- Running tasks whose worker stopped beating: run again now, or killed if out of attempts, or
-- cancelled if a cancel was asked of the run. Its rows are the tasks that run again (the
-- pollers are woken for those only); whoever waits for one that ended is told.
-- Run before `forget_workers`, which deletes the rows of the stale workers read here.
--
-- A task a push handed to a worker (apalis_postgres.handing) that never beat after the hand-over
-- goes back pending with its attempt not counted: such a worker was killed while listed idle
-- (its listing outlives it by up to a beat), so no handler received the task, and an attempt
-- counted would kill a task allowed one without its ever running. (A worker that received the
-- task and was killed before its next beat gets it back the same way: at most one run of the
-- task is not counted, since a task that comes back is claimed, never handed, again.)
WITH unreceived AS (
    UPDATE {schema}.tasks AS t
    SET status = CASE WHEN t.cancel_reason IS NULL THEN 'pending' ELSE 'cancelled' END,
        attempts = CASE WHEN t.cancel_reason IS NULL THEN greatest(t.attempts - 1, 0) ELSE t.attempts END,
        last_error = coalesce(t.cancel_reason, t.last_error),
        done_at = CASE WHEN t.cancel_reason IS NOT NULL THEN extract(epoch FROM now())::float8 END,
        lock_by = NULL, lock_at = NULL
    FROM {schema}.idle_workers AS h
    WHERE h.queue = %(queue)s AND t.id = h.handed AND t.lock_by = h.worker AND t.status = 'running'
      AND NOT EXISTS (
          SELECT 1 FROM {schema}.workers AS w
          WHERE w.id = t.lock_by
            AND w.last_seen >= least(t.lock_at, extract(epoch FROM now())::float8 - %(stale_after)s)
      )
    RETURNING t.id, t.status, CASE WHEN t.waited AND t.done_at IS NOT NULL THEN pg_notify({control}, 'd' || t.id) END
),
recovered AS (
    UPDATE {schema}.tasks AS t
    SET status = CASE WHEN t.cancel_reason IS NOT NULL THEN 'cancelled'
                      WHEN t.attempts >= t.max_attempts THEN 'killed' ELSE 'failed' END,
        run_at = CASE WHEN t.cancel_reason IS NOT NULL OR t.attempts >= t.max_attempts THEN t.run_at
                      ELSE extract(epoch FROM now())::float8 END,
        done_at = CASE WHEN t.cancel_reason IS NOT NULL OR t.attempts >= t.max_attempts
                       THEN extract(epoch FROM now())::float8 END,
        last_error = coalesce(t.cancel_reason,
                              'worker ' || t.lock_by || ' stopped sending heartbeats while running this task'),
        lock_by = NULL,
        lock_at = NULL
    WHERE t.queue = %(queue)s AND t.status = 'running'
      AND NOT EXISTS (
          SELECT 1 FROM {schema}.workers AS w
          WHERE w.id = t.lock_by AND w.last_seen >= extract(epoch FROM now())::float8 - %(stale_after)s
      )
      AND NOT EXISTS (SELECT 1 FROM unreceived AS u WHERE u.id = t.id)
    RETURNING t.status, CASE WHEN t.waited AND t.done_at IS NOT NULL THEN pg_notify({control}, 'd' || t.id) END
)
SELECT status FROM recovered WHERE status = 'failed'
UNION ALL
SELECT status FROM unreceived WHERE status = 'pending'
