-- Schema version 7: a claim moves a task's entry in two secondary indexes, not three. The status
-- index `(queue, status, done_at)` moved on every claim (pending -> running) as well as on every
-- acknowledgement. What it served is served by `(queue, status, run_at, id)`, which takes its name
-- (the running tasks by status, for limits and recovery, and the board's pages), and by
-- `(queue, done_at)` (the tasks finished since a time: the board's per-minute counts and the
-- retention purge), which a claim leaves alone (done_at stays NULL). One statement, so a daemon
-- of the previous version that names `tasks_status` finds it throughout. Per task claimed,
-- 18-25 -> 12-14 buffer-pool page reads and 9-10 -> 6-7 page writes.
ALTER TABLE {prefix}tasks
    DROP KEY {prefix}tasks_status,
    RENAME KEY {prefix}tasks_by_status TO {prefix}tasks_status,
    ADD KEY {prefix}tasks_done (queue, done_at);
