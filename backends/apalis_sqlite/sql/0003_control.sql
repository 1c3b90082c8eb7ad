-- Schema version 3: the control plane (cancel, pause).

-- A task may end `cancelled`, and a running task keeps the reason of a cancel requested of it
-- (`cancel_reason`) until its worker stops it. A CHECK constraint cannot be changed in place:
-- the table is made again with its rows (SQLite's documented way), in this one transaction.
CREATE TABLE {prefix}tasks_v3 (
    id              TEXT    NOT NULL PRIMARY KEY,
    queue           TEXT    NOT NULL,
    payload         BLOB    NOT NULL,
    status          TEXT    NOT NULL
        CHECK (status IN ('pending', 'running', 'done', 'failed', 'killed', 'cancelled')),
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
    cancel_reason   TEXT
) STRICT;

INSERT INTO {prefix}tasks_v3
    (id, queue, payload, status, attempts, max_attempts, run_at, priority, idempotency_key, meta,
     lock_by, locked_at, last_error, result, created_at, done_at)
SELECT id, queue, payload, status, attempts, max_attempts, run_at, priority, idempotency_key, meta,
    lock_by, locked_at, last_error, result, created_at, done_at
FROM {prefix}tasks;

DROP TABLE {prefix}tasks;
ALTER TABLE {prefix}tasks_v3 RENAME TO {prefix}tasks;

-- The indexes of versions 1 and 2, as they were (they went with the old table).
CREATE INDEX {prefix}tasks_ready
    ON {prefix}tasks (queue, priority DESC, run_at, id)
    WHERE status IN ('pending', 'failed');
CREATE UNIQUE INDEX {prefix}tasks_key
    ON {prefix}tasks (queue, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX {prefix}tasks_by_status ON {prefix}tasks (queue, status, run_at, id, done_at);

-- One row per queue that was ever paused: the state every daemon's claim reads.
CREATE TABLE IF NOT EXISTS {prefix}queues (
    queue      TEXT    NOT NULL PRIMARY KEY,
    paused     INTEGER NOT NULL DEFAULT 0,
    changed_at REAL    NOT NULL
) STRICT;
