-- Apply a batch of outcomes and, in the same statement, claim ready tasks for the slots those
-- runs free (`_ack_picked`: the worker and the number of tasks wanted, possibly none): a busy worker pays
-- one round trip and one commit per batch, not two.
--
-- The ack leaves alone a task no longer running under the same worker (its lease was lost);
-- `u.status` is the new status of each task. The two UPDATEs never touch the same row: both
-- read the statement's one snapshot, where the acked tasks are running and the claimed ones
-- ready. So a task released or retried here is not claimed again by this statement (the
-- NOTIFY offers it to every worker). Like a claim, it commits without waiting for the WAL
-- flush: an ack lost in a server crash runs its task again.
--
-- `ack_listing` is the same statement for a worker pushes may hand tasks to whose last claim
-- did not come back full: it is listed idle if the claim gets it nothing (handing.sql). Under
-- a backlog `ack` serves, and pays nothing for it.

-- name: _ack_first
{_acked},
{_ack_picked}

-- name: _acked
acked AS (
    -- A run whose task had a cancel requested (`cancel_reason`) and that would run again
    -- (retried, released) ends cancelled instead, with the reason asked for.
    UPDATE {schema}.tasks AS t
    SET status = CASE WHEN t.cancel_reason IS NOT NULL AND u.status IN ('failed', 'pending') THEN 'cancelled'
                      ELSE u.status END,
        attempts = CASE WHEN u.status = 'pending' AND t.cancel_reason IS NULL THEN greatest(t.attempts - 1, 0)
                        ELSE t.attempts END,
        run_at = CASE WHEN t.cancel_reason IS NOT NULL THEN t.run_at
            WHEN u.status = 'failed' THEN coalesce(u.run_at, extract(epoch FROM now())::float8)
            WHEN u.status = 'pending' THEN least(t.run_at, extract(epoch FROM now())::float8)
            ELSE t.run_at END,
        result = CASE WHEN u.status = 'done' THEN u.result::json ELSE t.result END,
        last_error = CASE WHEN t.cancel_reason IS NOT NULL AND u.status IN ('failed', 'pending') THEN t.cancel_reason
                          WHEN u.status IN ('failed', 'killed', 'cancelled') THEN u.error
                          ELSE t.last_error END,
        done_at = CASE WHEN u.status IN ('done', 'killed', 'cancelled') OR t.cancel_reason IS NOT NULL
                       THEN extract(epoch FROM now())::float8 END,
        lock_by = NULL,
        lock_at = NULL
    FROM unnest(%(ids)b::text[], %(lock_bys)b::text[], %(statuses)b::text[], %(results)b::text[],
                %(errors)b::text[], %(run_ats)b::float8[]) AS u(id, lock_by, status, result, error, run_at),
         -- `wake`: some task is ready at once (released, retried without delay), so NOTIFY the
         -- listening pollers, in this round trip. The server sends it once, on commit; it is
         -- evaluated only when some task was acknowledged (a batch of lost leases wakes no one).
         (SELECT set_config('synchronous_commit', 'off', true),
                 CASE WHEN %(wake)s THEN pg_notify({channel}, %(queue)s) END) AS effects
    -- Each task is fetched by primary key: the ids come as a subquery's result, unknown when the
    -- statement is planned, and the running check is that lock_by matches (a task has a lock_by
    -- exactly while it runs: every way out of 'running' clears it). Given the array itself, or
    -- status = 'running', the planner may rather scan the table or the running tasks' range of
    -- tasks_by_status, whose dead entries pile up while a backlog drains.
    WHERE t.id = ANY((SELECT %(ids)b::text[])::text[]) AND t.id = u.id AND t.lock_by = u.lock_by
    -- Whoever waits for a task that ended here is told (`waited`: the others send nothing).
    RETURNING t.id, CASE WHEN t.waited AND t.done_at IS NOT NULL THEN pg_notify({control}, 'd' || t.id) END
)

-- name: _ack_done
-- `_ack_first` for a batch whose every outcome is done with no result, all of one worker's runs
-- (a drain of tasks that return nothing): only the ids are sent (`ids`, `lock_by`), no arrays of
-- outcomes to send and join (psycopg's dump of the six arrays of 50 took 4.7 us a task of the
-- worker's CPU here, the ids alone 1.3 us; the server no longer joins them either).
acked AS (
    UPDATE {schema}.tasks AS t
    SET status = 'done', result = NULL, done_at = extract(epoch FROM now())::float8, lock_by = NULL, lock_at = NULL
    FROM (SELECT set_config('synchronous_commit', 'off', true)) AS effects
    WHERE t.id = ANY((SELECT %(ids)b::text[])::text[]) AND t.lock_by = %(lock_by)s
    RETURNING t.id, CASE WHEN t.waited THEN pg_notify({control}, 'd' || t.id) END
),
{_ack_picked}

-- name: _ack_picked
-- The claim as in claim.sql, for `claim_n` tasks all for the worker `claim_for` (the usual case:
-- one worker per process), or else (both NULL) for `slots` tasks, the n-th claimed going to the
-- n-th slot's worker (`connection._claim_for`). MATERIALIZED: the locking select runs once, however often its result is read. The
-- claimed ids then reach the UPDATE as an array, so each row is fetched by primary key (a join
-- with the CTE makes the planner scan the whole table).
picked AS MATERIALIZED (
    SELECT ARRAY(
        SELECT id FROM {schema}.tasks
        WHERE queue = %(queue)s
          AND status IN ('pending', 'failed')
          AND run_at <= extract(epoch FROM now())::float8
          AND NOT EXISTS (SELECT 1 FROM {schema}.queues AS p WHERE p.queue = %(queue)s AND p.paused)
        ORDER BY priority DESC, run_at, id
        LIMIT coalesce(%(claim_n)s::int, cardinality(%(slots)b::text[]))
        FOR UPDATE SKIP LOCKED
    ) AS ids
)

-- name: _ack_claim
UPDATE {schema}.tasks AS t
SET status = 'running',
    attempts = t.attempts + 1,
    lock_by = coalesce(%(claim_for)s::text, (%(slots)b::text[])[array_position((SELECT ids FROM picked), t.id)]),
    lock_at = extract(epoch FROM now())::float8
WHERE t.id = ANY((SELECT ids FROM picked)::text[])
RETURNING {columns}

-- name: ack
WITH {_ack_first}
{_ack_claim}

-- name: ack_listing
WITH {_ack_first},
claimed AS (
{_ack_claim}
),
{_listing}
SELECT * FROM claimed

-- name: ack_done
WITH {_ack_done}
{_ack_claim}

-- name: ack_done_listing
WITH {_ack_done},
claimed AS (
{_ack_claim}
),
{_listing}
SELECT * FROM claimed
