-- Insert many tasks in one round trip; an id or idempotency key already there is skipped (the
-- caller looks those up). The NOTIFY is part of the same statement, so it is sent on commit.
WITH inserted AS (
    INSERT INTO {schema}.tasks
        (id, queue, payload, run_at, priority, max_attempts, idempotency_key, meta, created_at)
    SELECT u.id, %(queue)s, u.payload, u.run_at, u.priority, u.max_attempts, u.key, coalesce(u.meta::jsonb, '{}'),
           extract(epoch FROM now())::float8
    FROM unnest(%(ids)s::text[], %(payloads)s::bytea[], %(run_ats)s::float8[], %(priorities)s::int[],
                %(max_attempts)s::int[], %(keys)s::text[], %(metas)s::text[])
         AS u(id, payload, run_at, priority, max_attempts, key, meta)
    ON CONFLICT DO NOTHING
    RETURNING id
)
SELECT inserted.id FROM inserted, (SELECT pg_notify(%(channel)s, %(queue)s)) AS notified
