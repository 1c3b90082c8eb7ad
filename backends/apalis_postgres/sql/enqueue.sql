-- Insert many tasks in one round trip; an id or idempotency key already there is skipped (the
-- caller looks those up). The NOTIFY is part of the same statement, so it is sent on commit.
-- A push commits durably by default: its task must survive a server crash.
WITH inserted AS (
    INSERT INTO {schema}.tasks
        (id, queue, payload, run_at, priority, max_attempts, idempotency_key, meta, created_at)
    SELECT u.id, %(queue)s, u.payload, u.run_at, u.priority, u.max_attempts, u.key, coalesce(u.meta::jsonb, '{}'),
           extract(epoch FROM now())::float8
    FROM unnest(%(ids)b::text[], %(payloads)b::bytea[], %(run_ats)b::float8[], %(priorities)b::int[],
                %(max_attempts)b::int[], %(keys)b::text[], %(metas)b::text[])
         AS u(id, payload, run_at, priority, max_attempts, key, meta)
    ON CONFLICT DO NOTHING
    RETURNING id
)
SELECT inserted.id
FROM inserted,
     (SELECT pg_notify({channel}, %(queue)s)) AS notified,
     -- The server's own setting unless the store has `durable_push = false` (then 'off').
     (SELECT set_config('synchronous_commit', coalesce(%(commit)s, current_setting('synchronous_commit')), true))
         AS durability
