-- Claims within global limits (apalis_sql.limits.LimitedClaims over pgmq's tables): one call of
-- the queue's own function (`create_limit_claim`), which first takes the queue's limit lock, so
-- the counts it reads cannot change before it commits. A message's limit key is its "apalis"
-- header `limit_key` (`_key`, compared byte by byte as the claim's turns compare keys in Python);
-- the key index (`create_key_index`) orders a queue's claimable messages (`_claimable`: not in
-- flight) by a 64-bit hash of the key (`_hkey`), then vt: a key's ready messages come first in
-- its range; the keys take turns in the order of their hashes. "Ready" is `vt <= now()`,
-- the transaction's start: a message that came due while the claim waited for the lock waits
-- for the next claim, and so does one pushed after a pause that committed while the claim was
-- under way (after it read the pause): the pause holds it back. A claimed message is read as
-- pgmq.read reads it: vt moved by the lease, read_ct + 1, last_read_at now. A message whose lease
-- ended without an acknowledgement (its worker died) comes back into the key index when a sweep
-- marks it lost (`limit_sweep`, beside a limited worker's heartbeat).

-- name: _key
(headers -> 'apalis' ->> 'limit_key') COLLATE "C"

-- name: _read
SET vt = clock_timestamp() + make_interval(secs => %(lease)s::float8), read_ct = m.read_ct + 1,
    last_read_at = clock_timestamp()

-- name: _claimed
RETURNING m.msg_id, m.read_ct, extract(epoch FROM m.enqueued_at)::float8, m.message, m.headers -> 'apalis',
          %(worker)s::text

-- name: _hkey
-- The key index's first column: an integer, compared in a step of the walk and in each descent
-- where the key's text was (a text comparison per index entry read: 8% fewer server instructions
-- a saturated claim + archive, bench/README.md). Two keys of one hash (64 bits: about one pair
-- in 10^10 among 100,000 keys) would share a turn: the one with the earlier head is the pair's;
-- each key's limits hold whatever the order.
hashtextextended(headers -> 'apalis' ->> 'limit_key', 0)

-- name: _claimable
-- The messages a claim may take now or later, and the only ones in the key index: never read,
-- waiting for their retry (the attempt that failed is the last read), or marked lost (`_mark_lost`:
-- read, and the lease ended without an acknowledgement). A message in flight is not in it: a
-- claim's UPDATE (not HOT: pgmq's vt index) adds no entry to the key index (one entry a claimed
-- message fewer to write, and none for the walk to pass: bench/README.md, session 13).
(read_ct = 0 OR headers -> 'apalis' ->> 'failed_ct' = read_ct::text OR headers -> 'apalis' ->> 'lost' = read_ct::text)

-- name: _mark_lost
-- A message read `read_ct` times, none of them acknowledged and the last one's lease over: marked
-- lost (a header, "lost": read_ct), and so claimable again (`_claimable`). Foreign headers that
-- are not an object give way to ours, as in `annotate`.
headers = CASE WHEN jsonb_typeof(m.headers) = 'object' THEN m.headers ELSE '{}' END
    || jsonb_build_object('apalis',
        CASE WHEN jsonb_typeof(m.headers -> 'apalis') = 'object' THEN m.headers -> 'apalis' ELSE '{}' END
        || jsonb_build_object('lost', m.read_ct))

