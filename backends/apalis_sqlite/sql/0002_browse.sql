-- Schema version 2: pages of tasks by keyset, and tasks finished per minute (the board).

-- The status index gains `id`, so a page of one status ordered by (run_at, id) is read from it in
-- order, starting past the last task seen, without sorting ties on run_at; and `done_at`, so the
-- tasks finished per minute are counted from the index alone. Still the one index for the sweep,
-- retention, listing and counting: a status change rewrites its entry anyway, so the wider key
-- costs an acknowledgement nothing more (an index of its own on done_at would).
DROP INDEX IF EXISTS {prefix}tasks_status;
CREATE INDEX IF NOT EXISTS {prefix}tasks_by_status ON {prefix}tasks (queue, status, run_at, id, done_at);
