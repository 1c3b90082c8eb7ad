SELECT status, count(*) FROM {schema}.tasks WHERE queue = %(queue)s GROUP BY status
