-- Statements on tasks: `columns` is the shared task column list, `now` the server's clock in
-- epoch seconds. Statements with a list built per call (ids, rows) take positional parameters;
-- a named parameter given a list (`keys`, `running`) is bound as an `IN` list.

-- name: claim_select
-- Lock up to `limit` ready tasks; SKIP LOCKED leaves those another claimer holds to it.
SELECT {columns} FROM {prefix}tasks
WHERE queue = %(queue)s AND ready = 1 AND run_at <= {now}
ORDER BY priority DESC, run_at, id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- name: claim_update
UPDATE {prefix}tasks
SET status = 'running', attempts = attempts + 1, lock_by = %s, lock_at = {now}
WHERE id IN ({ids})

-- name: insert
INSERT INTO {prefix}tasks
    (id, queue, payload, status, attempts, max_attempts, run_at, priority, idempotency_key, meta, created_at)
VALUES {rows}
ON DUPLICATE KEY UPDATE id = id

-- name: key_holders
SELECT idempotency_key, id FROM {prefix}tasks WHERE queue = %(queue)s AND idempotency_key IN %(keys)s

-- name: ack_done
-- Runs that ended done under one worker with the same result; a task no longer running under
-- that worker (its lease was lost) is left alone.
UPDATE {prefix}tasks
SET status = 'done', result = %s, done_at = {now}, lock_by = NULL, lock_at = NULL
WHERE id IN ({ids}) AND lock_by = %s AND status = 'running'

-- name: ack
-- Apply a batch of outcomes in one statement; a task no longer running under the same worker
-- (its lease was lost) is left alone. `u` holds one row per outcome with the new status.
UPDATE {prefix}tasks AS t
JOIN ({outcomes}) AS u ON t.id = u.id AND t.lock_by = u.lock_by
SET t.attempts = IF(u.status = 'pending', GREATEST(t.attempts - 1, 0), t.attempts),
    t.run_at = CASE u.status
        WHEN 'failed' THEN COALESCE(u.run_at, {now})
        WHEN 'pending' THEN LEAST(t.run_at, {now})
        ELSE t.run_at END,
    t.result = IF(u.status = 'done', u.result, t.result),
    t.last_error = IF(u.status IN ('failed', 'killed'), u.error, t.last_error),
    t.done_at = IF(u.status IN ('done', 'killed'), {now}, NULL),
    t.lock_by = NULL,
    t.lock_at = NULL,
    t.status = u.status
WHERE t.status = 'running'

-- name: release_lost
-- Tasks this worker claimed but is not running (a claim whose reply was lost with its
-- connection), locked longer than stale_after ago: back to pending, the attempt not counted.
UPDATE {prefix}tasks
SET status = 'pending', attempts = GREATEST(attempts - 1, 0), lock_by = NULL, lock_at = NULL
WHERE queue = %(queue)s AND status = 'running' AND lock_by = %(worker)s
  AND lock_at < {now} - %(grace)s AND id NOT IN %(running)s

-- name: recover
-- Running tasks whose worker stopped beating: run again now, or killed if out of attempts.
UPDATE {prefix}tasks AS t
SET t.last_error = CONCAT('worker ', t.lock_by, ' stopped sending heartbeats while running this task'),
    t.done_at = IF(t.attempts >= t.max_attempts, {now}, NULL),
    t.run_at = IF(t.attempts >= t.max_attempts, t.run_at, {now}),
    t.lock_by = NULL,
    t.lock_at = NULL,
    t.status = IF(t.attempts >= t.max_attempts, 'killed', 'failed')
WHERE t.queue = %(queue)s AND t.status = 'running'
  AND NOT EXISTS (
      SELECT 1 FROM {prefix}workers AS w
      WHERE w.id = t.lock_by AND w.last_seen >= {now} - %(stale_after)s
  )

-- name: purge_expired
DELETE FROM {prefix}tasks
WHERE queue = %(queue)s AND status IN ('done', 'killed') AND done_at < {now} - %(retention)s
