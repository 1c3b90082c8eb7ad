-- name: beat
INSERT INTO {prefix}workers (id, name, queue, host, pid, started_at, last_seen, layers, running)
VALUES (%(id)s, %(name)s, %(queue)s, %(host)s, %(pid)s, %(started_at)s, {now}, %(layers)s, %(running)s)
ON DUPLICATE KEY UPDATE last_seen = VALUES(last_seen), running = VALUES(running)

-- name: sweep_lock
-- One sweeper per queue at a time: a named lock, given up at once if another session holds it.
SELECT GET_LOCK(%(lock)s, 0)

-- name: sweep_unlock
SELECT RELEASE_LOCK(%(lock)s)

-- name: beat_start
-- A beat sent whole (`Database.beat`) starts here: the worker's running tasks were read just
-- before it was sent, and `release_lost` counts its grace back from now.
SET @apalis_beat_at = {now}

-- name: beat_sweep_lock
-- A beat sent whole (`Database.beat`, one round trip: `beat_start`, `beat`, `cancels_requested`,
-- `paused`, `release_lost`, this, the sweep under `beat_sweep`, `beat_end`): whether `release_lost`
-- (just before) made tasks ready, and the queue's sweep lock where this process may sweep.
SET @apalis_woke = ROW_COUNT() > 0, @apalis_recovered = 0,
    @apalis_swept = IF(%(sweep)s, GET_LOCK(%(lock)s, 0), 0)

-- name: beat_sweep
-- The sweep's statements ({sweep}: `recover`, then `forget_workers` and `purge_expired`), run
-- only under the lock; a sweep that took longer than keep_alive beats again before the lock is
-- freed (its beat is as old as the sweep: the next sweeper would find it stale).
BEGIN NOT ATOMIC
    IF @apalis_swept = 1 THEN
        {recover};
        SET @apalis_recovered = ROW_COUNT();
        {sweep};
        UPDATE {prefix}workers SET last_seen = {now}
        WHERE id = %(id)s AND last_seen < {now} - %(keep_alive)s;
    END IF;
END

-- name: beat_end
SELECT @apalis_woke, @apalis_recovered > 0, @apalis_swept = 1, IF(@apalis_swept = 1, RELEASE_LOCK(%(lock)s), 0)

-- name: forget_workers
DELETE FROM {prefix}workers WHERE queue = %(queue)s AND last_seen < {now} - %(stale_after)s

-- name: farewell
DELETE FROM {prefix}workers WHERE id = %(id)s

-- name: workers
SELECT id, name, queue, host, pid, started_at, last_seen, layers, running
FROM {prefix}workers WHERE queue = %(queue)s ORDER BY started_at, id
