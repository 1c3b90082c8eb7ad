-- name: vacuum_due
-- Whether the store should vacuum its tasks table itself: the server's autovacuum is off (it
-- never will), 10,000 dead row versions have piled up, and no vacuum ran in the last 10 s.
SELECT current_setting('autovacuum') = 'off'
   AND coalesce(n_dead_tup, 0) >= 10000
   AND coalesce(greatest(last_vacuum, last_autovacuum), '-infinity') < now() - interval '10 seconds'
FROM pg_stat_user_tables
WHERE relid = to_regclass('{schema}.tasks')

-- name: vacuum
-- SKIP_LOCKED: a vacuum already running (another queue's sweeper, the server's) is not waited for.
VACUUM (SKIP_LOCKED) {schema}.tasks
