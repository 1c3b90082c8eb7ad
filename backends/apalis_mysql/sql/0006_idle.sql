-- Schema version 6: hand-over. A polling worker whose claim came back short is listed here until
-- `until` (refreshed by its idle claims) with its free slots (`free`) and the connection id of
-- its process's wake-up listener for the queue. A push of one task due now claims it for the
-- most recently listed worker with a free slot, in the push's own transaction, adds its id to
-- that worker's `handed` (a JSON array) and ends that listener's sleep; the worker reads the task
-- by a plain read: no claim of its own, so no redo-log flush, between push and start.
CREATE TABLE IF NOT EXISTS {prefix}idle (
    worker_id VARCHAR(191) NOT NULL,
    queue     VARCHAR(191) NOT NULL,
    listener  BIGINT NOT NULL,
    until     DOUBLE NOT NULL,
    free      INT NOT NULL,
    handed    LONGTEXT NULL,
    PRIMARY KEY (worker_id),
    KEY {prefix}idle_queue (queue, until)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
