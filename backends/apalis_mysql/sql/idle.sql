-- Hand-over (migration 0006): workers listed idle, pushes that claim for them, and what a
-- listed worker reads when woken. `handed` lists the tasks handed to a worker that may still be
-- running; the worker tells those it has seen apart itself (`seen`: a JSON array of ids).

-- name: hand_push
-- One task due now, pushed in one transaction: claimed for the most recently listed idle worker
-- of the queue with a free slot (none while the queue is paused), else left pending; then which
-- worker and listener got it, whether it was inserted (a known id is skipped), whether some
-- worker is listed with a free slot at all, and whether that worker's listener is to be woken
-- (`wake`). SKIP LOCKED: a worker whose listing another transaction holds for a moment (its read
-- of its hands, its acknowledgement) is passed by; the fourth column, a plain read, tells that
-- apart from no listing. It commits in the same packet: the client reads the answer of the
-- SELECT, which the server sends before it runs the COMMIT, and ends the chosen listener's sleep
-- from another connection at once (`handing.hand_push`; none for a listener of the pushing
-- process's own, `own`: told in-process), while the COMMIT waits for its redo-log flush. The
-- worker's read of its hands (`handed`, a locking read of the listing this transaction holds)
-- waits for the COMMIT, not for its flush: InnoDB releases a transaction's locks and shows its
-- rows before that flush ends (as to any claim of a pushed task), so the flush is not on the
-- task's way, and a KILL the server holds for seconds holds neither the push nor the listing.
-- A listener that is gone answers the KILL at once: the client takes the task back
-- (`hand_gone`), for the other workers (it waited for the orphan sweep, `stale_after`, in the
-- dead worker's name). One whose process was killed a moment ago is still asleep on the server
-- (it notices a client gone only every 5 s of a SLEEP): the KILL succeeds and ends it. The last
-- column says whether the listener holds its live lock (`listener.LIVE_LOCK`), whose release
-- tells that end (`handing.WATCH_AFTER`).
-- A listing made before the server last started (`@apalis_boot`, set on each connection) names a
-- listener id the server may have given to another connection since: it is passed by.
START TRANSACTION;
SET @apalis_worker = NULL, @apalis_listener = NULL;
SELECT worker_id, listener INTO @apalis_worker, @apalis_listener FROM {prefix}idle
WHERE queue = %(queue)s AND until > {now} AND free > 0 AND %(run_at)s <= {now}
  AND until - %(span)s >= @apalis_boot
  AND NOT EXISTS (SELECT 1 FROM {prefix}queues AS p WHERE p.queue = %(queue)s AND p.paused = 1)
ORDER BY until DESC
LIMIT 1
FOR UPDATE SKIP LOCKED;
INSERT INTO {prefix}tasks
    (id, queue, payload, status, attempts, max_attempts, run_at, priority, idempotency_key, meta, waited,
     created_at, lock_by, lock_at)
VALUES (%(id)s, %(queue)s, %(payload)s, IF(@apalis_worker IS NULL, 'pending', 'running'),
        IF(@apalis_worker IS NULL, 0, 1), %(max_attempts)s, %(run_at)s, %(priority)s, NULL, %(meta)s, %(waited)s,
        {now}, @apalis_worker, IF(@apalis_worker IS NULL, NULL, {now}))
ON DUPLICATE KEY UPDATE id = id;
SET @apalis_inserted = ROW_COUNT() = 1;
UPDATE {prefix}idle
SET free = free - 1, handed = JSON_ARRAY_APPEND(COALESCE(handed, '[]'), '$', %(id)s)
WHERE worker_id = @apalis_worker AND @apalis_inserted;
SET @apalis_wake = @apalis_inserted AND @apalis_listener IS NOT NULL AND @apalis_listener NOT IN %(own)s;
SELECT IF(@apalis_inserted, @apalis_worker, NULL), @apalis_listener, @apalis_inserted,
    @apalis_worker IS NOT NULL OR EXISTS (
        SELECT 1 FROM {prefix}idle WHERE queue = %(queue)s AND until > {now} AND free > 0),
    @apalis_wake, @apalis_wake AND IS_USED_LOCK(CONCAT({live_lock}, @apalis_listener)) <=> @apalis_listener;
COMMIT

-- name: hand_gone
-- The listener of the worker `hand_push` handed task `id` to is gone (its process stopped): the
-- task goes back pending, its attempt not counted, and that worker is handed no more tasks (its
-- listing lapses; its orphans are swept as ever). Only while its listing still names that
-- listener: a worker reads its hands under the listener it has (`handed`), so one that listed
-- itself again under a new listener may have read the task, and keeps it.
START TRANSACTION;
SET @apalis_worker = NULL;
SELECT worker_id INTO @apalis_worker FROM {prefix}idle
WHERE worker_id = %(worker)s AND listener = %(listener)s
FOR UPDATE;
UPDATE {prefix}idle SET free = 0 WHERE worker_id = @apalis_worker;
UPDATE {prefix}tasks
SET status = 'pending', attempts = GREATEST(attempts - 1, 0), lock_by = NULL, lock_at = NULL
WHERE id = %(id)s AND lock_by = @apalis_worker AND status = 'running';
COMMIT

-- name: handed
-- The tasks handed to a listed worker that it has not seen, still running under it, each with
-- its place in the hand order (`Database.claim` sorts by it); only while its listing names the
-- listener it has now (`listener`: a task handed under a listener gone may be taken back,
-- `hand_gone`). First a locking read of the listing's row alone: a push that handed a task ends
-- the worker's sleep while its COMMIT runs (`hand_push`), and this waits for that commit (its
-- lock on the listing), not for its redo-log flush; a plain read could come before it and miss
-- the hand. Then the hands by a plain read,
-- which sees that commit: the listing is held only for the one-row read (it was held through the
-- join to the tasks, and a push in the meantime passed the listing by, SKIP LOCKED: 15/25/15/17
-- of 1,000 paced pushes, against 2/9/4/8 now, in four interleaved pairs at load 16-21).
-- The listing's ids are read by their places (the SEQUENCE engine's numbers below its
-- JSON_LENGTH, a range), each task by its primary key (forced: on a small table the server
-- scans it into a join buffer instead): no JSON_TABLE and no ORDER BY, so no internal table
-- is built and dropped (the earlier form's plan on a small table sorted the join's rows in a
-- temporary table). The shared MariaDB 10.11.19 crashed once (signal 11 in
-- ha_maria::drop_table, in the join's cleanup) on this statement's earlier form, a JOIN of
-- JSON_TABLE(handed) sorted by its ordinality.
SELECT 1 FROM {prefix}idle WHERE worker_id = %(worker)s LOCK IN SHARE MODE;
SELECT STRAIGHT_JOIN {task_columns}, h.seq
FROM {prefix}idle AS i
JOIN seq_0_to_65535 AS h ON h.seq < JSON_LENGTH(i.handed)
JOIN {prefix}tasks AS t FORCE INDEX (PRIMARY) ON t.id = JSON_VALUE(i.handed, CONCAT('$[', h.seq, ']'))
WHERE i.worker_id = %(worker)s AND i.listener = %(listener)s AND t.lock_by = %(worker)s
  AND t.status = 'running' AND NOT JSON_CONTAINS(%(seen)s, JSON_QUOTE(t.id))

-- name: list
-- List a worker idle (or again) until `until` with `free` slots; its handed tasks that no longer
-- run under it are forgotten. Rows of workers gone for a minute are dropped on the way, once
-- the orphan sweep has forgotten the worker: until then its row tells the sweep which tasks were
-- handed to it (`tasks.sql`'s `recover`: one handed after its last beat is not an attempt).
INSERT INTO {prefix}idle (worker_id, queue, listener, until, free, handed)
VALUES (%(worker)s, %(queue)s, %(listener)s, {now} + %(span)s, %(free)s, NULL)
ON DUPLICATE KEY UPDATE listener = VALUES(listener), until = VALUES(until), free = VALUES(free),
    handed = (SELECT JSON_ARRAYAGG(t.id) FROM JSON_TABLE(handed, '$[*]' COLUMNS (
        task VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$')) AS h
        JOIN {prefix}tasks AS t ON t.id = h.task
        WHERE t.lock_by = %(worker)s AND t.status = 'running');
DELETE FROM {prefix}idle WHERE queue = %(queue)s AND until < {now} - 60
    AND NOT EXISTS (SELECT 1 FROM {prefix}workers AS w WHERE w.id = worker_id)

-- name: unlist
-- The worker is busy: no more hand-overs until it lists itself again (tasks already handed
-- stay listed, for its next claim to read).
UPDATE {prefix}idle SET free = 0 WHERE worker_id = %(worker)s

-- name: farewell_idle
-- The worker stopped polling: the tasks handed to it that it never saw go back, not counted.
UPDATE {prefix}idle AS i
JOIN JSON_TABLE(i.handed, '$[*]' COLUMNS (
    task VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$')) AS h
JOIN {prefix}tasks AS t ON t.id = h.task
SET t.status = 'pending', t.attempts = GREATEST(t.attempts - 1, 0), t.lock_by = NULL, t.lock_at = NULL
WHERE i.worker_id = %(worker)s AND t.lock_by = %(worker)s AND t.status = 'running'
  AND NOT JSON_CONTAINS(%(seen)s, JSON_QUOTE(t.id));
DELETE FROM {prefix}idle WHERE worker_id = %(worker)s
