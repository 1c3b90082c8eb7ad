-- Schema version 4: the control plane. A task may end `cancelled`; a running task keeps the
-- cancel requested of it (`cancel_reason`) until its worker stops the run; `waited` marks a task
-- someone waits for, so its end is NOTIFYd (the acks of other tasks send nothing); a queue's
-- pause is a row of `queues`, read by every claim. Adding the columns rewrites no row.
ALTER TABLE {schema}.tasks DROP CONSTRAINT IF EXISTS tasks_status_check;
ALTER TABLE {schema}.tasks ADD CONSTRAINT tasks_status_check
    CHECK (status IN ('pending', 'running', 'done', 'failed', 'killed', 'cancelled'));
ALTER TABLE {schema}.tasks ADD COLUMN IF NOT EXISTS cancel_reason text;
ALTER TABLE {schema}.tasks ADD COLUMN IF NOT EXISTS waited boolean NOT NULL DEFAULT false;

-- Retention purges cancelled tasks as it does done and killed ones.
DROP INDEX IF EXISTS {schema}.tasks_finished;
CREATE INDEX tasks_finished ON {schema}.tasks (queue, done_at) WHERE status IN ('done', 'killed', 'cancelled');

CREATE TABLE IF NOT EXISTS {schema}.queues (
    queue      text PRIMARY KEY,
    paused     boolean NOT NULL DEFAULT false,
    changed_at float8 NOT NULL
);
