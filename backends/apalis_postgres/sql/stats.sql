-- Per status: how many, and how many wait for a run_at still to come.
SELECT status, count(*),
       count(*) FILTER (WHERE status IN ('pending', 'failed') AND run_at > extract(epoch FROM now())::float8)
FROM {schema}.tasks WHERE queue = %(queue)s GROUP BY status
