-- Register or refresh a worker.
INSERT INTO {schema}.workers AS w (id, name, queue, host, pid, started_at, last_seen, layers, running)
VALUES (%(id)s, %(name)s, %(queue)s, %(host)s, %(pid)s, %(started_at)s, extract(epoch FROM now())::float8,
        %(layers)s::jsonb, %(running)s)
ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen, running = excluded.running
