-- Schema version 5: the ready tasks in two indexes of the same order, those pushed without a
-- limit key and those with one. A claim within keyed limits finds the tasks without a key by
-- the first at once, however many tasks of keys at their limit come before them in the queue's
-- order (with one index it had to step over those); the ordinary claim reads both in step (a
-- merge, no sort). A task is in as many indexes as before: every claim pays the same.
DROP INDEX IF EXISTS {prefix}tasks_ready;

CREATE INDEX IF NOT EXISTS {prefix}tasks_ready
    ON {prefix}tasks (queue, priority DESC, run_at, id)
    WHERE status IN ('pending', 'failed') AND limit_key IS NULL;

CREATE INDEX IF NOT EXISTS {prefix}tasks_ready_keyed
    ON {prefix}tasks (queue, priority DESC, run_at, id)
    WHERE status IN ('pending', 'failed') AND limit_key IS NOT NULL;
