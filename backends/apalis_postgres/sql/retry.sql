-- A failed, killed or cancelled task runs again now with a fresh count of attempts.
WITH retried AS (
    UPDATE {schema}.tasks
    SET status = 'pending', attempts = 0, run_at = extract(epoch FROM now())::float8, done_at = NULL,
        cancel_reason = NULL
    WHERE queue = %(queue)s AND id = %(id)s AND status IN ('failed', 'killed', 'cancelled')
    RETURNING id
)
SELECT retried.id FROM retried, (SELECT pg_notify({channel}, %(queue)s)) AS notified
