-- The worker registry and what every heartbeat does: register, sweep orphans, reconcile, purge.

-- name: beat
INSERT INTO {prefix}workers (id, name, queue, host, pid, started_at, last_seen, layers, running)
VALUES (:id, :name, :queue, :host, :pid, :started_at, :now, :layers, :running)
ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen, running = excluded.running;

-- name: forget_stale_workers
DELETE FROM {prefix}workers WHERE queue = :queue AND last_seen < :stale_before;

-- name: recover_orphans
-- Running tasks whose worker was not seen since :stale_before (and locked before then: a claim
-- racing its worker's first beat is not an orphan). The attempt stays counted: exhausted tasks
-- are killed, the others run again now. Never a loop. One with a cancel requested is cancelled.
UPDATE {prefix}tasks
SET status = CASE WHEN cancel_reason IS NOT NULL THEN 'cancelled'
                  WHEN attempts >= max_attempts THEN 'killed' ELSE 'failed' END,
    last_error = coalesce(cancel_reason, 'worker ' || lock_by || ' stopped sending heartbeats while running this task'),
    run_at = CASE WHEN attempts >= max_attempts OR cancel_reason IS NOT NULL THEN run_at ELSE :now END,
    done_at = CASE WHEN attempts >= max_attempts OR cancel_reason IS NOT NULL THEN :now ELSE NULL END,
    lock_by = NULL,
    locked_at = NULL,
    cancel_reason = NULL
WHERE queue = :queue AND status = 'running' AND locked_at < :stale_before
  AND lock_by NOT IN (SELECT id FROM {prefix}workers WHERE queue = :queue AND last_seen >= :stale_before);

-- name: release_unowned
-- Tasks locked by this worker that it is not running (a claim whose reply was lost), locked
-- for longer than a beat: back to pending, the attempt not counted (cancelled if a cancel was
-- requested).
UPDATE {prefix}tasks
SET status = CASE WHEN cancel_reason IS NULL THEN 'pending' ELSE 'cancelled' END,
    attempts = max(attempts - 1, 0), run_at = min(run_at, :now),
    last_error = coalesce(cancel_reason, last_error),
    done_at = CASE WHEN cancel_reason IS NULL THEN done_at ELSE :now END,
    lock_by = NULL, locked_at = NULL, cancel_reason = NULL
WHERE queue = :queue AND status = 'running' AND lock_by = :id AND locked_at < :locked_before
  AND id NOT IN (SELECT value FROM json_each(:running));

-- name: purge_expired
-- run_at < :cutoff adds nothing (a task finishes after it is due; a kill moves run_at back to
-- the kill) but lets the status index narrow the scan to old tasks.
-- At most :limit per beat, so a large backlog never holds the write lock for long.
DELETE FROM {prefix}tasks WHERE id IN (
    SELECT id FROM {prefix}tasks
    WHERE queue = :queue AND status IN ('done', 'killed', 'cancelled') AND run_at < :cutoff AND done_at < :cutoff
    LIMIT :limit
);

-- name: cancels_of_worker
-- The worker's runs with a cancel requested (each heartbeat tells the worker again).
SELECT id, cancel_reason FROM {prefix}tasks
WHERE queue = :queue AND status = 'running' AND lock_by = :id AND cancel_reason IS NOT NULL;

-- name: farewell
DELETE FROM {prefix}workers WHERE id = :id;

-- name: workers
SELECT id, name, queue, host, pid, started_at, last_seen, layers, running
FROM {prefix}workers WHERE queue = :queue ORDER BY started_at, id;
