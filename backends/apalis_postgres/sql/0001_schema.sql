-- The first schema: tasks, workers. Times are epoch seconds (float8) stamped by the server's
-- clock; `{schema}` is replaced by the quoted schema name.
CREATE TABLE IF NOT EXISTS {schema}.tasks (
    id              text PRIMARY KEY,
    queue           text NOT NULL,
    payload         bytea NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'running', 'done', 'failed', 'killed')),
    attempts        integer NOT NULL DEFAULT 0,
    max_attempts    integer NOT NULL DEFAULT 1,
    run_at          float8 NOT NULL,
    priority        integer NOT NULL DEFAULT 0,
    idempotency_key text,
    meta            jsonb NOT NULL DEFAULT '{}'::jsonb,
    lock_by         text,
    lock_at         float8,
    last_error      text,
    result          json,
    created_at      float8 NOT NULL,
    done_at         float8
);

-- The claim walks this index in order: ready tasks of one queue, highest priority, oldest first.
CREATE INDEX IF NOT EXISTS tasks_ready ON {schema}.tasks (queue, priority DESC, run_at)
    WHERE status IN ('pending', 'failed');

CREATE INDEX IF NOT EXISTS tasks_running ON {schema}.tasks (queue, lock_by) WHERE status = 'running';

CREATE INDEX IF NOT EXISTS tasks_finished ON {schema}.tasks (queue, done_at) WHERE status IN ('done', 'killed');

CREATE INDEX IF NOT EXISTS tasks_by_run_at ON {schema}.tasks (queue, run_at);

-- Idempotency: one task per key and queue (tasks without a key are not in the index).
CREATE UNIQUE INDEX IF NOT EXISTS tasks_idempotency ON {schema}.tasks (queue, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE IF NOT EXISTS {schema}.workers (
    id         text PRIMARY KEY,
    name       text NOT NULL,
    queue      text NOT NULL,
    host       text NOT NULL,
    pid        integer NOT NULL,
    started_at float8 NOT NULL,
    last_seen  float8 NOT NULL,
    layers     jsonb NOT NULL DEFAULT '[]'::jsonb,
    running    integer
);

CREATE INDEX IF NOT EXISTS workers_queue ON {schema}.workers (queue, last_seen);
