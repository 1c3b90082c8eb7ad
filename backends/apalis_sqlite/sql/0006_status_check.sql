-- Schema version 6: the tasks table's status CHECK as comparisons, not an IN list.
--
-- SQLite codes `status IN (six values)` in a CHECK as a small temporary index, built afresh for
-- every row an UPDATE writes (EXPLAIN: OpenEphemeral and six IdxInsert before each row's check),
-- and every claim and acknowledgement writes status. The same six values as comparisons are
-- checked in place. A CHECK cannot be changed in place: the table is made again with its rows
-- and rowids (SQLite's documented way, as in version 3), in this one transaction. Its columns,
-- their order and the indexes are those of version 5: statements of older daemons still running
-- on the file are prepared again by SQLite (the schema changed) and work as before.
CREATE TABLE {prefix}tasks_v6 (
    id              TEXT    NOT NULL PRIMARY KEY,
    queue           TEXT    NOT NULL,
    payload         BLOB    NOT NULL,
    status          TEXT    NOT NULL
        CHECK (status = 'pending' OR status = 'running' OR status = 'done' OR status = 'failed'
               OR status = 'killed' OR status = 'cancelled'),
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL DEFAULT 1,
    run_at          REAL    NOT NULL,
    priority        INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT,
    meta            TEXT,
    lock_by         TEXT,
    locked_at       REAL,
    last_error      TEXT,
    result          TEXT,
    created_at      REAL    NOT NULL,
    done_at         REAL,
    cancel_reason   TEXT,
    limit_key       TEXT,
    unique_key      TEXT,
    unique_until    REAL
) STRICT;

INSERT INTO {prefix}tasks_v6
    (rowid, id, queue, payload, status, attempts, max_attempts, run_at, priority, idempotency_key, meta,
     lock_by, locked_at, last_error, result, created_at, done_at, cancel_reason, limit_key, unique_key,
     unique_until)
SELECT rowid, id, queue, payload, status, attempts, max_attempts, run_at, priority, idempotency_key, meta,
    lock_by, locked_at, last_error, result, created_at, done_at, cancel_reason, limit_key, unique_key,
    unique_until
FROM {prefix}tasks;

DROP TABLE {prefix}tasks;
ALTER TABLE {prefix}tasks_v6 RENAME TO {prefix}tasks;

-- The indexes of version 5, as they were (they went with the old table).
CREATE UNIQUE INDEX {prefix}tasks_key
    ON {prefix}tasks (queue, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX {prefix}tasks_by_status ON {prefix}tasks (queue, status, run_at, id, done_at);
CREATE INDEX {prefix}tasks_ready_by_key
    ON {prefix}tasks (queue, limit_key, priority DESC, run_at, id)
    WHERE status IN ('pending', 'failed') AND limit_key IS NOT NULL;
CREATE INDEX {prefix}tasks_unique
    ON {prefix}tasks (queue, unique_key)
    WHERE unique_key IS NOT NULL;
CREATE INDEX {prefix}tasks_ready
    ON {prefix}tasks (queue, priority DESC, run_at, id)
    WHERE status IN ('pending', 'failed') AND limit_key IS NULL;
CREATE INDEX {prefix}tasks_ready_keyed
    ON {prefix}tasks (queue, priority DESC, run_at, id)
    WHERE status IN ('pending', 'failed') AND limit_key IS NOT NULL;
