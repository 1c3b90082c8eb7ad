-- Schema version 3: the control plane. A task may end `cancelled` (a longer status); a running
-- task keeps the cancel requested of it (`cancel_reason`) until its worker stops the run; a
-- queue's pause is a row of `queues`, read by every claim.
ALTER TABLE {prefix}tasks
    MODIFY status VARCHAR(16) NOT NULL DEFAULT 'pending',
    ADD COLUMN cancel_reason LONGTEXT NULL;

CREATE TABLE IF NOT EXISTS {prefix}queues (
    queue      VARCHAR(191) NOT NULL,
    paused     TINYINT NOT NULL DEFAULT 0,
    changed_at DOUBLE NOT NULL,
    PRIMARY KEY (queue)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
