-- Schema version 2: pages of tasks by keyset (the board). Pages of one status are read in
-- (run_at, id) order from this index, starting past the last task seen; it also counts per
-- status from the index alone. It replaces the (queue, run_at) index, which served the listing
-- of every status (now merged from one range per status), so a write still updates as many indexes.
CREATE INDEX IF NOT EXISTS tasks_by_status ON {schema}.tasks (queue, status, run_at, id);
DROP INDEX IF EXISTS {schema}.tasks_by_run_at;
