-- Workers not seen for stale_after are gone.
DELETE FROM {schema}.workers WHERE queue = %(queue)s AND last_seen < extract(epoch FROM now())::float8 - %(stale_after)s
