-- Schema version 9: a keyed claim reads the keys' tasks interleaved (issue 15's bench bar), as
-- PostgreSQL's migrations 0016/0017. Each task pushed with a key is numbered within its key
-- (`limit_seq`: the number of the key's last waiting task plus one, or, for a key with none
-- waiting, the queue's first waiting number), and `tasks_ready_by_seq` orders a queue's waiting
-- keyed tasks by that number: the first task of every key, then the second of every key, and so
-- on. A saturated key's backlog then lies one task a place behind the others' instead of in front
-- of them, and a claim under a per-key concurrency alone is one range scan of that index
-- (`limit_scan`) rather than a walk from key to key with two lookups each. The walk stays for what
-- the scan cannot settle (a keyed rate, a queue-wide limit, a scan whose window held too few
-- tasks with room).
--
-- `ready_seq` mirrors the number of a waiting keyed task (NULL otherwise), as `ready_key` mirrors
-- its key (MariaDB has no partial indexes): the index's entry moves when a keyed task is claimed
-- or comes back, never for a task pushed without a key (an entry of its own at its push, as in
-- every index). The key is in the index, so the scan reads no row for an entry it passes over;
-- run_at is not (it would move the entry of a keyless task retried): it is checked on the row.
--
-- The number is given by our own inserts (`insert_keyed` from `limit_numbers`, read just before
-- it; `unique_insert`; `unique_replace` for a task that gains a key), not by a trigger: with
-- binary logging on (replication, point-in-time backups, RDS) creating or dropping a trigger or a
-- stored routine needs SUPER, which the database's own user seldom has, and the migration failed
-- there. The lookups are index dives: the key's highest waiting number from `tasks_ready_keys`, which gains `ready_seq` as its last column (its entries change
-- exactly when `ready_key`'s do, so no write pays more; the walk's loose index scan on its first
-- two columns is unchanged, and the index keeps its name, which the walks of daemons of the
-- previous version name), and the queue's first waiting number from `tasks_ready_by_seq`, looked
-- up only for a key with nothing waiting; a batch numbers a key's tasks on from there in its
-- order. It takes no lock: two
-- pushes of one key at once may share a number, which only puts their tasks side by side. Within
-- a key the scan takes tasks in push order, not priority order. A task ready again (retry,
-- recovery, release) keeps its number; a pending task given another key by a unique push's
-- replace keeps its number too (its place, under its new key).
--
-- A daemon of the previous version pushes keyed tasks without a number (`ready_seq` NULL): the
-- scan never reads them, the walk does; the sweep numbers them (`recover`, `number_stragglers`)
-- so that a scan that keeps filling its claims does not pass them over for good.
--
-- Re-runnable: a first try that failed at the trigger (before this change) left the ALTER made.
ALTER TABLE {prefix}tasks
    ADD COLUMN IF NOT EXISTS limit_seq BIGINT NULL,
    ADD COLUMN IF NOT EXISTS ready_seq BIGINT
        AS (IF(status IN ('pending', 'failed') AND limit_key IS NOT NULL, limit_seq, NULL)) PERSISTENT,
    DROP KEY {prefix}tasks_ready_keys,
    ADD KEY {prefix}tasks_ready_keys (queue, ready_key, ready_seq),
    ADD KEY IF NOT EXISTS {prefix}tasks_ready_by_seq (queue, ready_seq, limit_key);

-- The tasks with a key already here, numbered within their key in the order the walk took them,
-- running ones first.
UPDATE {prefix}tasks AS t
JOIN (
    SELECT d.id, ROW_NUMBER() OVER (
        PARTITION BY d.queue, d.limit_key ORDER BY d.status = 'running' DESC, d.priority DESC, d.run_at, d.id
    ) AS seq
    FROM {prefix}tasks AS d
    WHERE d.limit_key IS NOT NULL AND d.limit_seq IS NULL AND d.status IN ('pending', 'failed', 'running')
) AS n ON n.id = t.id
SET t.limit_seq = n.seq;