-- name: _sweep_lag
-- How far behind now() a sweep stops: a write that moved a message's vt into the past without
-- marking it (an earlier version's `release`, pgmq.set_vt by another client) and committed after
-- the sweep's snapshot is still ahead of where that sweep stopped, if it committed within this
-- time of its write (later, or behind the sweeps in any way: the next full mark, `mark_lost`).
-- A lease ends at least 1 s after its claim (`PgmqQueue.poll_compact`).
interval '1 second'

-- name: mark_lost
-- Every message lost until now, marked, and the queue's sweeps go on from here: at the key
-- index's making (same transaction, under pgmq's queue lock), and as each process's first sweep
-- of the queue and every `MARK_ALL_EVERY` after (`PgmqQueue._tidy_beside`). A write that moved a
-- message's vt behind where the sweeps had got to without marking it (`_sweep_lag`) is met by no
-- `limit_sweep`: the next full mark finds it. One pass over the queue table (its ready messages):
-- on a backlog of 100,000 never read, 14-45 ms (bench/README.md, session 13).
WITH lost AS (
    UPDATE {q} AS m SET {_mark_lost}
    WHERE m.vt <= now() AND m.read_ct > 0 AND ({_claimable}) IS NOT TRUE
    RETURNING 1
)
INSERT INTO apalis_pgmq.limit_sweeps AS s (queue, swept_to)
SELECT %(queue)s, now() - {_sweep_lag} FROM (SELECT count(*) FROM lost) AS l
ON CONFLICT (queue) DO UPDATE SET swept_to = excluded.swept_to

