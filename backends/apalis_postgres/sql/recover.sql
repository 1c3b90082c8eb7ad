-- Running tasks whose worker stopped beating: run again now, or killed if out of attempts, or
-- cancelled if a cancel was asked of the run. Its rows are the tasks that run again (the
-- pollers are woken for those only); whoever waits for one that ended is told.
WITH recovered AS (
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
    RETURNING t.status, CASE WHEN t.waited AND t.done_at IS NOT NULL THEN pg_notify({control}, 'd' || t.id) END
)
SELECT status FROM recovered WHERE status = 'failed'
