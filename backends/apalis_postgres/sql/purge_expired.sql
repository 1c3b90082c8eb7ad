-- Done, killed and cancelled tasks past their retention.
DELETE FROM {schema}.tasks
WHERE queue = %(queue)s AND status IN ('done', 'killed', 'cancelled')
  AND done_at < extract(epoch FROM now())::float8 - %(retention)s
