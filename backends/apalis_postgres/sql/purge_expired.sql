-- Done, killed and cancelled tasks past their retention, at most `limit` of them: a sweep purges them
-- beside the heartbeat, a statement (and a transaction) at a time (apalis_sql.SqlQueue._tidy).
DELETE FROM {schema}.tasks
WHERE id IN (
    SELECT id FROM {schema}.tasks
    WHERE queue = %(queue)s AND status IN ('done', 'killed', 'cancelled')
      AND done_at < extract(epoch FROM now())::float8 - %(retention)s
    LIMIT %(limit)s
)
