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
-- One task pushed (as enqueue.sql pushes it), handed to a worker listed idle when it would be the
-- next one claimed: migration 0013's `push_lone`, which runs the hand-over's statement (planned
-- once per connection) only when a worker of the queue is listed. Its id (NULL when it was already stored), and whether the
-- caller must make it durable (`flush_push`): a durable push that hands its task commits without
-- waiting for the WAL flush, so that the NOTIFY reaches the worker at once.
-- Its fields come as plain parameters, not arrays of one: cheaper to send and to read.
SELECT pushed, unflushed
FROM {schema}.push_lone(%(queue)s, %(id)s, %(payload)b, %(run_at)s, %(priority)s, %(max_attempts)s, %(key)s,
                        %(meta)s::jsonb, %(commit)s)

-- name: flush_push
-- After a push that said `unflushed`: a commit that writes a WAL record (an empty transactional
-- logical message; no table is touched) waits, at the server's own `synchronous_commit`, for the
-- flush of the WAL up to it, the push's insert included.
SELECT pg_logical_emit_message(true, 'apalis-flush', '')

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
    -- the queue's running tasks in tasks_by_status).
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
