-- Claims within global limits and unique pushes (apalis_cli.fleet, apalis_sql.limits). A claim
-- is one call of `limit_claim` (migration 0009), which first takes the queue's limit lock; a
-- unique push runs in a transaction that first takes `advisory_lock` (one per queue and key), so
-- the counts it reads cannot change before it commits.

-- name: advisory_lock
-- Held to the end of the transaction; `commit` sets its durability ('off' for claims). A holder
-- whose client stops mid-transaction (a frozen process keeps its connection open) is ended by
-- the server after 10 s idle in it, which frees the lock: no lock outlives a live transaction.
-- The statements after it run their prepared plans as planned once (generic): planned at each
-- run, as the server would choose for most of them here, planning took longer than the run
-- (1.0-1.4 ms for a limited claim's walk of the keys, about a third of its server time). And they
-- are planned without explicit sorts where an index gives the order: a queue the statistics do
-- not know is taken for one of a row or two, and a walk's step then read the queue's whole
-- ready index and sorted it (`tasks_ready`, 3 ms a key, 30-150 ms a claim) rather than step in
-- the keyed one. A sort that cannot be avoided then costs the planner a fortune, which would
-- have the statement compiled to machine code (JIT, a second at each planning): no JIT.
SELECT pg_advisory_xact_lock(hashtext(%(scope)s), hashtext(%(key)s)),
       set_config('synchronous_commit', coalesce(%(commit)s, current_setting('synchronous_commit')), true),
       set_config('idle_in_transaction_session_timeout', '10s', true),
       set_config('plan_cache_mode', 'force_generic_plan', true),
       set_config('enable_sort', 'off', true),
       set_config('jit', 'off', true)

-- name: limit_claim
-- A claim within global limits, whole, in one round trip: migration 0009's function (the lock,
-- the running counts, the keys' turns, the keyless share and the rate states). One row per task
-- claimed, then one account row (`apalis_sql.limits.LimitedClaims`). The call waits for the
-- claim's settings (`_limit_plans`).
SELECT c.*
FROM (SELECT {_limit_plans} AS plans) AS s
CROSS JOIN LATERAL {schema}.limit_claim(
    %(queue)s::text, %(worker)s::text, CASE WHEN s.plans IS NOT NULL THEN %(want)s::int END, %(after)s::text,
    %(concurrency)s::int, %(keyed_concurrency)s::boolean, %(rate)s::int, %(per)s::float8, %(keyed_rate)s::boolean,
    %(scope)s::text, %(forget)s::boolean,
    %(keyless_priority)s::int, %(keyless_run_at)s::float8, %(keyless_id)s::text
) AS c

-- name: ack_limit_claim
-- A batch of outcomes (ack.sql's `ack`, claiming nothing ahead) and, in the same statement, the
-- claim within limits for the slots they free: one round trip and one commit, not two. The acks
-- run first (the claim's argument names their count); the function's statements then see them
-- (each reads a fresh snapshot, after the statement's own changes so far), so the slots these
-- runs held count as free.
WITH {_ack_first}
{_limit_claim_acked}

-- name: ack_done_limit_claim
-- The same for the common batch, runs of one worker all done with no result (ack.sql's
-- `ack_done`: their ids alone, no arrays of outcomes to send and join).
WITH {_ack_done}
{_limit_claim_acked}

-- name: _limit_claim_acked
SELECT c.*
FROM (SELECT count(*) AS n, {_limit_plans} AS plans FROM acked) AS a
CROSS JOIN LATERAL {schema}.limit_claim(
    %(queue)s::text, %(worker)s::text, CASE WHEN a.n >= 0 AND a.plans IS NOT NULL THEN %(want)s::int END, %(after)s::text,
    %(concurrency)s::int, %(keyed_concurrency)s::boolean, %(rate)s::int, %(per)s::float8, %(keyed_rate)s::boolean,
    %(scope)s::text, %(forget)s::boolean,
    %(keyless_priority)s::int, %(keyless_run_at)s::float8, %(keyless_id)s::text
) AS c

-- name: _limit_plans
-- Set for the claim's transaction before `limit_claim` runs (its arguments wait for it): no
-- sequential scan of the tasks table where an index or a row's place serves. The function keeps
-- each of its statements' generic plans for the life of the session, made at the session's
-- first claim: on a queue near empty then, with statistics that never see the backlog come (a
-- server without autovacuum), the lookups of the chosen rows by their places (`ctid = ANY`)
-- and the heads by id were planned as scans of the whole table, twice or more a claim: a
-- saturated drain after a warm-up of 100 tasks ran at 410-644 tasks/s and 564-658 us of server
-- CPU a task, against 3,153-3,260 and 56-80 with this (tests/integration/test_postgres_claims.py).
-- A plan made afterwards (the statistics changed, a VACUUM) is made with it too. (Beside the
-- function's own settings it would take a new copy of the whole function, a migration.)
set_config('enable_seqscan', 'off', true)

-- name: enqueue_keyed
-- As `enqueue`, with each task's limit key.
WITH inserted AS (
    INSERT INTO {schema}.tasks
        (id, queue, payload, run_at, priority, max_attempts, idempotency_key, meta, created_at, limit_key)
    SELECT u.id, %(queue)s, u.payload, u.run_at, u.priority, u.max_attempts, u.key, coalesce(u.meta::jsonb, '{}'),
           extract(epoch FROM now())::float8, u.limit_key
    FROM unnest(%(ids)b::text[], %(payloads)b::bytea[], %(run_ats)b::float8[], %(priorities)b::int[],
                %(max_attempts)b::int[], %(keys)b::text[], %(metas)b::text[], %(limit_keys)b::text[])
         AS u(id, payload, run_at, priority, max_attempts, key, meta, limit_key)
    ON CONFLICT DO NOTHING
    RETURNING id
)
SELECT inserted.id
FROM inserted,
     (SELECT pg_notify({channel}, %(queue)s)) AS notified,
     (SELECT set_config('synchronous_commit', coalesce(%(commit)s, current_setting('synchronous_commit')), true))
         AS durability

-- name: unique_holder
-- The newest task holding a unique key in one of the push's states, within its window.
SELECT id FROM {schema}.tasks
WHERE queue = %(queue)s AND unique_key = %(key)s
  AND (unique_until IS NULL OR unique_until > %(now)s)
  AND status = ANY(%(states)s::text[])
ORDER BY created_at DESC
LIMIT 1

-- name: unique_insert
-- One unique task, in the push's transaction (its durability set by `advisory_lock`).
INSERT INTO {schema}.tasks
    (id, queue, payload, run_at, priority, max_attempts, idempotency_key, meta, created_at,
     limit_key, unique_key, unique_until)
VALUES (%(id)s, %(queue)s, %(payload)s, %(run_at)s, %(priority)s, %(max_attempts)s, %(idempotency_key)s,
        coalesce(%(meta)s::jsonb, '{}'), extract(epoch FROM now())::float8, %(limit_key)s, %(unique_key)s,
        %(unique_until)s)
ON CONFLICT DO NOTHING

-- name: unique_extend
UPDATE {schema}.tasks SET unique_until = %(until)s WHERE id = %(id)s

-- name: unique_replace
-- A pending duplicate takes the new push's content; a running or finished one is left alone.
-- Given another key, it takes that key's next number (migration 0016), as a push would.
UPDATE {schema}.tasks
SET payload = %(payload)s, run_at = %(run_at)s, priority = %(priority)s, max_attempts = %(max_attempts)s,
    meta = coalesce(%(meta)s::jsonb, '{}'), limit_key = %(limit_key)s,
    limit_seq = CASE WHEN limit_key IS DISTINCT FROM %(limit_key)s::text
                     THEN {schema}.limit_next(queue, %(limit_key)s::text) ELSE limit_seq END
WHERE id = %(id)s AND status = 'pending'
