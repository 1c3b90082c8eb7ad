-- Schema version 2: pages of tasks by keyset, and tasks finished per minute (the board).

-- The status index gains `id`, so a page of one status ordered by (run_at, id) is read from it in
-- order, starting past the last task seen, without sorting ties on run_at. Still the one index
-- for the sweep, retention, listing and counting.
DROP INDEX IF EXISTS {prefix}tasks_status;
CREATE INDEX IF NOT EXISTS {prefix}tasks_by_status ON {prefix}tasks (queue, status, run_at, id);

-- Tasks finished since a time (done, killed): only finished tasks are in it, and a task enters
-- once, when it finishes.
CREATE INDEX IF NOT EXISTS {prefix}tasks_finished ON {prefix}tasks (queue, done_at) WHERE done_at IS NOT NULL;
