-- Schema version 7: pushes hand their task to an idle worker (apalis_postgres.handing). A
-- polling worker whose claim found nothing is listed here; a push whose task would be claimed
-- next claims it for the first listed worker in its own statement and NOTIFYs the task on the
-- channel of that worker's process, so the worker starts it without a claim round trip.
--
-- UNLOGGED: a listing is worth nothing after a crash (every worker claims again when it
-- reconnects), and a claim that lists or unlists its worker then writes no WAL for it.
CREATE UNLOGGED TABLE IF NOT EXISTS {schema}.idle_workers (
    worker  text PRIMARY KEY,
    queue   text NOT NULL,
    channel text NOT NULL,            -- the LISTEN channel of the worker's process
    until   float8 NOT NULL,          -- listed idle until then; 0 once handed a task or busy
    handed  text                      -- the id of the last task handed to it
);

-- A push looks for the first listing of its queue still in its time.
CREATE INDEX IF NOT EXISTS idle_workers_queue ON {schema}.idle_workers (queue, until);
