-- Copies of PostgreSQL's `limit_claim` for `python -m bench.claimpath` (not the store's SQL):
--     python -m bench.claimpath --hot 0 --install bench/claimpath_copies.sql \
--         --variants plain,limited,limited:limit_claim_lean,limited:limit_claim_flat
-- Each takes `limit_claim`'s arguments and returns its rows, for a keyed concurrency without
-- rates only (no keyless share, no rate states, no second walk for a key with room left):
-- - `limit_claim_lean`: the lock and settings in one statement, then one statement (running
--   counts, the walk of the keys, the lock of their heads, the UPDATE) returned as it comes; a
--   walk that reaches the last key comes round at the next claim;
-- - `limit_claim_flat`: the same wrapper and counts around the ordinary claim's range scan of
--   `tasks_ready`, keys at their limit filtered out: not a correct claim (two tasks of one key
--   may come in one claim), the price of the wrapper and counts without a walk.
-- bench/README.md ("Why this design stops short of 0.9 on PostgreSQL") has what they measured.

CREATE OR REPLACE FUNCTION {schema}.limit_claim_lean(
    p_queue text, p_worker text, p_want int, p_after text,
    p_concurrency int, p_keyed_concurrency boolean, p_rate int, p_per float8, p_keyed_rate boolean,
    p_scope text, p_forget boolean, p_keyless_priority int, p_keyless_run_at float8, p_keyless_id text
) RETURNS TABLE (
    o_id text, o_queue text, o_payload bytea, o_status text, o_attempts int, o_max_attempts int,
    o_run_at float8, o_priority int, o_idempotency_key text, o_meta jsonb, o_lock_by text,
    o_last_error text, o_result text, o_created_at float8, o_done_at float8,
    o_after text, o_wake_at float8, o_now float8,
    o_keyless_priority int, o_keyless_run_at float8, o_keyless_id text
) LANGUAGE plpgsql AS $limit_claim$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext(p_scope), hashtext('')), set_config('synchronous_commit', 'off', true),
        set_config('plan_cache_mode', 'force_generic_plan', true), set_config('enable_sort', 'off', true),
        set_config('jit', 'off', true);
    RETURN QUERY
    WITH RECURSIVE blocked AS MATERIALIZED (
        SELECT coalesce(array_agg(r.limit_key), '{}') AS keys FROM (
            SELECT t.limit_key FROM {schema}.tasks AS t
            WHERE t.queue = p_queue AND t.status = 'running' AND t.limit_key IS NOT NULL
            GROUP BY t.limit_key HAVING count(*) >= p_concurrency
        ) AS r
    ),
    walk(key, head, n, chosen) AS (
        SELECT nxt.key, CASE WHEN nxt.key <> ALL((SELECT keys FROM blocked)::text[]) THEN nxt.id END, 1,
               (nxt.key <> ALL((SELECT keys FROM blocked)::text[]))::int
        FROM (
            (SELECT d.limit_key AS key, d.id FROM {schema}.tasks AS d
             WHERE p_after IS NULL AND d.queue = p_queue AND d.status IN ('pending', 'failed') AND d.limit_key IS NOT NULL
             ORDER BY d.limit_key, d.priority DESC, d.run_at, d.id LIMIT 1)
            UNION ALL
            (SELECT d.limit_key AS key, d.id FROM {schema}.tasks AS d
             WHERE p_after IS NOT NULL AND d.queue = p_queue AND d.status IN ('pending', 'failed') AND d.limit_key > p_after
             ORDER BY d.limit_key, d.priority DESC, d.run_at, d.id LIMIT 1)
        ) AS nxt
      UNION ALL
        SELECT nxt.key, CASE WHEN nxt.key <> ALL((SELECT keys FROM blocked)::text[]) THEN nxt.id END, w.n + 1,
               w.chosen + (nxt.key <> ALL((SELECT keys FROM blocked)::text[]))::int
        FROM walk AS w
        CROSS JOIN LATERAL (
            SELECT d.limit_key AS key, d.id FROM {schema}.tasks AS d
            WHERE d.queue = p_queue AND d.status IN ('pending', 'failed') AND d.limit_key > w.key
            ORDER BY d.limit_key, d.priority DESC, d.run_at, d.id LIMIT 1
        ) AS nxt
        WHERE w.chosen < p_want AND w.n < 10000
    ),
    claimed AS (
        UPDATE {schema}.tasks AS t
        SET status = 'running', attempts = t.attempts + 1, lock_by = p_worker, lock_at = extract(epoch FROM now())::float8
        WHERE t.ctid = ANY(ARRAY(
            SELECT d.ctid FROM {schema}.tasks AS d
            WHERE d.id = ANY(ARRAY(SELECT w.head FROM walk AS w WHERE w.head IS NOT NULL))
              AND d.status || '' IN ('pending', 'failed')
            FOR UPDATE SKIP LOCKED
        ))
        RETURNING {columns}
    )
    SELECT c.*, NULL::text, NULL::float8, NULL::float8, NULL::int, NULL::float8, NULL::text FROM claimed AS c
    UNION ALL
    SELECT NULL::text, NULL::text, NULL::bytea, NULL::text, NULL::int, NULL::int, NULL::float8,
        NULL::int, NULL::text, NULL::jsonb, NULL::text, NULL::text, NULL::text, NULL::float8, NULL::float8,
        (SELECT CASE WHEN max(w.chosen) >= p_want THEN (array_agg(w.key ORDER BY w.n DESC))[1] END FROM walk AS w),
        NULL::float8, extract(epoch FROM clock_timestamp())::float8, NULL::int, NULL::float8, NULL::text;
