-- Wake the pollers of a queue in every process listening on this schema's channel.
SELECT pg_notify({channel}, %(queue)s)
