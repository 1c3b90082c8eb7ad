-- Schema version 6: the tasks table is vacuumed often. Every claim and acknowledgement leaves a
-- dead row version, and the claim's index (tasks_ready) keeps an entry for each task it handed
-- out until a vacuum removes it: a claim walks them all, in order, before the first ready task
-- (measured: 2 index pages read at 0 tasks handed out, 69 at 8,000, 135 at 16,000; 0.2 ms ->
-- 2.6 ms on a loaded machine; 2 pages again after a VACUUM, which took 50 ms). The server's
-- default waits for a fifth of the table to be dead; these settings vacuum the table after
-- about 1,000 dead rows (1% of a large one) at every autovacuum round, without the cost pauses.
ALTER TABLE {schema}.tasks SET (
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);
