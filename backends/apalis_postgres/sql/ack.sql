-- Apply a batch of outcomes in one statement; a task no longer running under the same worker
-- (its lease was lost) is left alone. `u.status` is the new status of each task. Like a claim,
-- it commits without waiting for the WAL flush: an ack lost in a server crash runs its task again.
UPDATE {schema}.tasks AS t
SET status = u.status,
    attempts = CASE WHEN u.status = 'pending' THEN greatest(t.attempts - 1, 0) ELSE t.attempts END,
    run_at = CASE u.status
        WHEN 'failed' THEN coalesce(u.run_at, extract(epoch FROM now())::float8)
        WHEN 'pending' THEN least(t.run_at, extract(epoch FROM now())::float8)
        ELSE t.run_at END,
    result = CASE WHEN u.status = 'done' THEN u.result::json ELSE t.result END,
    last_error = CASE WHEN u.status IN ('failed', 'killed') THEN u.error ELSE t.last_error END,
    done_at = CASE WHEN u.status IN ('done', 'killed') THEN extract(epoch FROM now())::float8 END,
    lock_by = NULL,
    lock_at = NULL
FROM unnest(%(ids)b::text[], %(lock_bys)b::text[], %(statuses)b::text[], %(results)b::text[],
            %(errors)b::text[], %(run_ats)b::float8[]) AS u(id, lock_by, status, result, error, run_at),
     (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed
WHERE t.id = ANY(%(ids)b::text[]) AND t.id = u.id AND t.status = 'running' AND t.lock_by = u.lock_by
RETURNING t.status
