-- Claim up to `limit` ready tasks of a queue for one worker, in one statement. SKIP LOCKED lets
-- concurrent workers take disjoint batches without waiting on each other. The claim commits
-- without waiting for the WAL flush (synchronous_commit off for this transaction only): a claim
-- lost in a server crash leaves its tasks ready, which at-least-once delivery covers anyway.
-- In the same statement the worker is listed idle when it got nothing, unlisted when it got
-- some (handing.sql's `_listing`; `list_workers` is empty for a worker no push hands to).
WITH claimed AS (
    UPDATE {schema}.tasks AS t
    SET status = 'running',
        attempts = t.attempts + 1,
        lock_by = %(worker)s,
        lock_at = extract(epoch FROM now())::float8
    FROM (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed
    -- ARRAY(...) runs the locking subquery once, then each row is fetched by primary key, whatever
    -- the size of the table (a join here lets the planner pick a full scan on small tables).
    WHERE t.id = ANY(ARRAY(
        SELECT id FROM {schema}.tasks
        WHERE queue = %(queue)s
          AND status IN ('pending', 'failed')
          AND run_at <= extract(epoch FROM now())::float8
          -- A paused queue hands out nothing: checked here, so no claim races a pause.
          AND NOT EXISTS (SELECT 1 FROM {schema}.queues AS p WHERE p.queue = %(queue)s AND p.paused)
        ORDER BY priority DESC, run_at, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ))
    RETURNING {columns}
),
{_listing}
SELECT * FROM claimed
