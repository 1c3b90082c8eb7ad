-- Schema version 5: limits that hold across every daemon, and unique jobs (apalis_cli.fleet).
-- `limit_key`: the key a task's queue limits it under (NULL: pushed by a producer that does not
-- know of a keyed limit); `unique_key` and `unique_until`: its unique key and the end of its
-- window (NULL: no end). `ready_key` mirrors the limit key of a task waiting to run (NULL
-- otherwise), so the indexes on it change only for keyed tasks (MariaDB has no partial
-- indexes): a keyed claim walks the keys with waiting tasks in `tasks_ready_keys` (a loose
-- index scan, one step per key however deep its backlog) and takes each key's first ready
-- task from `tasks_ready_by_key`. A unique push finds the newest holder of its key.
ALTER TABLE {prefix}tasks
    ADD COLUMN limit_key VARCHAR(255) NULL,
    ADD COLUMN unique_key VARCHAR(255) NULL,
    ADD COLUMN unique_until DOUBLE NULL,
    ADD COLUMN ready_key VARCHAR(255) AS (IF(status IN ('pending', 'failed'), limit_key, NULL)) PERSISTENT,
    ADD KEY {prefix}tasks_ready_keys (queue, ready_key),
    ADD KEY {prefix}tasks_ready_by_key (queue, ready_key, priority DESC, run_at, id),
    ADD KEY {prefix}tasks_unique (queue, unique_key, created_at);

-- A global rate's state per queue and key: its theoretical arrival time (GCRA). A time in the
-- past means a full burst is available, so old rows are dropped at will.
CREATE TABLE IF NOT EXISTS {prefix}limit_rates (
    queue VARCHAR(191) NOT NULL,
    state VARCHAR(300) NOT NULL,
    tat   DOUBLE NOT NULL,
    PRIMARY KEY (queue, state)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
