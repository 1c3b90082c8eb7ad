-- Schema version 5: limits that hold across every daemon, and unique jobs (apalis_cli.fleet).
-- Adding nullable columns rewrites no row.

-- The key a task's queue limits it under (NULL: pushed by a producer that does not know of a
-- keyed limit), and its unique key with the end of its window (NULL: no end). Keys compare
-- byte by byte (COLLATE "C"), as the claim's turns compare them in Python.
ALTER TABLE {schema}.tasks ADD COLUMN IF NOT EXISTS limit_key text COLLATE "C";
ALTER TABLE {schema}.tasks ADD COLUMN IF NOT EXISTS unique_key text;
ALTER TABLE {schema}.tasks ADD COLUMN IF NOT EXISTS unique_until float8;

-- A keyed claim steps from key to key and takes each key's first ready task from here. Only
-- tasks with a key are in it: a queue without keyed limits pays nothing for it.
CREATE INDEX IF NOT EXISTS tasks_ready_by_key ON {schema}.tasks (queue, limit_key, priority DESC, run_at, id)
    WHERE status IN ('pending', 'failed') AND limit_key IS NOT NULL;

-- A unique push finds the newest task holding its key.
CREATE INDEX IF NOT EXISTS tasks_unique ON {schema}.tasks (queue, unique_key, created_at)
    WHERE unique_key IS NOT NULL;

-- A global rate's state per queue and key: its theoretical arrival time (GCRA). A time in the
-- past means a full burst is available, so old rows are dropped at will.
CREATE TABLE IF NOT EXISTS {schema}.limit_rates (
    queue text NOT NULL,
    state text NOT NULL,
    tat   float8 NOT NULL,
    PRIMARY KEY (queue, state)
);