-- name: stats_behind
-- Whether the planner's statistics of the queue table are far behind its size: twice the rows
-- the last ANALYZE (or VACUUM, or the key index's making) counted, and a thousand more. The
-- limited claim function keeps its plans for the life of a connection (`create_limit_claim`), and
-- plans made while the queue was near empty (a keyed worker waiting for work) stay: when a
-- backlog of 20,000 arrived, they claimed 17-41 messages a second where fresh ones claim 2,400
-- (bench/README.md, session 14). An ANALYZE of the table (`analyze_queue`) invalidates them. The
-- server's autovacuum would analyze it within its naptime (a minute by default), or never when off.
-- `n_live_tup` comes from the server's statistics, which count inserts with autovacuum off too.
SELECT coalesce(s.n_live_tup, 0) > 2 * greatest(c.reltuples, 0) + 1000
FROM pg_class AS c LEFT JOIN pg_stat_user_tables AS s ON s.relid = c.oid
WHERE c.oid = to_regclass('{q}')

-- name: analyze_queue
ANALYZE {q}

-- name: limit_sweep
-- The lost messages since the last sweep of the queue, marked (`_mark_lost`), run beside the
-- heartbeat of a process with a limited worker (`PgmqQueue._tidy_beside`) rather than by every
-- claim: a message's lease ends once, so pgmq's vt index is read from where the last sweep
-- stopped (`limit_sweeps`, first set by a full mark, `mark_lost`) to a little before now
-- (`_sweep_lag`), each entry met by one sweep. Sweeps of one queue take turns (the row's lock).
WITH span AS (
    SELECT s.swept_to AS since, now() - {_sweep_lag} AS upto FROM apalis_pgmq.limit_sweeps AS s
    WHERE s.queue = %(queue)s AND s.swept_to < now() - {_sweep_lag}
    FOR UPDATE
), lost AS (
    UPDATE {q} AS m SET {_mark_lost}
    FROM span
    WHERE m.vt > span.since AND m.vt <= span.upto AND m.read_ct > 0 AND ({_claimable}) IS NOT TRUE
    RETURNING 1
), moved AS (
    UPDATE apalis_pgmq.limit_sweeps AS s SET swept_to = span.upto
    FROM span WHERE s.queue = %(queue)s
)
SELECT count(*) FROM lost

-- name: key_indexes
-- Whether the queue has the key index, one of earlier versions (`old_key_indexes_of`), and a
-- place its sweeps start from (`mark_lost`).
SELECT to_regclass(%(index)s) IS NOT NULL,
       EXISTS (SELECT 1 FROM unnest(%(old_indexes)s::text[]) AS o WHERE to_regclass(o) IS NOT NULL),
       EXISTS (SELECT 1 FROM apalis_pgmq.limit_sweeps WHERE queue = %(queue)s)

-- name: create_key_index
-- The one index apalis adds to a pgmq queue table, as pgmq.create_fifo_index adds one for its
-- message groups: made when a worker with a keyed limit first claims from the queue, under
-- pgmq's queue lock, with the messages lost until then marked (`mark_lost`). It changes no
-- column and no pgmq call; pgmq.drop_queue drops it. Partial (`_claimable`): a message in flight
-- has no entry.
CREATE INDEX IF NOT EXISTS {key_index} ON {q} (({_hkey}), vt, msg_id) WHERE {_claimable}

-- name: drop_old_key_index
-- The key indexes of earlier versions (of every message by the key's hash, and by its text),
-- dropped after this one is made (in the same transaction, under pgmq's queue lock): every write
-- of the queue paid for their entries. A daemon of an earlier version still claiming from the
-- queue makes its own again at its next keyed claim (its function finds it missing), and claims
-- as before: both claims take the queue's limit lock and count the messages in flight from
-- pgmq's vt index, so neither hands out a message the other holds; each walks its own index (an
-- earlier version's holds lost messages unmarked; this one's has them once a sweep marked them).
DROP INDEX IF EXISTS {old_key_indexes}

-- name: _gate
-- Whether the key a walk stepped on (`nxt.key`) is open: its hash not in `v_blocked` (the keys at
-- their concurrency or out of rate in this claim, by hash: an int8 compared with each where the
-- key's text was, 10% of a saturated drain's server instructions, bench/README.md, session 13;
-- a key whose hash is a blocked key's waits with it), nor by its stored rate state, where a keyed rate holds, more
-- than `v_ahead` seconds ahead of `v_now` (GCRA: no start allowed); and that state (`rate.tat`).
-- The state is read by one join: a scalar subquery here was planned, and started at every call,
-- once for each use of the state (14 subplans in the walk, started even where no rate holds).
LEFT JOIN apalis_pgmq.limit_rates AS rate
    ON p_keyed_rate AND rate.queue = p_queue AND rate.state = ('k:' || nxt.key) COLLATE "default"
CROSS JOIN LATERAL (
    SELECT nxt.h <> ALL(v_blocked) AND (rate.tat IS NULL OR rate.tat - v_now < v_ahead) AS open
) AS g

-- name: _returned
-- A message a claim took, as `create_limit_claim` returns it: each claiming statement's rows go
-- straight into the function's result (RETURN QUERY), where arrays of the rows, joined at the end,
-- cost 5% of a saturated claim + archive's server instructions (bench/README.md, session 11).
m.msg_id, m.read_ct, extract(epoch FROM m.enqueued_at)::float8, m.message, m.headers -> 'apalis', p_worker,
NULL::text, NULL::float8, NULL::float8, NULL::int, NULL::float8, NULL::text

-- name: limit_claim
-- A claim within global limits, whole, in one round trip: the queue's own function
-- (`create_limit_claim`). One row per message claimed, then one account row
-- (`apalis_sql.limits.LimitedClaims`, `PgmqLimits.account_at`).
SELECT * FROM {claim_fn}(
    %(queue)s::text, %(worker)s::text, %(want)s::int, %(after)s::text,
    %(concurrency)s::int, %(keyed_concurrency)s::boolean, %(rate)s::int, %(per)s::float8, %(keyed_rate)s::boolean,
    %(scope)s::text, %(forget)s::boolean, %(lease)s::float8
)

-- name: create_limit_claim
-- The limited claim of one queue as one function of its own, made (or brought up to date) by the
-- first limited claim of each process, under pgmq's queue lock: a function of the queue's own
-- tables keeps its plans between calls, where one of any queue's would plan its statements
-- (EXECUTE) at every call. It is `apalis_cli.fleet.claim`'s algorithm with `Turn`s run on the
-- server, as PostgreSQL's migration 0009 runs it on its tasks table: one round trip where
-- separate statements took six (BEGIN, the lock, the counts, the keys, their heads, COMMIT).
-- Each statement of a VOLATILE function reads a fresh snapshot, so the counts read after the
-- lock are those the last holder committed. The lock (`p_scope`, `PgmqLimits.lock_scope`) is the
-- one those statements took, so a daemon of an earlier version takes turns with this one. The key index
-- orders a key's ready messages by vt, msg_id: the walk's one step per key lands on the key's
-- head (its first ready message), so a key at its limit or out of rate costs that step alone.
-- Rows: msg_id, read_ct, enqueued_at, message, the "apalis" headers, the worker, then the account
-- (the hash of the key to go on after, as text, when a rate next allows a start it held back, the server's clock, and
-- three NULLs: pgmq's keyless messages are found by the key index, no scan place is kept).
-- The last process to start replaces the body every other one runs: a later version keeps the
-- arguments and rows (or takes another name), as daemons of two versions may share a queue. This
-- one took another name (`limit_claim2_<queue>`): the function of earlier versions
-- (`limit_claim_<queue>`, keys by their text) stays for their daemons, with their index.
CREATE OR REPLACE FUNCTION {claim_fn}(
    p_queue text, p_worker text, p_want int, p_after text,
    p_concurrency int, p_keyed_concurrency boolean, p_rate int, p_per float8, p_keyed_rate boolean,
    p_scope text, p_forget boolean, p_lease float8
) RETURNS TABLE (
    o_msg_id bigint, o_read_ct int, o_enqueued_at float8, o_message jsonb, o_apalis jsonb, o_worker text,
    o_after text, o_wake_at float8, o_now float8, o_keyless_a int, o_keyless_b float8, o_keyless_c text
) LANGUAGE plpgsql AS $limit_claim$
DECLARE
    c_scan CONSTANT int := 10000;  -- keys one claim looks at (fleet.claim.MAX_KEYS_PER_CLAIM)
    v_set text;
    v_ready timestamptz := now();  -- "ready" is what was due when the claim began (limits.sql)
    v_now float8;
    v_lease interval := make_interval(secs => p_lease);
    v_interval float8 := p_per / p_rate;
    v_budget int := p_want;
    v_paused boolean;
    v_run_keys text[];  -- the messages in flight by key (a vanished worker's go with their leases)
    v_run_counts int[];
    v_total int;
    v_keyless_running int;
    v_first_blocked int8[];  -- the keys at their concurrency before this claim took any (`_hkey`)
    v_taken text[] := '{}';  -- the keys of the messages this claim took, one entry a message
    v_took int := 0;  -- the messages this claim took (returned as each statement took them)
    v_rates jsonb := '{}';  -- the rate states this claim moved, by state name
    v_tat float8;
    v_queue_tat float8;
    v_room int;
    v_got int;
    v_wake float8;
    -- the hash of the key to go on after (this function's own account: an earlier version's
    -- function, by key text, has another name)
    v_after bigint := CASE WHEN p_after ~ '^-?[0-9]{1,19}$'
        AND p_after::numeric BETWEEN -9223372036854775808 AND 9223372036854775807 THEN p_after::bigint END;
    v_ahead float8;
    v_start bigint := v_after;
    v_cursor bigint;
    v_wrapped boolean;
    v_walked int;
    v_room_left boolean;
    v_seen int := 0;
    v_blocked int8[];  -- the hashes (`_hkey`) of the keys without room (`_gate`)
    v_heads tid[];
    v_walk_keys text[];
    v_walk_tats float8[];
    v_turn_seen int;
    v_turn_chosen int;
    v_turn_last bigint;
    v_wake_tat float8;
    v_turn_keys text[];
    v_turn_tats float8[];
    v_key text;
    v_seqscan text := current_setting('enable_seqscan');
    v_bitmapscan text := current_setting('enable_bitmapscan');
BEGIN
    IF (p_keyed_concurrency OR p_keyed_rate) AND to_regclass('pgmq.{key_index}') IS NULL THEN
        -- Another client dropped the queue and made it again since this process made the key
        -- index: the process makes it again (`PgmqLimits.fetch`) rather than walk without it.
        RAISE EXCEPTION 'queue % has no key index', p_queue USING ERRCODE = 'undefined_object';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext(p_scope), hashtext(''));
    -- No wait for the WAL flush (a claim lost in a crash is only read again);
    -- plans made once (planning cost more than running here); no JIT.
    v_set := set_config('synchronous_commit', 'off', true);
    v_set := set_config('plan_cache_mode', 'force_generic_plan', true);
    v_set := set_config('jit', 'off', true);
    v_now := extract(epoch FROM clock_timestamp())::float8;
    -- The pause, the messages in flight by key (read and hidden by a live lease: pgmq's vt index
    -- finds them) and the keys at their concurrency. Planned (once) as a plain index scan: a
    -- generic plan guesses a third of the table and took a bitmap scan, which never marks an
    -- entry dead, so every claim read again each acknowledged message's last entry (its lease
    -- still ahead): thousands a claim by the end of a drain, 15 % of a saturated drain's server
    -- instructions (callgrind, bench/README.md). A plain one marks them as it passes.
    -- No sequential scan of the queue table in any of the function's plans (set back at its
    -- end): made at a session's first claim, on a queue near empty then, the walk's and the
    -- claim's plans read the whole table at every claim once a backlog came, 10 scans of 20,200
    -- rows a claim (tests/integration/test_pgmq.py); 25-50 claimed a second, against 2,400.
    v_set := set_config('enable_seqscan', 'off', true);
    v_set := set_config('enable_bitmapscan', 'off', true);
    SELECT EXISTS (SELECT 1 FROM apalis_pgmq.queues AS p WHERE p.queue = p_queue AND p.paused),
           coalesce(array_agg(r.limit_key) FILTER (WHERE r.limit_key IS NOT NULL), '{}'),
           coalesce(array_agg(r.running) FILTER (WHERE r.limit_key IS NOT NULL), '{}'),
           coalesce(sum(r.running), 0), coalesce(sum(r.running) FILTER (WHERE r.limit_key IS NULL), 0),
           coalesce(array_agg(hashtextextended(r.limit_key, 0)) FILTER (
               WHERE p_keyed_concurrency AND r.limit_key IS NOT NULL AND r.running >= p_concurrency), '{}')
    INTO v_paused, v_run_keys, v_run_counts, v_total, v_keyless_running, v_first_blocked
    FROM (
        SELECT {_key} AS limit_key, count(*)::int AS running FROM {q}
        WHERE vt > v_ready AND {status} = 'running'
        GROUP BY 1
    ) AS r;
    v_set := set_config('enable_bitmapscan', v_bitmapscan, true);
    IF v_paused THEN  -- a paused queue hands out nothing (apalis_cli.control)
        RETURN QUERY SELECT NULL::bigint, NULL::int, NULL::float8, NULL::jsonb, NULL::jsonb, NULL::text,
            p_after, NULL::float8, v_now, NULL::int, NULL::float8, NULL::text;
        v_set := set_config('enable_seqscan', v_seqscan, true);
        RETURN;
    END IF;

    -- Queue-wide limits bound the whole claim.
    IF p_concurrency IS NOT NULL AND NOT p_keyed_concurrency THEN
        v_budget := least(v_budget, p_concurrency - v_total);
    END IF;
    IF p_rate IS NOT NULL AND NOT p_keyed_rate THEN
        SELECT r.tat INTO v_queue_tat FROM apalis_pgmq.limit_rates AS r WHERE r.queue = p_queue AND r.state = '*';
        v_room := apalis_pgmq.limit_allowance(v_queue_tat, v_now, p_rate, p_per);
        IF v_room < v_budget THEN
            v_wake := greatest(coalesce(v_queue_tat, v_now), v_now) - p_per + v_interval;
        END IF;
        v_budget := least(v_budget, v_room);
    END IF;

    IF v_budget > 0 AND NOT (p_keyed_concurrency OR p_keyed_rate) THEN
        -- No key: the queue's usual order (pgmq.read's, as `read`).
        RETURN QUERY WITH claimed AS (
            UPDATE {q} AS m
            SET vt = clock_timestamp() + v_lease, read_ct = m.read_ct + 1, last_read_at = clock_timestamp()
            WHERE m.msg_id = ANY(ARRAY(
                SELECT d.msg_id FROM {q} AS d
                WHERE d.vt <= v_ready
                ORDER BY d.msg_id
                LIMIT v_budget
                FOR UPDATE SKIP LOCKED
            ))
            RETURNING {_returned}
        )
        SELECT * FROM claimed;
        GET DIAGNOSTICS v_took = ROW_COUNT;
    ELSIF v_budget > 0 THEN
        -- Keys take turns (fleet.claim._Turns.turn): walks from the key after the last claim's,
        -- coming round once; another walk from the first key while a key had room for more.
        IF p_keyed_rate THEN  -- allowance() is 0 exactly when a state is further ahead than this
            v_ahead := p_per - (1 - 1e-9) * p_per / p_rate - 1e-6;
        END IF;
        LOOP
            v_walked := 0;
            v_cursor := v_start;
            v_wrapped := v_start IS NULL;
            v_room_left := false;
            WHILE v_budget - v_walked > 0 AND v_seen < c_scan LOOP
                -- the keys without room: at their concurrency, or out of rate by this claim
                IF cardinality(v_taken) = 0 AND v_rates = '{}' THEN
                    v_blocked := v_first_blocked;
                ELSE
                SELECT coalesce(array_agg(hashtextextended(b.key, 0)), '{}') INTO v_blocked FROM (
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
                      AND apalis_pgmq.limit_allowance(s.value::float8, v_now, p_rate, p_per) <= 0
                ) AS b;
                END IF;
                -- One turn: from the key after the cursor (by hash; up to where the walk began,
                -- once it came round), one step of the key index per key, each landing on the
                -- key's first ready message; an open key's is chosen, until the budget or the
                -- scan is spent. (Two ranges of the index, one skipped: `v_cursor IS NULL OR h >
                -- v_cursor` would read the index from its first key, a saturated key's whole
                -- backlog at every claim.) Readiness is a filter on the row, not an index
                -- condition (`IS TRUE`): a step's LIMIT 1 stops the scan only after its leaf page
                -- (PostgreSQL 15 checks every entry left on the page, ~100 a step); each check
                -- is one comparison of the hash.
                -- A key's ready messages come first in its range, so the row fetched is its head;
                -- its messages in flight are not in the index (`_claimable`), nor passed.
                WITH RECURSIVE walk(h, key, head, tat, open, n, chosen) AS (
                    SELECT nxt.h, nxt.key, CASE WHEN g.open THEN nxt.ctid END, rate.tat, g.open, 1, g.open::int
                    FROM (
                        (SELECT {_hkey} AS h, {_key} AS key, d.ctid FROM {q} AS d
                         WHERE v_cursor IS NULL AND {_hkey} IS NOT NULL AND (d.vt <= v_ready) IS TRUE AND {_claimable}
                         ORDER BY {_hkey}, d.vt, d.msg_id
                         LIMIT 1)
                        UNION ALL
                        (SELECT {_hkey} AS h, {_key} AS key, d.ctid FROM {q} AS d
                         WHERE v_cursor IS NOT NULL AND {_hkey} > v_cursor AND (d.vt <= v_ready) IS TRUE AND {_claimable}
                         ORDER BY {_hkey}, d.vt, d.msg_id
                         LIMIT 1)
                    ) AS nxt
                    {_gate}
                    WHERE NOT v_wrapped OR v_start IS NULL OR nxt.h <= v_start
                  UNION ALL
                    SELECT nxt.h, nxt.key, CASE WHEN g.open THEN nxt.ctid END, rate.tat, g.open, w.n + 1, w.chosen + g.open::int
                    FROM walk AS w
                    CROSS JOIN LATERAL (
                        SELECT {_hkey} AS h, {_key} AS key, d.ctid FROM {q} AS d
                        WHERE {_hkey} > w.h AND (d.vt <= v_ready) IS TRUE AND {_claimable}
                        ORDER BY {_hkey}, d.vt, d.msg_id
                        LIMIT 1
                    ) AS nxt
                    {_gate}
                    WHERE w.n < c_scan - v_seen AND w.chosen < v_budget - v_walked
                      AND (NOT v_wrapped OR v_start IS NULL OR nxt.h <= v_start)
                )
                SELECT array_agg(w.head) FILTER (WHERE w.head IS NOT NULL),
                       array_agg(w.key) FILTER (WHERE w.head IS NOT NULL),
                       array_agg(w.tat) FILTER (WHERE w.head IS NOT NULL),
                       coalesce(max(w.n), 0), coalesce(max(w.chosen), 0),
                       (array_agg(w.h ORDER BY w.n DESC))[1],
                       min(w.tat) FILTER (WHERE NOT w.open AND w.h <> ALL(v_blocked))
                INTO v_heads, v_walk_keys, v_walk_tats, v_turn_seen, v_turn_chosen, v_turn_last, v_wake_tat
                FROM walk AS w;
                v_seen := v_seen + v_turn_seen;
                IF v_wake_tat IS NOT NULL THEN
                    v_wake := least(coalesce(v_wake, 'infinity'), v_wake_tat - p_per + v_interval);
                END IF;
                v_turn_keys := '{}';
                IF v_heads IS NOT NULL THEN
                    -- The chosen, read as pgmq.read reads them, each where the walk found it
                    -- (its ctid: a TID scan, no second and third descent of the primary key).
                    -- One that another reader took since the walk's snapshot is passed over
                    -- (SKIP LOCKED, or `vt` checked again on the locked row) and stays with its
                    -- key; so is one changed otherwise meanwhile (not found where it was).
                    RETURN QUERY WITH claimed AS (
                        UPDATE {q} AS m
                        SET vt = clock_timestamp() + v_lease, read_ct = m.read_ct + 1, last_read_at = clock_timestamp()
                        WHERE m.ctid = ANY(ARRAY(
                            SELECT d.ctid FROM {q} AS d
                            WHERE d.ctid = ANY(v_heads) AND d.vt <= v_ready
                            FOR UPDATE SKIP LOCKED
                        ))
                        RETURNING {_returned}
                    )
                    SELECT * FROM claimed;
                    GET DIAGNOSTICS v_got = ROW_COUNT;
                    -- The keys of the heads chosen: those of the messages taken, unless one was
                    -- passed over (taken by another reader meanwhile), which then counts as taken
                    -- for the rest of this claim (its key's room and rate: never more than a limit).
                    v_turn_keys := v_walk_keys;
                    v_turn_tats := v_walk_tats;
                    -- a key with room for more than this one: walk again (fleet.claim `room_left`)
                    IF NOT v_room_left AND v_budget - v_walked > 1 AND cardinality(v_turn_keys) > 0
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
                              AND (NOT p_keyed_rate OR apalis_pgmq.limit_allowance(
                                       coalesce((v_rates ->> ('k:' || k.key))::float8, k.tat), v_now, p_rate, p_per) > 1)
                        ) INTO v_room_left;
                    END IF;
                    IF p_keyed_rate THEN
                        FOR i IN 1 .. cardinality(v_turn_keys) LOOP
                            v_key := v_turn_keys[i];
                            v_tat := coalesce((v_rates ->> ('k:' || v_key))::float8, v_turn_tats[i]);
                            v_rates := jsonb_set(v_rates, ARRAY['k:' || v_key],
                                                 to_jsonb(greatest(coalesce(v_tat, v_now), v_now) + v_interval));
                        END LOOP;
                    END IF;
                    v_taken := v_taken || v_turn_keys;
                    v_took := v_took + v_got;
                    v_walked := v_walked + cardinality(v_turn_keys);
                END IF;
                IF v_turn_last IS NOT NULL THEN
                    v_after := v_turn_last;
                    v_cursor := v_turn_last;
                END IF;
                IF v_turn_chosen < v_budget - (v_walked - cardinality(v_turn_keys))
                   AND v_turn_seen < c_scan - (v_seen - v_turn_seen) THEN
                    EXIT WHEN v_wrapped;  -- no key left in its range: come round once
                    v_wrapped := true;
                    v_cursor := NULL;
                END IF;
            END LOOP;
            v_budget := v_budget - v_walked;
            EXIT WHEN v_budget <= 0 OR v_walked = 0 OR NOT v_room_left;
            v_start := NULL;
        END LOOP;

        -- Messages sent without a key: one group of their own, offered what the keys leave
        -- (by a producer that knows of no keyed limit): the key index holds them under a NULL
        -- key, so they are found however deep the keyed backlog.
        IF v_budget > 0 THEN
            v_room := v_budget;
            IF p_keyed_concurrency THEN
                v_room := least(v_room, p_concurrency - v_keyless_running);
            END IF;
            IF p_keyed_rate THEN
                v_tat := coalesce((v_rates ->> '-')::float8,
                                  (SELECT r.tat FROM apalis_pgmq.limit_rates AS r WHERE r.queue = p_queue AND r.state = '-'));
                v_got := apalis_pgmq.limit_allowance(v_tat, v_now, p_rate, p_per);
                IF v_got <= 0 AND v_tat IS NOT NULL THEN
                    v_wake := least(coalesce(v_wake, 'infinity'), v_tat - p_per + v_interval);
                END IF;
                v_room := least(v_room, v_got);
            END IF;
            IF v_room > 0 THEN
                RETURN QUERY WITH claimed AS (
                    UPDATE {q} AS m
                    SET vt = clock_timestamp() + v_lease, read_ct = m.read_ct + 1, last_read_at = clock_timestamp()
                    WHERE m.msg_id = ANY(ARRAY(
                        SELECT d.msg_id FROM {q} AS d
                        WHERE {_hkey} IS NULL AND d.vt <= v_ready AND {_claimable}
                        ORDER BY {_hkey}, d.vt, d.msg_id
                        LIMIT v_room
                        FOR UPDATE SKIP LOCKED
                    ))
                    RETURNING {_returned}
                )
                SELECT * FROM claimed;
                GET DIAGNOSTICS v_got = ROW_COUNT;
                v_took := v_took + v_got;
                IF v_got > 0 AND p_keyed_rate THEN
                    v_rates := jsonb_set(v_rates, '{-}', to_jsonb(greatest(coalesce(v_tat, v_now), v_now) + v_got * v_interval));
                END IF;
            END IF;
        END IF;
    END IF;

    -- A queue-wide rate (beside a keyed concurrency, or alone) is spent by all this claim took.
    IF p_rate IS NOT NULL AND NOT p_keyed_rate AND v_took > 0 THEN
        v_rates := v_rates || jsonb_build_object('*', greatest(coalesce(v_queue_tat, v_now), v_now) + v_took * v_interval);
    END IF;
    IF v_rates <> '{}' THEN
        INSERT INTO apalis_pgmq.limit_rates AS r (queue, state, tat)
        SELECT p_queue, s.key, s.value::float8 FROM jsonb_each_text(v_rates) AS s
        ON CONFLICT (queue, state) DO UPDATE SET tat = excluded.tat;
    END IF;
    IF p_forget THEN  -- states in the past carry nothing (a full burst is available)
        DELETE FROM apalis_pgmq.limit_rates AS r WHERE r.queue = p_queue AND r.tat <= v_now;
    END IF;
    RETURN QUERY
        SELECT NULL::bigint, NULL::int, NULL::float8, NULL::jsonb, NULL::jsonb, NULL::text,
            v_after::text, v_wake, v_now, NULL::int, NULL::float8, NULL::text;
    v_set := set_config('enable_seqscan', v_seqscan, true);
END
$limit_claim$
