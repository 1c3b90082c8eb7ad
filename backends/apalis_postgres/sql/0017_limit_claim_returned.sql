-- Schema version 17: a keyed claim under a per-key concurrency (no keyed rate) whose interleaved
-- scan (migration 0016) fills it costs one statement after the lock: the pause, the running
-- counts, the scan, the lock of the chosen and the UPDATE, whose rows are returned as it gives
-- them (no arrays of rows built, returned through and unnested). Only a claim the scan leaves
-- short reads the counts again (with the scan's tasks among them) and walks the keys for the
-- rest, as before. And a claim the keys left short tells its worker to skip the scan next time
-- (`o_keyless_id` 'walk', which the worker sends back as `p_keyless_id`: PostgreSQL keeps no
-- keyless place since migration 0014): a daemon keeping up behind a saturated key read the
-- scan's whole window (the hot key's tasks, one a place) before walking at every claim; it now
-- walks at once, until a walk fills a claim. Otherwise as migration 0016's function.

CREATE OR REPLACE FUNCTION {schema}.limit_claim(
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
DECLARE
    c_scan CONSTANT int := 10000;  -- keys one claim looks at (fleet.claim.MAX_KEYS_PER_CLAIM)
    c_window_extra CONSTANT int := 64;  -- entries the interleaved scan reads beyond twice the claim
    v_took int := 0;  -- the tasks the interleaved scan took (its rows already returned)
    v_set text;
    v_now float8;
    v_interval float8 := p_per / p_rate;
    v_budget int := p_want;
    v_run_keys text[];  -- the running tasks by key (the rows: a vanished worker's go with its leases)
    v_run_counts int[];
    v_total int;
    v_keyless_running int;
    v_taken text[] := '{}';  -- the keys of the tasks this claim took, one entry a task
    v_ids text[] := '{}';  -- the tasks this claim took
    v_rows {schema}.tasks[] := '{}';  -- and their rows, as the claim's UPDATE left them
    v_turn_rows {schema}.tasks[];
    v_paused boolean;
    v_first_blocked text[];  -- the keys at their concurrency before this claim took any
    v_rates jsonb := '{}';  -- the rate states this claim moved, by state name
    v_tat float8;
    v_queue_tat float8;  -- a queue-wide rate's state
    v_room int;
    v_got int;
    v_wake float8;
    v_after text := p_after;
    v_ahead float8;
    -- one walk (fleet.claim._Turns.turn) and one turn of it
    v_start text := p_after;
    v_cursor text;
    v_wrapped boolean;
    v_walked int;
    v_room_left boolean;
    v_seen int := 0;
    v_blocked text[];
    v_heads text[];
    v_walk_keys text[];
    v_walk_tats float8[];
    v_turn_seen int;
    v_turn_chosen int;
    v_turn_last text;
    v_wake_tat float8;
    v_turn_ids text[];
    v_turn_keys text[];
    v_turn_tats float8[];
    v_key text;
    v_hint text;  -- 'walk': the worker's next claim skips the interleaved scan (o_keyless_id)
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext(p_scope), hashtext(''));
    -- As `advisory_lock`: no wait for the WAL flush (a claim lost in a crash leaves its tasks
    -- ready); generic plans (planning took longer than running); no explicit sort where an index
    -- gives the order, and no JIT (limits.sql says why).
    v_set := set_config('synchronous_commit', 'off', true);
    v_set := set_config('plan_cache_mode', 'force_generic_plan', true);
    v_set := set_config('enable_sort', 'off', true);
    v_set := set_config('jit', 'off', true);
    v_now := extract(epoch FROM clock_timestamp())::float8;
    IF p_rate IS NOT NULL AND NOT p_keyed_rate THEN  -- a queue-wide rate bounds the whole claim
        SELECT r.tat INTO v_queue_tat FROM {schema}.limit_rates AS r WHERE r.queue = p_queue AND r.state = '*';
        v_room := {schema}.limit_allowance(v_queue_tat, v_now, p_rate, p_per);
        IF v_room < v_budget THEN
            v_wake := greatest(coalesce(v_queue_tat, v_now), v_now) - p_per + v_interval;
        END IF;
        v_budget := least(v_budget, v_room);
    END IF;

    IF v_budget > 0 AND p_keyed_concurrency AND NOT p_keyed_rate AND p_keyless_id IS DISTINCT FROM 'walk' THEN
        -- The keys' tasks in their interleaved order (`tasks_ready_by_seq`, migration 0016): one
        -- range scan of the first tasks there, the keys at their concurrency passed over, each
        -- key taking what room it has left (a key appears once a place, so a scan of a claim's
        -- length meets a key once or twice), the first of those locked and claimed, and their
        -- rows returned as the UPDATE gives them. The pause and the running counts are read in
        -- the same statement. A scan that leaves the claim short (keys at their limit with more
        -- tasks in front than its window holds, tasks not due yet, a paused queue) leaves the
        -- rest to the walk below, which reads the counts again (with this scan's tasks).
        RETURN QUERY
        WITH running AS MATERIALIZED (
            SELECT r.limit_key AS key, count(*)::int AS n FROM {schema}.tasks AS r
            WHERE r.queue = p_queue AND r.status = 'running' AND r.limit_key IS NOT NULL
            GROUP BY r.limit_key
        ),
        window_ AS (
            SELECT d.ctid AS tid, d.id, d.limit_key AS key, d.limit_seq AS seq, d.run_at FROM {schema}.tasks AS d
            WHERE d.queue = p_queue AND d.status IN ('pending', 'failed') AND d.limit_key IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM {schema}.queues AS q WHERE q.queue = p_queue AND q.paused)
            ORDER BY d.limit_seq, d.id
            LIMIT 2 * v_budget + c_window_extra
        ),
        open AS MATERIALIZED (
            SELECT w.tid, w.seq, w.id, w.key FROM window_ AS w
            WHERE w.run_at <= v_now
              AND w.key <> ALL(ARRAY(SELECT r.key FROM running AS r WHERE r.n >= p_concurrency))
            LIMIT v_budget
        ),
        chosen AS (
            SELECT o.tid FROM (
                SELECT o.tid, o.key, row_number() OVER (PARTITION BY o.key ORDER BY o.seq, o.id) AS nth FROM open AS o
            ) AS o
            LEFT JOIN running AS r ON r.key = o.key
            WHERE o.nth + coalesce(r.n, 0) <= p_concurrency
        )
        UPDATE {schema}.tasks AS t
        SET status = 'running', attempts = t.attempts + 1, lock_by = p_worker,
            lock_at = extract(epoch FROM now())::float8
        WHERE t.ctid = ANY(ARRAY(
            SELECT d.ctid FROM {schema}.tasks AS d
            WHERE d.ctid = ANY(ARRAY(SELECT c.tid FROM chosen AS c)) AND d.status || '' IN ('pending', 'failed')
            FOR UPDATE SKIP LOCKED
        ))
        RETURNING {columns}, NULL::text, NULL::float8, NULL::float8, NULL::int, NULL::float8, NULL::text;
        GET DIAGNOSTICS v_took = ROW_COUNT;
        v_budget := v_budget - v_took;
        IF v_budget <= 0 THEN
            v_set := pg_notify({channel}, p_queue)::text;  -- as a full turn of the walk (below)
        END IF;
    END IF;

    IF v_budget > 0 THEN
        -- The pause, the running tasks by key and the keys at their concurrency: one statement.
        SELECT coalesce((SELECT q.paused FROM {schema}.queues AS q WHERE q.queue = p_queue), false),
               coalesce(array_agg(r.limit_key) FILTER (WHERE r.limit_key IS NOT NULL), '{}'),
               coalesce(array_agg(r.running) FILTER (WHERE r.limit_key IS NOT NULL), '{}'),
               coalesce(sum(r.running), 0), coalesce(sum(r.running) FILTER (WHERE r.limit_key IS NULL), 0),
               coalesce(array_agg(r.limit_key) FILTER (
                   WHERE p_keyed_concurrency AND r.limit_key IS NOT NULL AND r.running >= p_concurrency), '{}')
        INTO v_paused, v_run_keys, v_run_counts, v_total, v_keyless_running, v_first_blocked
        FROM (
            SELECT t.limit_key, count(*)::int AS running FROM {schema}.tasks AS t
            WHERE t.queue = p_queue AND t.status = 'running'
            GROUP BY t.limit_key
        ) AS r;
        IF v_paused THEN
            RETURN QUERY SELECT NULL::text, NULL::text, NULL::bytea, NULL::text, NULL::int, NULL::int, NULL::float8,
                NULL::int, NULL::text, NULL::jsonb, NULL::text, NULL::text, NULL::text, NULL::float8, NULL::float8,
                p_after, NULL::float8, v_now, p_keyless_priority, p_keyless_run_at, p_keyless_id;
            RETURN;  -- a paused queue hands out nothing (apalis_cli.control)
        END IF;

        -- A queue-wide concurrency bounds the whole claim.
        IF p_concurrency IS NOT NULL AND NOT p_keyed_concurrency THEN
            v_budget := least(v_budget, p_concurrency - v_total);
        END IF;

        IF v_budget > 0 AND NOT (p_keyed_concurrency OR p_keyed_rate) THEN
            -- No key: the queue's usual order (`limit_take`).
            WITH claimed AS (
                UPDATE {schema}.tasks AS t
                SET status = 'running', attempts = t.attempts + 1, lock_by = p_worker,
                    lock_at = extract(epoch FROM now())::float8
                WHERE t.ctid = ANY(ARRAY(
                    SELECT d.ctid FROM {schema}.tasks AS d
                    WHERE d.queue = p_queue AND d.status IN ('pending', 'failed') AND d.run_at <= v_now
                    ORDER BY d.priority DESC, d.run_at, d.id
                    LIMIT v_budget
                    FOR UPDATE SKIP LOCKED
                ))
                RETURNING t.id, t AS claimed_row
            )
            SELECT coalesce(array_agg(claimed.id), '{}'), coalesce(array_agg(claimed.claimed_row), '{}') INTO v_ids, v_rows
            FROM claimed;
            v_got := cardinality(v_ids);
        ELSIF v_budget > 0 THEN
            -- Keys take turns (fleet.claim._Turns.turn): walks from the key after the last claim's,
            -- coming round once; another walk from the first key while a key had room for more.
            IF p_keyed_rate THEN  -- allowance() is 0 exactly when a state is further ahead than this
                v_ahead := p_per - (1 - 1e-9) * p_per / p_rate - 1e-6;
            END IF;
            IF v_budget > 0 THEN  -- what the scan left, or all of it (a keyed rate; the worker's last claim came short)
                LOOP
                    v_walked := 0;
                    v_cursor := v_start;
                    v_wrapped := v_start IS NULL;
                    v_room_left := false;
                    WHILE v_budget - v_walked > 0 AND v_seen < c_scan LOOP
                        -- the keys without room: at their concurrency, or out of rate by this claim
                        -- (before it took any: those the counts named)
                        IF cardinality(v_taken) = 0 AND v_rates = '{}' THEN
                            v_blocked := v_first_blocked;
                        ELSE
                        SELECT coalesce(array_agg(b.key), '{}') INTO v_blocked FROM (
                            SELECT c.key FROM (
                                SELECT * FROM unnest(v_run_keys, v_run_counts) AS r(key, n)
                                UNION ALL
                                SELECT k, 1 FROM unnest(v_taken) AS k
                            ) AS c
                            WHERE p_keyed_concurrency AND c.key IS NOT NULL
                            GROUP BY c.key HAVING sum(c.n) >= p_concurrency
                            UNION
                            SELECT substr(s.key, 3) FROM jsonb_each_text(v_rates) AS s
                            WHERE p_keyed_rate AND s.key LIKE 'k:%'
                              AND {schema}.limit_allowance(s.value::float8, v_now, p_rate, p_per) <= 0
                        ) AS b;
                        END IF;
                        IF p_keyed_rate THEN
                            SELECT array_agg(w.head) FILTER (WHERE w.head IS NOT NULL),
                                   array_agg(w.key) FILTER (WHERE w.head IS NOT NULL),
                                   array_agg(w.tat) FILTER (WHERE w.head IS NOT NULL),
                                   coalesce(max(w.n), 0), coalesce(max(w.chosen), 0),
                                   (array_agg(w.key ORDER BY w.n DESC))[1],
                                   min(w.tat) FILTER (WHERE NOT w.open AND w.key <> ALL(v_blocked))
                            INTO v_heads, v_walk_keys, v_walk_tats, v_turn_seen, v_turn_chosen, v_turn_last, v_wake_tat
                            FROM {schema}.limit_walk(
                                p_queue, v_cursor, CASE WHEN v_wrapped THEN v_start END, v_budget - v_walked, c_scan - v_seen,
                                v_blocked, v_now, v_ahead
                            ) AS w;
                            IF v_wake_tat IS NOT NULL THEN
                                v_wake := least(coalesce(v_wake, 'infinity'), v_wake_tat - p_per + v_interval);
                            END IF;
                            v_turn_ids := '{}';
                            IF v_heads IS NOT NULL THEN
                                -- The chosen, locked by primary key; the status checked again on the
                                -- locked row so that no index serves it (limits.sql's `_turn` says why).
                                -- Each row is then updated where the lock found it (its ctid, a TID
                                -- scan): a second descent of the primary key per task cost 5-9% of the
                                -- claim. (A row another transaction changed after this statement's
                                -- snapshot and before the lock is not found there: it stays ready for
                                -- the next claim, as one SKIP LOCKED passes.)
                                WITH claimed AS (
                                    UPDATE {schema}.tasks AS t
                                    SET status = 'running', attempts = t.attempts + 1, lock_by = p_worker,
                                        lock_at = extract(epoch FROM now())::float8
                                    WHERE t.ctid = ANY(ARRAY(
                                        SELECT d.ctid FROM {schema}.tasks AS d
                                        WHERE d.id = ANY(v_heads) AND d.status || '' IN ('pending', 'failed')
                                        FOR UPDATE SKIP LOCKED
                                    ))
                                    RETURNING t.id, t.limit_key, t AS claimed_row
                                )
                                SELECT coalesce(array_agg(c.id), '{}'), coalesce(array_agg(c.limit_key), '{}'),
                                       coalesce(array_agg(w.tat), '{}'), coalesce(array_agg(c.claimed_row), '{}')
                                INTO v_turn_ids, v_turn_keys, v_turn_tats, v_turn_rows
                                FROM claimed AS c JOIN unnest(v_walk_keys, v_walk_tats) AS w(key, tat) ON w.key = c.limit_key;
                            END IF;
                        ELSE
                            -- No rate state to read: the walk (`limit_walk`'s, each step the next key's
                            -- first task, or rarely, where that one is scheduled ahead, its first due
                            -- now), the lock of the chosen (as above) and the UPDATE, in one statement.
                            -- (The keys compare in "C", the column's collation, over the variables'.)
                            WITH RECURSIVE walk(key, head, n, chosen) AS (
                                SELECT nxt.key, h.head, 1, (h.head IS NOT NULL)::int
                                FROM (
                                    (SELECT d.limit_key AS key, d.id, d.run_at FROM {schema}.tasks AS d
                                     WHERE v_cursor IS NULL AND d.queue = p_queue AND d.status IN ('pending', 'failed')
                                       AND d.limit_key IS NOT NULL
                                     ORDER BY d.limit_key, d.priority DESC, d.run_at, d.id
                                     LIMIT 1)
                                    UNION ALL
                                    (SELECT d.limit_key AS key, d.id, d.run_at FROM {schema}.tasks AS d
                                     WHERE v_cursor IS NOT NULL AND d.queue = p_queue AND d.status IN ('pending', 'failed')
                                       AND d.limit_key > v_cursor
                                     ORDER BY d.limit_key, d.priority DESC, d.run_at, d.id
                                     LIMIT 1)
                                ) AS nxt
                                CROSS JOIN LATERAL (
                                    SELECT CASE WHEN nxt.key <> ALL(v_blocked) THEN coalesce(
                                        CASE WHEN nxt.run_at <= v_now THEN nxt.id END,
                                        (SELECT d.id FROM {schema}.tasks AS d
                                         WHERE d.queue = p_queue AND d.limit_key = nxt.key AND d.status IN ('pending', 'failed')
                                           AND d.run_at <= v_now
                                         ORDER BY d.priority DESC, d.run_at, d.id
                                         LIMIT 1)
                                    ) END AS head
                                ) AS h
                                WHERE NOT v_wrapped OR v_start IS NULL OR nxt.key <= v_start
                              UNION ALL
                                SELECT nxt.key, h.head, w.n + 1, w.chosen + (h.head IS NOT NULL)::int
                                FROM walk AS w
                                CROSS JOIN LATERAL (
                                    SELECT d.limit_key AS key, d.id, d.run_at FROM {schema}.tasks AS d
                                    WHERE d.queue = p_queue AND d.status IN ('pending', 'failed') AND d.limit_key > w.key
                                    ORDER BY d.limit_key, d.priority DESC, d.run_at, d.id
                                    LIMIT 1
                                ) AS nxt
                                CROSS JOIN LATERAL (
                                    SELECT CASE WHEN nxt.key <> ALL(v_blocked) THEN coalesce(
                                        CASE WHEN nxt.run_at <= v_now THEN nxt.id END,
                                        (SELECT d.id FROM {schema}.tasks AS d
                                         WHERE d.queue = p_queue AND d.limit_key = nxt.key AND d.status IN ('pending', 'failed')
                                           AND d.run_at <= v_now
                                         ORDER BY d.priority DESC, d.run_at, d.id
                                         LIMIT 1)
                                    ) END AS head
                                ) AS h
                                WHERE w.n < c_scan - v_seen AND w.chosen < v_budget - v_walked
                                  AND (NOT v_wrapped OR v_start IS NULL OR nxt.key <= v_start)
                            ),
                            claimed AS (
                                UPDATE {schema}.tasks AS t
                                SET status = 'running', attempts = t.attempts + 1, lock_by = p_worker,
                                    lock_at = extract(epoch FROM now())::float8
                                WHERE t.ctid = ANY(ARRAY(
                                    SELECT d.ctid FROM {schema}.tasks AS d
                                    WHERE d.id = ANY(ARRAY(SELECT w.head FROM walk AS w WHERE w.head IS NOT NULL))
                                      AND d.status || '' IN ('pending', 'failed')
                                    FOR UPDATE SKIP LOCKED
                                ))
                                RETURNING t.id, t.limit_key, t AS claimed_row
                            )
                            SELECT c.ids, c.keys, c.rows, w.seen, w.chosen, w.last
                            INTO v_turn_ids, v_turn_keys, v_turn_rows, v_turn_seen, v_turn_chosen, v_turn_last
                            FROM (SELECT coalesce(array_agg(c.id), '{}') AS ids, coalesce(array_agg(c.limit_key), '{}') AS keys,
                                         coalesce(array_agg(c.claimed_row), '{}') AS rows
                                  FROM claimed AS c) AS c
                            CROSS JOIN (SELECT coalesce(max(w.n), 0) AS seen, coalesce(max(w.chosen), 0) AS chosen,
                                               (array_agg(w.key ORDER BY w.n DESC))[1] AS last
                                        FROM walk AS w) AS w;
                            v_turn_tats := '{}';
                        END IF;
                        v_seen := v_seen + v_turn_seen;
                        -- A turn that chose all it was asked for may have left more that other daemons
                        -- could start: the queue's listeners are told (on commit), as by a push. Without
                        -- it a daemon idle since its last claim found every key at its limit would learn
                        -- that a slot freed only at its next poll.
                        IF v_turn_chosen >= v_budget - v_walked THEN
                            v_set := pg_notify({channel}, p_queue)::text;
                        END IF;
                        IF cardinality(v_turn_ids) > 0 THEN
                            -- a key with room for more than this one: walk again (fleet.claim `room_left`)
                            -- (never with a concurrency of 1 a key: it has room for one at most)
                            IF NOT v_room_left AND v_budget - v_walked > 1 AND cardinality(v_turn_ids) > 0
                               AND (NOT p_keyed_concurrency OR p_concurrency > 1) THEN
                                SELECT EXISTS (
                                    SELECT 1 FROM unnest(v_turn_keys, v_turn_tats) AS k(key, tat)
                                    LEFT JOIN (
                                        SELECT c.key, sum(c.n) AS n FROM (
                                            SELECT * FROM unnest(v_run_keys, v_run_counts) AS r(key, n)
                                            UNION ALL
                                            SELECT x, 1 FROM unnest(v_taken) AS x
                                        ) AS c
                                        GROUP BY c.key
                                    ) AS r ON r.key = k.key
                                    WHERE (NOT p_keyed_concurrency OR p_concurrency - coalesce(r.n, 0) > 1)
                                      AND (NOT p_keyed_rate OR {schema}.limit_allowance(
                                               coalesce((v_rates ->> ('k:' || k.key))::float8, k.tat), v_now, p_rate, p_per) > 1)
                                ) INTO v_room_left;
                            END IF;
                            IF p_keyed_rate THEN
                                FOR i IN 1 .. cardinality(v_turn_ids) LOOP
                                    v_key := v_turn_keys[i];
                                    v_tat := coalesce((v_rates ->> ('k:' || v_key))::float8, v_turn_tats[i]);
                                    v_rates := jsonb_set(v_rates, ARRAY['k:' || v_key],
                                                         to_jsonb(greatest(coalesce(v_tat, v_now), v_now) + v_interval));
                                END LOOP;
                            END IF;
                            v_taken := v_taken || v_turn_keys;
                            v_ids := v_ids || v_turn_ids;
                            v_rows := v_rows || v_turn_rows;
                            v_walked := v_walked + cardinality(v_turn_ids);
                        END IF;
                        IF v_turn_last IS NOT NULL THEN
                            v_after := v_turn_last;
                            v_cursor := v_turn_last;
                        END IF;
                        IF v_turn_chosen < v_budget - (v_walked - cardinality(v_turn_ids)) AND v_turn_seen < c_scan - (v_seen - v_turn_seen) THEN
                            EXIT WHEN v_wrapped;  -- no key left in its range: come round once
                            v_wrapped := true;
                            v_cursor := NULL;
                        END IF;
                    END LOOP;
                    v_budget := v_budget - v_walked;
                    EXIT WHEN v_budget <= 0 OR v_walked = 0 OR NOT v_room_left;
                    v_start := NULL;
                END LOOP;
            END IF;

            -- The keys left this claim short: the worker's next claim walks without the scan first.
            IF v_budget > 0 AND p_keyed_concurrency AND NOT p_keyed_rate THEN
                v_hint := 'walk';
            END IF;

            -- Tasks pushed without a key: one group of their own, offered what the keys leave.
            IF v_budget > 0 THEN
                v_room := v_budget;
                IF p_keyed_concurrency THEN
                    v_room := least(v_room, p_concurrency - v_keyless_running);
                END IF;
                IF p_keyed_rate THEN
                    v_tat := coalesce((v_rates ->> '-')::float8,
                                      (SELECT r.tat FROM {schema}.limit_rates AS r WHERE r.queue = p_queue AND r.state = '-'));
                    v_got := {schema}.limit_allowance(v_tat, v_now, p_rate, p_per);
                    IF v_got <= 0 AND v_tat IS NOT NULL THEN
                        v_wake := least(coalesce(v_wake, 'infinity'), v_tat - p_per + v_interval);
                    END IF;
                    v_room := least(v_room, v_got);
                END IF;
                IF v_room > 0 THEN
                    -- Their own index (`tasks_ready_keyless`), in the queue's order: one descent
                    -- where there are none, and no keyed task read where there are.
                    WITH claimed AS (
                        UPDATE {schema}.tasks AS t
                        SET status = 'running', attempts = t.attempts + 1, lock_by = p_worker,
                            lock_at = extract(epoch FROM now())::float8
                        WHERE t.ctid = ANY(ARRAY(
                            SELECT d.ctid FROM {schema}.tasks AS d
                            WHERE d.queue = p_queue AND d.status IN ('pending', 'failed') AND d.limit_key IS NULL
                              AND d.run_at <= v_now
                            ORDER BY d.priority DESC, d.run_at, d.id
                            LIMIT v_room
                            FOR UPDATE SKIP LOCKED
                        ))
                        RETURNING t.id, t AS claimed_row
                    )
                    SELECT coalesce(array_agg(c.id), '{}'), coalesce(array_agg(c.claimed_row), '{}')
                    INTO v_turn_ids, v_turn_rows
                    FROM claimed AS c;
                    v_got := cardinality(v_turn_ids);
                    v_ids := v_ids || v_turn_ids;
                    v_rows := v_rows || v_turn_rows;
                    IF v_got > 0 AND p_keyed_rate THEN
                        v_rates := jsonb_set(v_rates, '{-}', to_jsonb(greatest(coalesce(v_tat, v_now), v_now) + v_got * v_interval));
                    END IF;
                END IF;
            END IF;
        END IF;

    END IF;  -- v_budget > 0 after the scan

    -- A queue-wide rate (beside a keyed concurrency, or alone) is spent by all this claim took.
    IF p_rate IS NOT NULL AND NOT p_keyed_rate AND v_took + cardinality(v_ids) > 0 THEN
        v_rates := v_rates || jsonb_build_object(
            '*', greatest(coalesce(v_queue_tat, v_now), v_now) + (v_took + cardinality(v_ids)) * v_interval);
    END IF;
    IF v_rates <> '{}' THEN
        INSERT INTO {schema}.limit_rates AS r (queue, state, tat)
        SELECT p_queue, s.key, s.value::float8 FROM jsonb_each_text(v_rates) AS s
        ON CONFLICT (queue, state) DO UPDATE SET tat = excluded.tat;
    END IF;
    IF p_forget THEN  -- states in the past carry nothing (a full burst is available)
        DELETE FROM {schema}.limit_rates AS r WHERE r.queue = p_queue AND r.tat <= v_now;
    END IF;
    RETURN QUERY
        SELECT {columns}, NULL::text, NULL::float8, NULL::float8, NULL::int, NULL::float8, NULL::text
        FROM unnest(v_rows) AS t
        UNION ALL
        SELECT NULL::text, NULL::text, NULL::bytea, NULL::text, NULL::int, NULL::int, NULL::float8,
            NULL::int, NULL::text, NULL::jsonb, NULL::text, NULL::text, NULL::text, NULL::float8, NULL::float8,
            v_after, v_wake, v_now, NULL::int, NULL::float8, v_hint;
END
$limit_claim$;
