-- name: get_task
SELECT {columns} FROM {prefix}tasks WHERE queue = %(queue)s AND id = %(id)s

-- name: stats
-- Per status: how many (from the status index); then, as a row of its own, how many of the tasks
-- waiting to run have a run_at still to come (from the ready index: neither reads a table row).
SELECT status, COUNT(*), 0 FROM {prefix}tasks WHERE queue = %(queue)s GROUP BY status
UNION ALL
SELECT 'pending', 0, COUNT(*) FROM {prefix}tasks WHERE queue = %(queue)s AND ready = 1 AND run_at > {now}

-- name: retry
UPDATE {prefix}tasks SET status = 'pending', attempts = 0, run_at = {now}, done_at = NULL, cancel_reason = NULL
WHERE queue = %(queue)s AND id = %(id)s AND status IN ('failed', 'killed', 'cancelled')

-- name: kill
UPDATE {prefix}tasks
SET status = 'killed', last_error = %(reason)s, lock_by = NULL, lock_at = NULL, done_at = {now}
WHERE queue = %(queue)s AND id = %(id)s AND status IN ('pending', 'running', 'failed')

-- name: purge
DELETE FROM {prefix}tasks
WHERE queue = %(queue)s AND status = %(status)s AND COALESCE(done_at, created_at) <= {now} - %(older_than)s
