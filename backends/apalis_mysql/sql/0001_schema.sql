-- The first schema: tasks and workers, named with the store's table prefix. Times are epoch
-- seconds (DOUBLE) from the server's clock. `ready` mirrors "pending or failed" so the claim walks
-- one index range in (priority DESC, run_at) order; MariaDB has no partial indexes.
CREATE TABLE IF NOT EXISTS {prefix}tasks (
    id              VARCHAR(64) NOT NULL,
    queue           VARCHAR(191) NOT NULL,
    payload         LONGBLOB NOT NULL,
    status          VARCHAR(8) NOT NULL DEFAULT 'pending',
    ready           TINYINT AS (IF(status IN ('pending', 'failed'), 1, 0)) PERSISTENT,
    attempts        INT NOT NULL DEFAULT 0,
    max_attempts    INT NOT NULL DEFAULT 1,
    run_at          DOUBLE NOT NULL,
    priority        INT NOT NULL DEFAULT 0,
    idempotency_key VARCHAR(255) NULL,
    meta            LONGTEXT NULL,
    lock_by         VARCHAR(191) NULL,
    lock_at         DOUBLE NULL,
    last_error      LONGTEXT NULL,
    result          LONGTEXT NULL,
    created_at      DOUBLE NOT NULL,
    done_at         DOUBLE NULL,
    PRIMARY KEY (id),
    UNIQUE KEY {prefix}tasks_idempotency (queue, idempotency_key),
    KEY {prefix}tasks_ready (queue, ready, priority DESC, run_at),
    KEY {prefix}tasks_status (queue, status, done_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS {prefix}workers (
    id         VARCHAR(191) NOT NULL,
    name       VARCHAR(191) NOT NULL,
    queue      VARCHAR(191) NOT NULL,
    host       VARCHAR(255) NOT NULL,
    pid        INT NOT NULL,
    started_at DOUBLE NOT NULL,
    last_seen  DOUBLE NOT NULL,
    layers     LONGTEXT NULL,
    running    INT NULL,
    PRIMARY KEY (id),
    KEY {prefix}workers_queue (queue, last_seen)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
