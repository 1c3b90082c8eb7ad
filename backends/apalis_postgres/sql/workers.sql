SELECT id, name, queue, host, pid, started_at, last_seen, layers, running
FROM {schema}.workers WHERE queue = %(queue)s ORDER BY started_at, id
