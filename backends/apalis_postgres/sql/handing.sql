-- Handing a pushed task to an idle worker (apalis_postgres.handing, migration 0007): the push
-- claims it for a worker listed in `idle_workers` and NOTIFYs the task on the channel of that
-- worker's process, so the worker starts it without a claim round trip.
--
-- A worker is listed while its row has a `channel` and an `until` still to come. Listing and
-- unlisting write `channel` (its process's, or '') and leave `until` alone until half the
-- listing's time is gone: an update that changes no indexed column is HOT, adding no index
-- entry. (Every hand-over and listing is a new row version: written to both indexes each time,
-- a busy worker's row left thousands of dead entries that every push and listing walked until a
-- vacuum, more server CPU per lone task than the claim the hand-over saves.)

-- name: enqueue_hand
-- One task pushed (as enqueue.sql pushes it), claimed in the same statement for the worker
-- listed idle the longest on its queue when the task would be the next one claimed: due now, no
-- other task of the queue ready (whatever its priority), the queue not paused. The listing is
-- used up (`channel` '', `handed` the task) and the NOTIFY on the worker's channel carries the task
-- as a JSON array (worker id, id, base64 payload, max_attempts, run_at, priority, idempotency
-- key, meta, created_at); one of 8,000 bytes or more (a large payload) is not handed: the task
-- is inserted ready and the queue's pollers are woken, as a push without idle workers does.
-- The task counts its first attempt and is locked by the worker, as a claim would leave it.
-- SKIP LOCKED: two pushes at once hand to two workers, or one of them to none.
-- Its fields come as plain parameters, not arrays of one: cheaper to send and to read.
WITH new AS MATERIALIZED (
    SELECT %(id)s::text AS id, %(payload)b::bytea AS payload, %(run_at)s::float8 AS run_at,
           %(priority)s::int AS priority, %(max_attempts)s::int AS max_attempts, %(key)s::text AS key,
           coalesce(%(meta)s::jsonb, '{}') AS meta, extract(epoch FROM now())::float8 AS created_at
),
idle AS MATERIALIZED (
    SELECT w.worker, w.channel,
           json_build_array(w.worker, n.id, encode(n.payload, 'base64'), n.max_attempts, n.run_at, n.priority,
                            n.key, n.meta, n.created_at)::text AS note
    FROM new AS n, {schema}.idle_workers AS w
    WHERE n.run_at <= n.created_at
      AND w.queue = %(queue)s AND w.until >= n.created_at AND w.channel <> ''
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
    SELECT n.id, %(queue)s, n.payload, n.run_at, n.priority, n.max_attempts, n.key, n.meta, n.created_at,
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
       CASE WHEN ins.lock_by IS NULL THEN pg_notify({channel}, %(queue)s)
            ELSE pg_notify((SELECT channel FROM idle), (SELECT note FROM idle)) END
FROM inserted AS ins,
     -- The server's own setting unless the store has `durable_push = false` (then 'off').
     (SELECT set_config('synchronous_commit', coalesce(%(commit)s, current_setting('synchronous_commit')), true))
         AS durability

-- name: _listing
-- The claim's side of handing (claim.sql, ack.sql's `ack_listing`), after a CTE `claimed` (the
-- tasks claimed, with `lock_by`): each
-- polling worker of `list_workers` that a push may hand to is listed idle (its process listens
-- on `channel`) for `list_spans` seconds when the claim got it nothing, and unlisted when it got
-- it some. Not listed again while a task handed to it is on its way: one it has not received
-- (`list_gots`: the id of the last one it did) and that still runs under it.
listed AS (
    INSERT INTO {schema}.idle_workers AS w (worker, queue, channel, until, handed)
    SELECT l.worker, %(queue)s::text, %(channel)s::text, extract(epoch FROM now())::float8 + l.span, nullif(l.got, '')
    FROM unnest(%(list_workers)s::text[], %(list_spans)s::float8[], %(list_gots)s::text[]) AS l(worker, span, got)
    WHERE NOT EXISTS (SELECT 1 FROM claimed AS c WHERE c.lock_by = l.worker)
    ON CONFLICT (worker) DO UPDATE SET channel = excluded.channel, queue = excluded.queue,
        until = CASE WHEN w.until * 2 < excluded.until + extract(epoch FROM now())::float8 THEN excluded.until
                     ELSE w.until END
    -- Not when listed already with time to spare (no row version for nothing); not while a task
    -- handed to it is on its way (read by its id alone: a filter on lock_by lets the planner walk
    -- tasks_running).
    WHERE (w.channel IS DISTINCT FROM excluded.channel OR w.queue IS DISTINCT FROM excluded.queue
           OR w.until * 2 < excluded.until + extract(epoch FROM now())::float8)
      AND (w.handed IS NOT DISTINCT FROM excluded.handed OR NOT coalesce((
          SELECT t.status = 'running' AND t.lock_by = w.worker FROM {schema}.tasks AS t WHERE t.id = w.handed
      ), false))
),
unlisted AS (
    UPDATE {schema}.idle_workers AS w SET channel = ''
    WHERE w.worker = ANY(%(list_workers)s::text[]) AND w.channel <> ''
      AND EXISTS (SELECT 1 FROM claimed AS c WHERE c.lock_by = w.worker)
)

-- name: unlist
-- A worker stopped polling: nothing is handed to it any more.
UPDATE {schema}.idle_workers SET channel = '' WHERE worker = %(worker)s AND channel <> ''

-- name: handed_lost
-- The tasks handed to these workers that still run under them (their processes compare each with
-- the last one received): after the LISTEN connection was lost, a NOTIFY may have been missed.
SELECT {columns}
FROM {schema}.idle_workers AS w
JOIN {schema}.tasks AS t ON t.id = w.handed
WHERE w.worker = ANY(%(workers)s::text[]) AND t.status = 'running' AND t.lock_by = w.worker

-- name: give_back
-- A worker stops: its listing goes, and a task handed to it that it never received (not `got`)
-- goes back to the queue, its attempt not counted (cancelled instead if a cancel was asked
-- meanwhile, as release_lost.sql does); the queue's pollers are woken for it.
WITH gone AS (
    DELETE FROM {schema}.idle_workers WHERE worker = %(worker)s RETURNING handed
),
back AS (
    UPDATE {schema}.tasks AS t
    SET status = CASE WHEN t.cancel_reason IS NULL THEN 'pending' ELSE 'cancelled' END,
        attempts = CASE WHEN t.cancel_reason IS NULL THEN greatest(t.attempts - 1, 0) ELSE t.attempts END,
        last_error = coalesce(t.cancel_reason, t.last_error),
        done_at = CASE WHEN t.cancel_reason IS NOT NULL THEN extract(epoch FROM now())::float8 END,
        lock_by = NULL, lock_at = NULL
    FROM gone
    WHERE t.id = gone.handed AND gone.handed IS DISTINCT FROM %(got)s
      AND t.status = 'running' AND t.lock_by = %(worker)s
    RETURNING t.queue, t.status, CASE WHEN t.waited AND t.done_at IS NOT NULL THEN pg_notify({control}, 'd' || t.id) END
)
SELECT pg_notify({channel}, queue) FROM back WHERE status = 'pending'
