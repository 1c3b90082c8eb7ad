-- Schema version 10: a lone push NOTIFYs before its WAL flush when a worker of its queue polls.
-- `push_lone` is migration 0008's `push_one` (kept as it was, for processes of the version
-- before) but for its commit: when the push is durable (`p_commit` NULL: the server's own
-- setting) and a worker of the queue was listed lately (`idle_workers`: one is idle now, and the
-- task is handed to it, or one polls, busy for now), the push commits without waiting for the
-- flush and says so (`unflushed`); the caller then makes it durable before it returns
-- (`flush_push`: a commit that writes WAL waits for the flush of the WAL up to it, the task's
-- insert included). The server sends a transaction's notifications at its commit, and with
-- `synchronous_commit` on only once its commit record is on disk: so the worker now starts the
-- task, or claims it, while the push's flush is under way (0.3 ms on a quiet disk here, 2-5 ms
-- while another server writes), and the caller learns it is pushed when it would have before,
-- one round trip later. A push to a queue no worker polls is the one durable insert of
-- `push_one`, at its cost.
--
-- A crash before the flush can lose a task the worker already started: the push never
-- returned (its connection is lost), so the caller tries it again, and the task may run twice,
-- as at-least-once delivery allows. A push whose id or key was already stored while a worker is
-- listed also says `unflushed`: an earlier try of it may have committed so before its
-- connection was lost. (Edited in place in the session it landed in, unreleased: a schema
-- migrated to 10 before keeps the body that did this for hand-overs only.) A later change is a
-- new migration with CREATE OR REPLACE.
CREATE OR REPLACE FUNCTION {schema}.push_lone(
    p_queue text, p_id text, p_payload bytea, p_run_at float8, p_priority int, p_max_attempts int,
    p_key text, p_meta jsonb, p_commit text, OUT pushed text, OUT unflushed boolean
) LANGUAGE plpgsql AS $push_lone$
DECLARE
    v_notified text;
BEGIN
    unflushed := false;
    -- The server's own setting unless the store has `durable_push = false` (then 'off').
    -- (Assignments of plain expressions skip the executor: cheaper than PERFORM.)
    v_notified := set_config('synchronous_commit', coalesce(p_commit, current_setting('synchronous_commit')), true);
    INSERT INTO {schema}.tasks AS t
        (id, queue, payload, run_at, priority, max_attempts, idempotency_key, meta, created_at)
    SELECT p_id, p_queue, p_payload, p_run_at, p_priority, p_max_attempts, p_key, coalesce(p_meta, '{}'),
           extract(epoch FROM now())::float8
    WHERE p_run_at > extract(epoch FROM now())::float8 OR NOT EXISTS (
        SELECT 1 FROM {schema}.idle_workers AS w
        WHERE w.queue = p_queue AND w.until >= extract(epoch FROM now())::float8 AND w.channel <> ''
    )
    ON CONFLICT DO NOTHING
    RETURNING t.id INTO pushed;
    IF pushed IS NOT NULL THEN
        v_notified := pg_notify({channel}, p_queue)::text;
        -- A worker of the queue was listed lately (it polls, busy for now, and this NOTIFY wakes
        -- its claim): as for a hand-over, the NOTIFY leaves at the commit, the flush is the
        -- caller's. (Not while none polls: then a NOTIFY wakes no one and the second round trip
        -- would only cost the push.)
        IF p_commit IS NULL AND p_run_at <= extract(epoch FROM now())::float8 AND EXISTS (
            SELECT 1 FROM {schema}.idle_workers AS w
            WHERE w.queue = p_queue AND w.until >= extract(epoch FROM now())::float8
        ) AND has_function_privilege('pg_logical_emit_message(boolean, text, text)', 'EXECUTE') THEN
            unflushed := true;
            v_notified := set_config('synchronous_commit', 'off', true);
        END IF;
        RETURN;
    END IF;

    -- A worker is listed idle (or the id is already stored: then this inserts nothing either).
    -- The task is claimed in the same statement for the worker listed idle the longest on its
    -- queue when it would be the next one claimed: due now, no other task of the queue ready
    -- (whatever its priority), the queue not paused. The listing is used up (`channel` '',
    -- `handed` the task) and the NOTIFY on the worker's channel carries the task as a JSON array
    -- (worker id, id, base64 payload, max_attempts, run_at, priority, idempotency key, meta,
    -- created_at); one of 8,000 bytes or more (a large payload) is not handed: the task is
    -- inserted ready and the queue's pollers are woken, as a push without idle workers is.
    -- The task counts its first attempt and is locked by the worker, as a claim would leave it.
    -- SKIP LOCKED: two pushes at once hand to two workers, or one of them to none.
    WITH new AS MATERIALIZED (
        SELECT p_id AS id, p_payload AS payload, p_run_at AS run_at, p_priority AS priority,
               p_max_attempts AS max_attempts, p_key AS key, coalesce(p_meta, '{}') AS meta,
               extract(epoch FROM now())::float8 AS created_at
    ),
    idle AS MATERIALIZED (
        SELECT w.worker, w.channel,
               json_build_array(w.worker, n.id, encode(n.payload, 'base64'), n.max_attempts, n.run_at, n.priority,
                                n.key, n.meta, n.created_at)::text AS note
        FROM new AS n, {schema}.idle_workers AS w
        WHERE n.run_at <= n.created_at
          AND w.queue = p_queue AND w.until >= n.created_at AND w.channel <> ''
          AND NOT EXISTS (
              SELECT 1 FROM {schema}.tasks AS t
              WHERE t.queue = w.queue AND t.status IN ('pending', 'failed') AND t.run_at <= n.created_at
          )
          AND NOT EXISTS (SELECT 1 FROM {schema}.queues AS p WHERE p.queue = w.queue AND p.paused)
        ORDER BY w.until
        LIMIT 1
        FOR UPDATE OF w SKIP LOCKED
    ),
    inserted AS (
        INSERT INTO {schema}.tasks AS t
            (id, queue, payload, run_at, priority, max_attempts, idempotency_key, meta, created_at,
             status, attempts, lock_by, lock_at)
        SELECT n.id, p_queue, n.payload, n.run_at, n.priority, n.max_attempts, n.key, n.meta, n.created_at,
               CASE WHEN i.worker IS NULL THEN 'pending' ELSE 'running' END,
               CASE WHEN i.worker IS NULL THEN 0 ELSE 1 END,
               i.worker,
               CASE WHEN i.worker IS NOT NULL THEN n.created_at END
        FROM new AS n LEFT JOIN idle AS i ON octet_length(i.note) < 7990
        ON CONFLICT DO NOTHING
        RETURNING t.id, t.lock_by
    ),
    handed AS (
        UPDATE {schema}.idle_workers AS w SET channel = '', handed = ins.id
        FROM inserted AS ins
        WHERE w.worker = ins.lock_by
    )
    SELECT ins.id,
           (CASE WHEN ins.lock_by IS NULL THEN pg_notify({channel}, p_queue)
                 ELSE pg_notify((SELECT channel FROM idle), (SELECT note FROM idle)) END)::text
    INTO pushed, v_notified
    FROM inserted AS ins;
    -- Handed, or woken (a worker is listed), or stored before: the NOTIFY leaves at the commit,
    -- the flush is the caller's. (Not where this role may not write the WAL record that
    -- `flush_push` makes durable with.)
    IF p_commit IS NULL
       AND has_function_privilege('pg_logical_emit_message(boolean, text, text)', 'EXECUTE') THEN
        unflushed := true;
        v_notified := set_config('synchronous_commit', 'off', true);
    END IF;
END
$push_lone$;
