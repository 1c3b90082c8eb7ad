-- The control plane: cancel, pause, bulk actions. The server cannot push: after a cancel or an
-- end, the store signals the control listeners (`listener`), which ask `cancels_requested` for
-- their workers' runs (as each heartbeat does) and wake their waiters, who read the task again. `{bulk_where}` is the filter of the bulk statements (see `connection`).

-- name: cancel_waiting
-- A task that has not started is cancelled in the statement a claim would race: a task claimed
-- first is running (and not changed here), one cancelled first is never claimed.
UPDATE {prefix}tasks
SET status = 'cancelled', last_error = %(reason)s, done_at = {now}, lock_by = NULL, lock_at = NULL
WHERE queue = %(queue)s AND id = %(id)s AND status IN ('pending', 'failed')

-- name: cancel_running
UPDATE {prefix}tasks SET cancel_reason = %(reason)s
WHERE queue = %(queue)s AND id = %(id)s AND status = 'running'

-- name: task_status
SELECT status, lock_by FROM {prefix}tasks WHERE queue = %(queue)s AND id = %(id)s

-- name: ended_of
-- Which of the tasks waited for in a process have ended (its control listener was signalled).
SELECT id FROM {prefix}tasks WHERE id IN %(ids)s AND done_at IS NOT NULL

-- name: cancels_requested
SELECT id, cancel_reason FROM {prefix}tasks
WHERE id IN %(running)s AND status = 'running' AND cancel_reason IS NOT NULL

-- name: set_paused
INSERT INTO {prefix}queues (queue, paused, changed_at) VALUES (%(queue)s, %(paused)s, {now})
ON DUPLICATE KEY UPDATE paused = VALUES(paused), changed_at = VALUES(changed_at)

-- name: paused
SELECT paused FROM {prefix}queues WHERE queue = %(queue)s

-- name: watch
-- The task is marked as waited for (its end then signals the control listeners), then read.
UPDATE {prefix}tasks SET waited = 1 WHERE queue = %(queue)s AND id = %(id)s;
SELECT {columns} FROM {prefix}tasks WHERE queue = %(queue)s AND id = %(id)s

-- name: bulk_count
SELECT COUNT(*) FROM (SELECT 1 FROM {prefix}tasks WHERE {bulk_where} LIMIT %(batch)s) AS matched

-- name: bulk_retry
UPDATE {prefix}tasks
SET status = 'pending', attempts = 0, run_at = {now}, done_at = NULL, cancel_reason = NULL
WHERE {bulk_where}
ORDER BY COALESCE(done_at, created_at), id LIMIT %(batch)s

-- name: bulk_cancel_running
UPDATE {prefix}tasks SET cancel_reason = %(reason)s
WHERE {bulk_where}
ORDER BY COALESCE(done_at, created_at), id LIMIT %(batch)s

-- name: bulk_end
-- The tasks of the filter end now with `status` (killed; cancelled: its statuses are pending and
-- failed only).
UPDATE {prefix}tasks
SET status = %(status)s, last_error = %(reason)s, done_at = {now}, lock_by = NULL, lock_at = NULL
WHERE {bulk_where}
ORDER BY COALESCE(done_at, created_at), id LIMIT %(batch)s

-- name: bulk_purge
DELETE FROM {prefix}tasks
WHERE {bulk_where}
ORDER BY COALESCE(done_at, created_at), id LIMIT %(batch)s
