-- Unique pushes (apalis_pgmq.unique): the holders of a key are listed in apalis_pgmq.uniques,
-- and whether one holds it now is read from its message (its status in the queue table, or in
-- the archive once it ended).

-- name: unique_lock
SELECT pg_advisory_xact_lock(hashtext('apalis_pgmq:unique:' || %(queue)s), hashtext(%(key)s))

-- name: unique_holder
-- The newest message holding the key in one of the push's states, within its window.
SELECT u.msg_id FROM apalis_pgmq.uniques AS u
WHERE u.queue = %(queue)s AND u.key = %(key)s AND (u.until IS NULL OR u.until > %(now)s)
  AND coalesce(
      (SELECT {status} FROM {q} WHERE msg_id = u.msg_id),
      (SELECT {archived} FROM {a} WHERE msg_id = u.msg_id)
  ) = ANY(%(states)s::text[])
ORDER BY u.msg_id DESC
LIMIT 1

-- name: unique_hold
INSERT INTO apalis_pgmq.uniques (queue, key, msg_id, until) VALUES (%(queue)s, %(key)s, %(id)s, %(until)s)
ON CONFLICT DO NOTHING

-- name: unique_extend
UPDATE apalis_pgmq.uniques SET until = %(until)s WHERE queue = %(queue)s AND key = %(key)s AND msg_id = %(id)s

-- name: unique_replace
-- A pending holder (never read) takes the new push's message, headers and run time; one that
-- runs or ran is left alone.
UPDATE {q}
SET message = %(message)s::jsonb, headers = %(headers)s::jsonb, vt = to_timestamp(%(run_at)s)
WHERE msg_id = %(id)s AND read_ct = 0

-- name: unique_forget
-- Among the queue's 1,000 oldest holders, those that hold nothing any more: their window
-- ended, or their message is gone (purged with the archive, deleted).
DELETE FROM apalis_pgmq.uniques AS u
WHERE u.queue = %(queue)s
  AND u.msg_id = ANY(ARRAY(
      SELECT msg_id FROM apalis_pgmq.uniques WHERE queue = %(queue)s ORDER BY msg_id LIMIT 1000))
  AND (u.until < extract(epoch FROM now())
       OR (NOT EXISTS (SELECT 1 FROM {q} WHERE msg_id = u.msg_id)
           AND NOT EXISTS (SELECT 1 FROM {a} WHERE msg_id = u.msg_id)))
