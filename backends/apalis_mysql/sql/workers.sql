-- name: beat
INSERT INTO {prefix}workers (id, name, queue, host, pid, started_at, last_seen, layers, running)
VALUES (%(id)s, %(name)s, %(queue)s, %(host)s, %(pid)s, %(started_at)s, {now}, %(layers)s, %(running)s)
ON DUPLICATE KEY UPDATE last_seen = VALUES(last_seen), running = VALUES(running)

-- name: sweep_lock
-- One sweeper per queue at a time: a named lock, given up at once if another session holds it.
SELECT GET_LOCK(%(lock)s, 0)

-- name: sweep_unlock
SELECT RELEASE_LOCK(%(lock)s)

-- name: forget_workers
DELETE FROM {prefix}workers WHERE queue = %(queue)s AND last_seen < {now} - %(stale_after)s

-- name: farewell
DELETE FROM {prefix}workers WHERE id = %(id)s

-- name: workers
SELECT id, name, queue, host, pid, started_at, last_seen, layers, running
FROM {prefix}workers WHERE queue = %(queue)s ORDER BY started_at, id
