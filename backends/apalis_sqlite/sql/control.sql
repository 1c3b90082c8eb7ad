-- The control plane: cancel, pause, and actions on every task a filter matches.

-- name: cancel_waiting
-- A task that has not started (pending, or failed and waiting for its retry) is cancelled in
-- one UPDATE: the claim is one UPDATE of the same rows, so exactly one of the two wins.
UPDATE {prefix}tasks
SET status = 'cancelled', last_error = :reason, done_at = :now, run_at = min(run_at, :now), lock_by = NULL,
    locked_at = NULL, cancel_reason = NULL
WHERE queue = :queue AND id = :id AND status IN ('pending', 'failed');

-- name: cancel_running
-- A running task keeps running in the store's eyes: the request waits for its worker.
UPDATE {prefix}tasks SET cancel_reason = :reason
WHERE queue = :queue AND id = :id AND status = 'running'
RETURNING lock_by;

-- name: task_status
SELECT status FROM {prefix}tasks WHERE queue = :queue AND id = :id;

-- name: cancels_running_in
-- The runs with a cancel requested in these queues (a JSON array), for the workers of this process.
SELECT id, cancel_reason, lock_by FROM {prefix}tasks
WHERE queue IN (SELECT value FROM json_each(:queues)) AND status = 'running' AND cancel_reason IS NOT NULL;

-- name: set_paused
INSERT INTO {prefix}queues (queue, paused, changed_at) VALUES (:queue, :paused, :now)
ON CONFLICT (queue) DO UPDATE SET paused = excluded.paused, changed_at = excluded.changed_at;

-- name: is_paused
SELECT paused FROM {prefix}queues WHERE queue = :queue;

-- Bulk actions: each statement takes at most :limit tasks matching the filter (_bulk_match;
-- :statuses a JSON array; :since, :until and :pattern NULL when not given), read along the status
-- index; the caller repeats it until a batch comes back short. Every action moves the tasks it
-- takes out of what the filter matches (a running task it cancels keeps its request), so no batch
-- takes a task twice.

-- name: _bulk_match
queue = :queue AND status IN (SELECT value FROM json_each(:statuses))
      AND (:since IS NULL OR coalesce(done_at, created_at) >= :since)
      AND (:until IS NULL OR coalesce(done_at, created_at) <= :until)
      AND (:pattern IS NULL OR last_error LIKE :pattern ESCAPE '\')

-- name: bulk_count
SELECT count(*) FROM (
    SELECT 1 FROM {prefix}tasks
    WHERE {_bulk_match}
      AND (status <> 'running' OR cancel_reason IS NULL OR NOT :cancel)
    LIMIT :limit
);

-- name: bulk_retry
UPDATE {prefix}tasks
SET status = 'pending', attempts = 0, run_at = :now, done_at = NULL, lock_by = NULL, locked_at = NULL,
    cancel_reason = NULL
WHERE id IN (
    SELECT id FROM {prefix}tasks
    WHERE {_bulk_match}
    LIMIT :limit
);

-- name: bulk_kill
UPDATE {prefix}tasks
SET status = 'killed', last_error = :reason, done_at = :now, run_at = min(run_at, :now), lock_by = NULL,
    locked_at = NULL, cancel_reason = NULL
WHERE id IN (
    SELECT id FROM {prefix}tasks
    WHERE {_bulk_match}
    LIMIT :limit
);

-- name: bulk_cancel
-- Waiting tasks are cancelled; running ones get the request (their workers are told).
UPDATE {prefix}tasks
SET status = CASE WHEN status = 'running' THEN 'running' ELSE 'cancelled' END,
    cancel_reason = CASE WHEN status = 'running' THEN :reason END,
    last_error = CASE WHEN status = 'running' THEN last_error ELSE :reason END,
    done_at = CASE WHEN status = 'running' THEN done_at ELSE :now END,
    run_at = CASE WHEN status = 'running' THEN run_at ELSE min(run_at, :now) END
WHERE id IN (
    SELECT id FROM {prefix}tasks
    WHERE {_bulk_match}
      AND (status <> 'running' OR cancel_reason IS NULL)
    LIMIT :limit
)
RETURNING id, status, lock_by;

-- name: bulk_purge
DELETE FROM {prefix}tasks
WHERE id IN (
    SELECT id FROM {prefix}tasks
    WHERE {_bulk_match}
    LIMIT :limit
);
