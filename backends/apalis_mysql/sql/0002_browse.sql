-- Schema version 2: pages of tasks by keyset (the board). Pages of one status are read in
-- (run_at, id) order from this index, starting past the last task seen. Tasks finished per
-- minute are read from the status index, which ends with done_at.
ALTER TABLE {prefix}tasks ADD KEY {prefix}tasks_by_status (queue, status, run_at, id);
