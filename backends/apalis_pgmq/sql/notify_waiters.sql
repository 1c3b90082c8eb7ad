-- Waiters of the queue look again when tasks of it that someone waits for (`ids`) become final
-- in this transaction: an index probe when nobody waits, and no NOTIFY.
SELECT pg_notify('apalis_pgmq', 'f ' || %(queue)s::text)
WHERE EXISTS (
    SELECT 1 FROM apalis_pgmq.waits
    WHERE queue = %(queue)s AND msg_id = ANY(%(ids)s::bigint[]) AND until > now()
)
