-- Schema version 1: tasks, the worker registry.
-- Times are epoch seconds (REAL), written by Python: SQLite 3.40 has no unixepoch('subsec').

CREATE TABLE IF NOT EXISTS {prefix}tasks (
    id              TEXT    NOT NULL PRIMARY KEY,
    queue           TEXT    NOT NULL,
    payload         BLOB    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed', 'killed')),
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
    done_at         REAL
) STRICT;

-- The claim walks this in order: highest priority, then earliest run_at, among claimable tasks.
CREATE INDEX IF NOT EXISTS {prefix}tasks_ready
    ON {prefix}tasks (queue, priority DESC, run_at, id)
    WHERE status IN ('pending', 'failed');

-- Idempotency: one task per key and queue (NULL keys are not unique).
CREATE UNIQUE INDEX IF NOT EXISTS {prefix}tasks_key
    ON {prefix}tasks (queue, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Everything else by status: the orphan sweep and reconciliation (running), retention (done and
-- killed, by run_at: never later than done_at), listing and counting. One index, not one per
-- purpose: each extra index costs every claim and acknowledgement.
CREATE INDEX IF NOT EXISTS {prefix}tasks_status
    ON {prefix}tasks (queue, status, run_at);

CREATE TABLE IF NOT EXISTS {prefix}workers (
    id          TEXT    NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL,
    queue       TEXT    NOT NULL,
    host        TEXT    NOT NULL,
    pid         INTEGER NOT NULL,
    started_at  REAL    NOT NULL,
    last_seen   REAL    NOT NULL,
    layers      TEXT    NOT NULL DEFAULT '[]',
    running     INTEGER
) STRICT;

CREATE INDEX IF NOT EXISTS {prefix}workers_queue ON {prefix}workers (queue, last_seen);
