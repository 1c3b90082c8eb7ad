-- Done and killed tasks past their retention.
DELETE FROM {schema}.tasks
WHERE queue = %(queue)s AND status IN ('done', 'killed') AND done_at < extract(epoch FROM now())::float8 - %(retention)s
