-- Tasks of a queue (optionally of one status), oldest run_at first.
SELECT {columns} FROM {schema}.tasks AS t
WHERE queue = %(queue)s AND (%(status)s::text IS NULL OR status = %(status)s::text)
ORDER BY run_at, id
LIMIT %(limit)s OFFSET %(offset)s
