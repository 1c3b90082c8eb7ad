-- Schema version 13: a lone push plans its hand-over once per connection, not at every call.
-- PL/pgSQL plans each of a function's statements with the call's values for its first five
-- calls, then keeps one generic plan only if the planner estimates it no dearer than those
-- custom plans were. The hand-over's statement (below) never passed that test: it was planned
-- again at every push that found a worker listed, 0.3 ms of the server's time on a lone task's
-- way to its worker (round trip of a handed push, 200 pairs, p25 0.60-0.65 ms against 0.32-0.34
-- ms with generic plans; a plain insert 0.25 ms either way). The function now runs with
-- `plan_cache_mode = force_generic_plan` for its own statements (set local to its transaction,
-- and put back as it was before it returns: a caller's later statements plan as they did); the
-- generic plan is the custom plan's shape (index scans by queue; the listing by its queue and
-- `until`). Otherwise `push_lone` is migration 0010's, unchanged.
CREATE OR REPLACE FUNCTION {schema}.push_lone(
    p_queue text, p_id text, p_payload bytea, p_run_at float8, p_priority int, p_max_attempts int,
    p_key text, p_meta jsonb, p_commit text, OUT pushed text, OUT unflushed boolean
) LANGUAGE plpgsql AS $push_lone$
DECLARE
    v_notified text;
    v_plans text := current_setting('plan_cache_mode');
BEGIN
    unflushed := false;
    v_notified := set_config('plan_cache_mode', 'force_generic_plan', true);
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
        v_notified := set_config('plan_cache_mode', v_plans, true);
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
    v_notified := set_config('plan_cache_mode', v_plans, true);
END
$push_lone$;
