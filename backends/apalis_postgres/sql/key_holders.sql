-- The ids that hold some idempotency keys of a queue.
SELECT idempotency_key, id FROM {schema}.tasks WHERE queue = %(queue)s AND idempotency_key = ANY(%(keys)s::text[])
