-- name: vacuum_due
-- Whether the store should vacuum its tasks table itself: the server's autovacuum is off (it
-- never will), 10,000 dead row versions have piled up, and no vacuum ran in the last 10 s; and
-- whether it should analyze it: the table holds more than twice the rows its statistics counted
-- (the last ANALYZE or VACUUM), and a thousand more. The limited claim (`limit_claim`) keeps its
-- plans for the life of a connection, and plans made while a worker waited on a near-empty table
-- stay when a backlog arrives: 640 tasks a second where fresh ones claim 3,400 (bench/README.md,
-- session 14); an ANALYZE (or a VACUUM) of the table makes them again. The server's autovacuum
-- would analyze the table within its naptime (a minute by default), or never when it is off.
SELECT current_setting('autovacuum') = 'off'
       AND coalesce(s.n_dead_tup, 0) >= 10000
       AND coalesce(greatest(s.last_vacuum, s.last_autovacuum), '-infinity') < now() - interval '10 seconds',
       coalesce(s.n_live_tup, 0) > 2 * greatest(c.reltuples, 0) + 1000
FROM pg_stat_user_tables AS s JOIN pg_class AS c ON c.oid = s.relid
WHERE s.relid = to_regclass('{schema}.tasks')

-- name: vacuum
-- SKIP_LOCKED: a vacuum already running (another queue's sweeper, the server's) is not waited for.
VACUUM (SKIP_LOCKED) {schema}.tasks

-- name: analyze
-- SKIP_LOCKED: an ANALYZE or VACUUM already running is not waited for.
ANALYZE (SKIP_LOCKED) {schema}.tasks
