-- What apalis keeps beside pgmq, in its own schema: pgmq has no worker registry and no
-- idempotency keys. The pgmq queue and archive tables themselves are never altered (a queue a
-- worker with a keyed global limit claims from gets one index more: see limits.sql). Every
-- statement can run again: the schema is brought up to date at each open, as pgmq's own
-- install script creates what is missing.
SELECT pg_advisory_xact_lock(hashtext('apalis_pgmq.schema'));
CREATE SCHEMA IF NOT EXISTS apalis_pgmq;
CREATE TABLE IF NOT EXISTS apalis_pgmq.workers (
    id text PRIMARY KEY,
    name text NOT NULL,
    queue text NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    started_at double precision NOT NULL,
    last_seen double precision NOT NULL,
    layers jsonb NOT NULL,
    running integer
);
CREATE TABLE IF NOT EXISTS apalis_pgmq.keys (
    queue text NOT NULL,
    key text NOT NULL,
    msg_id bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, key)
);
-- A queue's control record: pgmq has no paused flag. The claim (`read`) reads it.
CREATE TABLE IF NOT EXISTS apalis_pgmq.queues (
    queue text PRIMARY KEY,
    paused boolean NOT NULL DEFAULT false
);
-- Who waits for which task: a transaction that ends one of these tasks sends the NOTIFY that
-- wakes its waiters (no NOTIFY at all while nobody waits). A row outlives a waiter that died
-- only until `until`.
CREATE TABLE IF NOT EXISTS apalis_pgmq.waits (
    id bigserial PRIMARY KEY,
    queue text NOT NULL,
    msg_id bigint NOT NULL,
    until timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS waits_task ON apalis_pgmq.waits (queue, msg_id);
-- The tasks pushed with a unique key, by queue and key: which message holds the key until when
-- (NULL: no end). Whether it still holds it is read from the message itself (its status in
-- the queue or archive table); a row whose message is gone or whose window ended is dropped by
-- the heartbeat (the oldest first). A push of a key takes a transaction-scoped lock of its
-- queue and key.
CREATE TABLE IF NOT EXISTS apalis_pgmq.uniques (
    queue text NOT NULL,
    key text NOT NULL,
    msg_id bigint NOT NULL,
    until double precision,
    PRIMARY KEY (queue, key, msg_id)
);
CREATE INDEX IF NOT EXISTS uniques_by_age ON apalis_pgmq.uniques (queue, msg_id);
-- A global rate's state per queue and key (apalis_cli.fleet): its theoretical arrival time
-- (GCRA). A time in the past means a full burst is available, so old rows are dropped at will.
CREATE TABLE IF NOT EXISTS apalis_pgmq.limit_rates (
    queue text NOT NULL,
    state text NOT NULL,
    tat   float8 NOT NULL,
    PRIMARY KEY (queue, state)
);
-- Where the last sweep for lost messages of a queue with a key index stopped (limits.sql's
-- `limit_sweep`): the next one reads pgmq's vt index from there.
CREATE TABLE IF NOT EXISTS apalis_pgmq.limit_sweeps (
    queue    text PRIMARY KEY,
    swept_to timestamptz NOT NULL
);
-- How many starts a rate state `tat` allows at `now` (apalis_cli.fleet.rates.allowance), for the
-- queues' limited claims (limits.sql's `create_limit_claim`).
CREATE OR REPLACE FUNCTION apalis_pgmq.limit_allowance(tat float8, now float8, rate int, per float8)
RETURNS int LANGUAGE sql IMMUTABLE AS $$
    SELECT greatest(0, least(rate, floor((per - greatest(coalesce(tat, now) - now, 0)) / (per / rate) + 1e-9)))::int
$$;
-- A message a limited claim took, as earlier versions' claim functions collect them (this one
-- returns them as it takes them; kept for a daemon of an earlier version on the same database):
-- a table that never holds a row, for its row type, which CREATE TABLE IF NOT EXISTS makes once
-- (a queue table's own row type would go with pgmq.drop_queue, and fail the function's next
-- call in every session that had run it).
CREATE TABLE IF NOT EXISTS apalis_pgmq.claimed (
    msg_id bigint,
    read_ct integer,
    enqueued_at float8,
    message jsonb,
    apalis jsonb
);
