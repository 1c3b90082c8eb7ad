-- Schema version 4: limits that hold across every daemon, and unique jobs (apalis_cli.fleet).

-- The key a task's queue limits it under (NULL: pushed by a producer that does not know of a
-- keyed limit), and its unique key with the end of its window (NULL: no end).
ALTER TABLE {prefix}tasks ADD COLUMN limit_key TEXT;
ALTER TABLE {prefix}tasks ADD COLUMN unique_key TEXT;
ALTER TABLE {prefix}tasks ADD COLUMN unique_until REAL;

-- A keyed claim steps from key to key and takes each key's first ready tasks from here. Only
-- tasks with a key are in it: a queue without keyed limits pays nothing for it.
CREATE INDEX IF NOT EXISTS {prefix}tasks_ready_by_key
    ON {prefix}tasks (queue, limit_key, priority DESC, run_at, id)
    WHERE status IN ('pending', 'failed') AND limit_key IS NOT NULL;

-- A unique push finds the tasks that hold its key.
CREATE INDEX IF NOT EXISTS {prefix}tasks_unique
    ON {prefix}tasks (queue, unique_key)
    WHERE unique_key IS NOT NULL;

-- A global rate's state per queue and key: its theoretical arrival time (GCRA). A time in the
-- past means a full burst is available, so old rows are dropped at will.
CREATE TABLE IF NOT EXISTS {prefix}limit_rates (
    queue TEXT NOT NULL,
    state TEXT NOT NULL,
    tat   REAL NOT NULL,
    PRIMARY KEY (queue, state)
) STRICT, WITHOUT ROWID;
