-- The control plane: cancel, pause, wait, bulk actions. `{control}` is the schema's control
-- channel: 'd<id>' tells waiters a task ended, a JSON array ["c", worker, id, reason] tells a
-- worker to stop a run. `{bulk_where}` is the filter of the bulk statements (see `connection`).

-- name: cancel_waiting
-- A task that has not started is cancelled in the statement a claim would race: a task claimed
-- first is running (and not changed here), one cancelled first is never claimed.
UPDATE {schema}.tasks
SET status = 'cancelled', last_error = %(reason)s, done_at = extract(epoch FROM now())::float8,
    lock_by = NULL, lock_at = NULL
WHERE queue = %(queue)s AND id = %(id)s AND status IN ('pending', 'failed')
RETURNING id, CASE WHEN waited THEN pg_notify({control}, 'd' || id) END

-- name: cancel_running
-- A running task keeps the request; its worker is told now (and at each of its heartbeats).
UPDATE {schema}.tasks
SET cancel_reason = %(reason)s
WHERE queue = %(queue)s AND id = %(id)s AND status = 'running'
RETURNING id, pg_notify({control}, json_build_array('c', lock_by, id, %(told)s::text)::text)

-- name: task_status
SELECT status, lock_by FROM {schema}.tasks WHERE queue = %(queue)s AND id = %(id)s

-- name: cancels_requested
-- The runs of a worker with a cancel requested (asked at each heartbeat).
SELECT id, cancel_reason FROM {schema}.tasks
WHERE id = ANY(%(running)s::text[]) AND status = 'running' AND cancel_reason IS NOT NULL

-- name: set_paused
INSERT INTO {schema}.queues AS q (queue, paused, changed_at)
VALUES (%(queue)s, %(paused)s, extract(epoch FROM now())::float8)
ON CONFLICT (queue) DO UPDATE SET paused = excluded.paused, changed_at = excluded.changed_at

-- name: paused
SELECT paused FROM {schema}.queues WHERE queue = %(queue)s

-- name: watch
-- A task someone waits for: its end will be NOTIFYd (committed before it is read here, so an
-- ack either comes after and notifies, or came before and the task read is final).
UPDATE {schema}.tasks AS t SET waited = true
WHERE t.queue = %(queue)s AND t.id = %(id)s
RETURNING {columns}

-- name: bulk_count
SELECT count(*) FROM (SELECT 1 FROM {schema}.tasks WHERE {bulk_where} LIMIT %(batch)s) AS matched

-- name: bulk_retry
WITH changed AS (
    UPDATE {schema}.tasks
    SET status = 'pending', attempts = 0, run_at = extract(epoch FROM now())::float8, done_at = NULL,
        cancel_reason = NULL
    WHERE id = ANY(ARRAY(
        SELECT id FROM {schema}.tasks WHERE {bulk_where}
        ORDER BY coalesce(done_at, created_at), id LIMIT %(batch)s FOR UPDATE SKIP LOCKED))
    RETURNING id
)
SELECT changed.id FROM changed, (SELECT pg_notify({channel}, %(queue)s)) AS notified

-- name: bulk_cancel_running
-- The running tasks of the filter (not asked before: `fresh`) get the request; their workers are told.
UPDATE {schema}.tasks
SET cancel_reason = %(reason)s
WHERE id = ANY(ARRAY(
    SELECT id FROM {schema}.tasks WHERE {bulk_where}
    ORDER BY coalesce(done_at, created_at), id LIMIT %(batch)s FOR UPDATE SKIP LOCKED))
RETURNING id, pg_notify({control}, json_build_array('c', lock_by, id, %(told)s::text)::text)

-- name: bulk_end
-- The tasks of the filter end now with `status` (killed; cancelled: its statuses are pending and
-- failed only); whoever waits for one is told.
UPDATE {schema}.tasks
SET status = %(status)s, last_error = %(reason)s, done_at = extract(epoch FROM now())::float8,
    lock_by = NULL, lock_at = NULL
WHERE id = ANY(ARRAY(
    SELECT id FROM {schema}.tasks WHERE {bulk_where}
    ORDER BY coalesce(done_at, created_at), id LIMIT %(batch)s FOR UPDATE SKIP LOCKED))
RETURNING id, CASE WHEN waited THEN pg_notify({control}, 'd' || id) END

-- name: bulk_purge
DELETE FROM {schema}.tasks
WHERE id = ANY(ARRAY(
    SELECT id FROM {schema}.tasks WHERE {bulk_where}
    ORDER BY coalesce(done_at, created_at), id LIMIT %(batch)s FOR UPDATE SKIP LOCKED))
