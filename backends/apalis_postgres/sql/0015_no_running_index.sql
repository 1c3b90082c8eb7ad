-- Schema version 15: no index of running tasks apart. A claim's row version (status 'running')
-- was entered in the primary key, `tasks_by_status` and `tasks_running`; every lookup of running
-- tasks names their queue and status ('running'), so `tasks_by_status` (queue, status, ...)
-- finds them in the same range: the orphan sweep, a worker's lost claims, a limited claim's
-- running counts. One index entry fewer per claim: the server's CPU for an acknowledgement of 50
-- with its claim of 50, call by call on one backend, 44.7 -> 42.5 us a task (bench/README.md).
DROP INDEX IF EXISTS {schema}.tasks_running;
