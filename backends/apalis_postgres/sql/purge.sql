-- Delete tasks of one status finished (or created) more than `older_than` seconds ago.
DELETE FROM {schema}.tasks
WHERE queue = %(queue)s AND status = %(status)s
  AND coalesce(done_at, created_at) <= extract(epoch FROM now())::float8 - %(older_than)s
