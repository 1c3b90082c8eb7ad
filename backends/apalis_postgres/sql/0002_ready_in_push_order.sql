-- Tasks of equal priority and run_at (pushed together with one run_at) are claimed in id order,
-- which is the order they were pushed in: the claim walks this index, so it carries the id too
-- (sorting a large group of ties after the index scan costs a claim milliseconds).
DROP INDEX IF EXISTS {schema}.tasks_ready;

CREATE INDEX tasks_ready ON {schema}.tasks (queue, priority DESC, run_at, id)
    WHERE status IN ('pending', 'failed');