END
$limit_claim$;

CREATE OR REPLACE FUNCTION {schema}.limit_claim_flat(
    p_queue text, p_worker text, p_want int, p_after text,
    p_concurrency int, p_keyed_concurrency boolean, p_rate int, p_per float8, p_keyed_rate boolean,
    p_scope text, p_forget boolean, p_keyless_priority int, p_keyless_run_at float8, p_keyless_id text
) RETURNS TABLE (
    o_id text, o_queue text, o_payload bytea, o_status text, o_attempts int, o_max_attempts int,
    o_run_at float8, o_priority int, o_idempotency_key text, o_meta jsonb, o_lock_by text,
    o_last_error text, o_result text, o_created_at float8, o_done_at float8,
    o_after text, o_wake_at float8, o_now float8,
    o_keyless_priority int, o_keyless_run_at float8, o_keyless_id text
) LANGUAGE plpgsql AS $limit_claim$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext(p_scope), hashtext('')), set_config('synchronous_commit', 'off', true),
        set_config('plan_cache_mode', 'force_generic_plan', true), set_config('enable_sort', 'off', true),
        set_config('jit', 'off', true);
    RETURN QUERY
    WITH RECURSIVE blocked AS MATERIALIZED (
        SELECT coalesce(array_agg(r.limit_key), '{}') AS keys FROM (
            SELECT t.limit_key FROM {schema}.tasks AS t
            WHERE t.queue = p_queue AND t.status = 'running' AND t.limit_key IS NOT NULL
            GROUP BY t.limit_key HAVING count(*) >= p_concurrency
        ) AS r
    ),
    walk(key, head, n, chosen) AS (
        SELECT nxt.key, CASE WHEN nxt.key <> ALL((SELECT keys FROM blocked)::text[]) THEN nxt.id END, 1,
               (nxt.key <> ALL((SELECT keys FROM blocked)::text[]))::int
        FROM (
            (SELECT d.limit_key AS key, d.id FROM {schema}.tasks AS d
             WHERE p_after IS NULL AND d.queue = p_queue AND d.status IN ('pending', 'failed') AND d.limit_key IS NOT NULL
             ORDER BY d.limit_key, d.priority DESC, d.run_at, d.id LIMIT 1)
            UNION ALL
            (SELECT d.limit_key AS key, d.id FROM {schema}.tasks AS d
             WHERE p_after IS NOT NULL AND d.queue = p_queue AND d.status IN ('pending', 'failed') AND d.limit_key > p_after
             ORDER BY d.limit_key, d.priority DESC, d.run_at, d.id LIMIT 1)
        ) AS nxt
      UNION ALL
        SELECT nxt.key, CASE WHEN nxt.key <> ALL((SELECT keys FROM blocked)::text[]) THEN nxt.id END, w.n + 1,
               w.chosen + (nxt.key <> ALL((SELECT keys FROM blocked)::text[]))::int
        FROM walk AS w
        CROSS JOIN LATERAL (
            SELECT d.limit_key AS key, d.id FROM {schema}.tasks AS d
            WHERE d.queue = p_queue AND d.status IN ('pending', 'failed') AND d.limit_key > w.key
            ORDER BY d.limit_key, d.priority DESC, d.run_at, d.id LIMIT 1
        ) AS nxt
        WHERE w.chosen < p_want AND w.n < 10000
    ),
    claimed AS (
        UPDATE {schema}.tasks AS t
        SET status = 'running', attempts = t.attempts + 1, lock_by = p_worker, lock_at = extract(epoch FROM now())::float8
        WHERE t.ctid = ANY(ARRAY(
            SELECT d.ctid FROM {schema}.tasks AS d
            WHERE d.queue = p_queue AND d.status IN ('pending', 'failed') AND d.run_at <= extract(epoch FROM now())::float8
              AND d.limit_key <> ALL((SELECT keys FROM blocked)::text[])
            ORDER BY d.priority DESC, d.run_at, d.id
            LIMIT p_want
            FOR UPDATE SKIP LOCKED
        ))
        RETURNING {columns}
    )
    SELECT c.*, NULL::text, NULL::float8, NULL::float8, NULL::int, NULL::float8, NULL::text FROM claimed AS c
    UNION ALL
    SELECT NULL::text, NULL::text, NULL::bytea, NULL::text, NULL::int, NULL::int, NULL::float8,
        NULL::int, NULL::text, NULL::jsonb, NULL::text, NULL::text, NULL::text, NULL::float8, NULL::float8,
        NULL::text,
        NULL::float8, extract(epoch FROM clock_timestamp())::float8, NULL::int, NULL::float8, NULL::text;
END
$limit_claim$;
