-- Named statements of the pgmq backend. `{q}` and `{a}` stand for the queue's pgmq tables
-- (pgmq.q_<name> and pgmq.a_<name>), `{status}` for the status expression below.

-- name: installed
SELECT to_regprocedure('pgmq.read(text,integer,integer,jsonb)') IS NOT NULL,
       to_regclass('pgmq.notify_insert_throttle') IS NOT NULL

-- name: lock_queue
SELECT pgmq.acquire_queue_lock(%(queue)s)

-- name: create_queue
SELECT pgmq.create(%(queue)s)

-- name: notify_enabled
SELECT EXISTS (SELECT 1 FROM pgmq.notify_insert_throttle WHERE queue_name = %(queue)s)

-- name: enable_notify
SELECT pgmq.enable_notify_insert(%(queue)s, %(throttle_ms)s)

-- name: send_now
-- Messages and headers arrive as one JSON array each: cheaper to send than a text[] of JSON.
SELECT pgmq.send_batch(%(queue)s,
    ARRAY(SELECT e FROM jsonb_array_elements(%(messages)s::jsonb) WITH ORDINALITY AS t(e, n) ORDER BY n),
    ARRAY(SELECT e FROM jsonb_array_elements(%(headers)s::jsonb) WITH ORDINALITY AS t(e, n) ORDER BY n))

-- name: send_at
SELECT pgmq.send_batch(%(queue)s,
    ARRAY(SELECT e FROM jsonb_array_elements(%(messages)s::jsonb) WITH ORDINALITY AS t(e, n) ORDER BY n),
    ARRAY(SELECT e FROM jsonb_array_elements(%(headers)s::jsonb) WITH ORDINALITY AS t(e, n) ORDER BY n),
    to_timestamp(%(at)s))

-- name: send_each
-- Tasks due at different times: pgmq.send once per message, still one round trip.
SELECT pgmq.send(%(queue)s, m.e, h.e, to_timestamp(t.at))
FROM jsonb_array_elements(%(messages)s::jsonb) WITH ORDINALITY AS m(e, n)
JOIN jsonb_array_elements(%(headers)s::jsonb) WITH ORDINALITY AS h(e, n) USING (n)
JOIN unnest(%(ats)s::float8[]) WITH ORDINALITY AS t(at, n) USING (n)
ORDER BY n

-- name: read
-- The claim: up to qty messages read as pgmq.read reads them (oldest msg_id first, vt moved by
-- the lease, read_ct + 1 counting the attempts, last_read_at: `_read` and `_claimed` of
-- limits.sql), by pgmq.read's own statement with the pause read in the same snapshot: a paused
-- queue's claim reads none. pgmq.read itself reads the messages in a snapshot of its own, later
-- than the one its arguments are read in, so a pause and a push that both committed in between
-- met in one claim, and the pushed task ran on a paused queue. "Ready" is what was due when the
-- claim began (now(), before its snapshot), not pgmq.read's clock_timestamp(): a message that
-- came due after a pause the claim did not see waits for the next claim, which sees the pause.
-- now() is read once, as a parameter the planner cannot see: the plan stays pgmq.read's (along
-- msg_id), where with `vt <= now()` a plan cached while a delayed backlog was not due sorted the
-- whole backlog at every claim once it was (46 ms a claim at 50,000 messages).
UPDATE {q} AS m
{_read}
WHERE m.msg_id = ANY(ARRAY(
    SELECT msg_id FROM {q}
    WHERE vt <= (SELECT now()) AND NOT EXISTS (SELECT 1 FROM apalis_pgmq.queues WHERE queue = %(queue)s AND paused)
    ORDER BY msg_id
    LIMIT %(qty)s
    FOR UPDATE SKIP LOCKED
))
{_claimed}

-- name: extend
-- The heartbeat of running tasks: every lease of this worker extended in one call; the runs whose
-- cancel was requested are named (the worker is told again, in case the NOTIFY was missed).
SELECT msg_id, headers -> 'apalis' ->> 'cancel'
FROM pgmq.set_vt(%(queue)s, %(ids)s::bigint[], clock_timestamp() + make_interval(secs => %(lease)s))
WHERE headers -> 'apalis' ? 'cancel'

-- name: archive
-- Done (or killed, cancelled): archive only the messages this run still holds, i.e. nobody read
-- them again since (same read_ct); FOR UPDATE keeps a concurrent pgmq.read off them until we
-- commit. Their waiters, if any, are woken (one statement: no transaction of its own needed).
SELECT count(*), ({notify_waiters}) FROM pgmq.archive(%(queue)s, ARRAY(
    SELECT m.msg_id FROM {q} m
    JOIN unnest(%(ids)s::bigint[], %(cts)s::int[]) AS u(id, ct) ON m.msg_id = u.id AND m.read_ct = u.ct
    FOR UPDATE OF m))

-- name: annotate
-- What pgmq has no column for (error, result, killed, the attempt that failed) goes into the
-- message's headers under "apalis", before the message is archived or made visible again.
-- Foreign headers that are not an object (pgmq allows any jsonb) give way to ours.
UPDATE {q} m
SET headers = CASE WHEN jsonb_typeof(m.headers) = 'object' THEN m.headers ELSE '{}' END
    || jsonb_build_object('apalis',
        CASE WHEN jsonb_typeof(m.headers -> 'apalis') = 'object' THEN m.headers -> 'apalis' ELSE '{}' END || u.patch)
FROM (
    SELECT u.id, u.ct, p.e AS patch
    FROM unnest(%(ids)s::bigint[], %(cts)s::int[]) WITH ORDINALITY AS u(id, ct, n)
    JOIN jsonb_array_elements(%(patches)s::jsonb) WITH ORDINALITY AS p(e, n) USING (n)
) AS u
WHERE m.msg_id = u.id AND m.read_ct = u.ct

-- name: set_vt
-- A retry: the message becomes visible again at its run_at (pgmq.set_vt), still held by us.
SELECT count(*) FROM (
    SELECT pgmq.set_vt(%(queue)s, u.id, to_timestamp(u.at))
    FROM unnest(%(ids)s::bigint[], %(cts)s::int[], %(ats)s::float8[]) AS u(id, ct, at)
    WHERE EXISTS (SELECT 1 FROM {q} m WHERE m.msg_id = u.id AND m.read_ct = u.ct)
) AS s

-- name: release
-- A run given back unstarted: visible now and the attempt not counted. pgmq has no call that
-- lowers read_ct, so this one writes the queue table directly. A message that was lost when this
-- run took it (an unlimited claim takes those as they are) is marked lost again (limits.sql's
-- `_claimable`: a limited claim of the queue finds it at once, with no sweep).
UPDATE {q} m SET vt = clock_timestamp(), read_ct = greatest(m.read_ct - 1, 0),
    headers = CASE
        WHEN m.read_ct > 1 AND coalesce(m.headers -> 'apalis' ->> 'failed_ct', '') <> (m.read_ct - 1)::text
             AND coalesce(m.headers -> 'apalis' ->> 'lost', '') <> (m.read_ct - 1)::text
        THEN CASE WHEN jsonb_typeof(m.headers) = 'object' THEN m.headers ELSE '{}' END
            || jsonb_build_object('apalis',
                CASE WHEN jsonb_typeof(m.headers -> 'apalis') = 'object' THEN m.headers -> 'apalis' ELSE '{}' END
                || jsonb_build_object('lost', m.read_ct - 1))
        ELSE m.headers
    END
FROM unnest(%(ids)s::bigint[], %(cts)s::int[]) AS u(id, ct)
WHERE m.msg_id = u.id AND m.read_ct = u.ct

-- name: purge_archive
DELETE FROM {a} WHERE archived_at < now() - make_interval(secs => %(retention)s)

-- name: purge_keys
DELETE FROM apalis_pgmq.keys WHERE queue = %(queue)s AND created_at < now() - make_interval(secs => %(retention)s)

-- name: upsert_worker
INSERT INTO apalis_pgmq.workers (id, name, queue, host, pid, started_at, last_seen, layers, running)
VALUES (%(id)s, %(name)s, %(queue)s, %(host)s, %(pid)s, %(started_at)s, extract(epoch FROM now()), %(layers)s, %(running)s)
ON CONFLICT (id) DO UPDATE SET last_seen = EXCLUDED.last_seen, running = EXCLUDED.running

-- name: forget_stale_workers
DELETE FROM apalis_pgmq.workers WHERE queue = %(queue)s AND last_seen < extract(epoch FROM now()) - %(stale_after)s

-- name: delete_worker
DELETE FROM apalis_pgmq.workers WHERE id = %(id)s

-- name: list_workers
SELECT id, name, queue, host, pid, started_at, last_seen, layers, running
FROM apalis_pgmq.workers WHERE queue = %(queue)s ORDER BY started_at

-- name: claim_keys
INSERT INTO apalis_pgmq.keys (queue, key) SELECT %(queue)s, k FROM unnest(%(keys)s::text[]) AS k
ON CONFLICT DO NOTHING RETURNING key

-- name: bind_keys
UPDATE apalis_pgmq.keys k SET msg_id = u.id
FROM unnest(%(keys)s::text[], %(ids)s::bigint[]) AS u(key, id)
WHERE k.queue = %(queue)s AND k.key = u.key

-- name: known_keys
SELECT key, msg_id FROM apalis_pgmq.keys WHERE queue = %(queue)s AND key = ANY(%(keys)s::text[])

-- name: tasks
-- Inspection reads the queue and archive tables: a SELECT changes nothing, unlike pgmq.read.
SELECT msg_id, read_ct, enqueued_at, run_at, message, apalis, status, done_at FROM ({all_tasks}) AS t
WHERE (%(status)s::text IS NULL OR status = %(status)s) AND (%(id)s::bigint IS NULL OR msg_id = %(id)s)
ORDER BY run_at, msg_id
LIMIT %(limit)s OFFSET %(offset)s

-- name: find_exact
-- The board's search: the task whose id or idempotency key is the text.
SELECT msg_id, read_ct, enqueued_at, run_at, message, apalis, status, done_at FROM ({all_tasks}) AS t
WHERE msg_id = %(id)s OR apalis ->> 'key' = %(search)s

-- name: page_forward
-- The board's pages by keyset (run_at, msg_id): no OFFSET. pgmq keeps no status column and no
-- index on this key, so each page scans both tables once (and sorts only the page's top rows).
SELECT msg_id, read_ct, enqueued_at, run_at, message, apalis, status, done_at FROM ({all_tasks}) AS t
WHERE (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(search)s::text IS NULL OR strpos(lower(coalesce(apalis ->> 'error', '')), lower(%(search)s)) > 0)
  AND (run_at, msg_id) > (%(run_at)s, %(id)s)
ORDER BY run_at, msg_id
LIMIT %(limit)s

-- name: page_backward
SELECT msg_id, read_ct, enqueued_at, run_at, message, apalis, status, done_at FROM ({all_tasks}) AS t
WHERE (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(search)s::text IS NULL OR strpos(lower(coalesce(apalis ->> 'error', '')), lower(%(search)s)) > 0)
  AND (run_at, msg_id) < (%(run_at)s, %(id)s)
ORDER BY run_at DESC, msg_id DESC
LIMIT %(limit)s

-- name: oldest_waiting
-- The board's activity: the oldest due run_at of a task waiting to run (pending, or failed and
-- waiting for its retry).
SELECT extract(epoch FROM min(vt))::float8 FROM {q}
WHERE vt <= clock_timestamp() AND {status} IN ('pending', 'failed')

-- name: finished_per_minute
SELECT floor(extract(epoch FROM archived_at) / 60)::bigint, {archived}, count(*)
FROM {a} WHERE archived_at >= to_timestamp(%(since)s)
GROUP BY 1, 2

-- name: stats
-- Per status: how many, and how many wait for a time still to come (a delayed send, or a retry
-- in its backoff: hidden until vt without a live lease).
SELECT status, count(*), count(*) FILTER (WHERE status IN ('pending', 'failed') AND vt > clock_timestamp())
FROM (SELECT {status} AS status, vt FROM {q}) AS t GROUP BY 1
UNION ALL
SELECT {archived}, count(*), 0
FROM {a} GROUP BY 1

-- name: retry_failed
UPDATE {q} SET read_ct = 0, vt = clock_timestamp(), headers = headers #- '{apalis,failed_ct}' #- '{apalis,cancel}'
WHERE msg_id = ANY(%(ids)s::bigint[]) AND {status} = 'failed'
RETURNING msg_id

-- name: retry_killed
-- pgmq has no "unarchive": a killed or cancelled message goes back into the queue table with its
-- own id.
WITH moved AS (
    DELETE FROM {a} WHERE msg_id = ANY(%(ids)s::bigint[]) AND headers -> 'apalis' ->> 'status' IN ('killed', 'cancelled')
    RETURNING msg_id, enqueued_at, message, headers
)
INSERT INTO {q} (msg_id, read_ct, enqueued_at, vt, message, headers) OVERRIDING SYSTEM VALUE
SELECT msg_id, 0, enqueued_at, clock_timestamp(), message,
       headers #- '{apalis,status}' #- '{apalis,failed_ct}' #- '{apalis,cancel}'
FROM moved
RETURNING msg_id

-- name: mark
-- A patch merged into the "apalis" headers of the given messages that are in one of `statuses`
-- now (an operator's kill or cancel; the UPDATE waits for a claim that holds the row, then sees
-- the claim's result, so a claim and a cancel never both win).
UPDATE {q} m
SET headers = CASE WHEN jsonb_typeof(m.headers) = 'object' THEN m.headers ELSE '{}' END
    || jsonb_build_object('apalis',
        CASE WHEN jsonb_typeof(m.headers -> 'apalis') = 'object' THEN m.headers -> 'apalis' ELSE '{}' END
        || %(patch)s::jsonb)
WHERE m.msg_id = ANY(%(ids)s::bigint[]) AND {status} = ANY(%(statuses)s::text[])
RETURNING m.msg_id

-- name: archive_marked
-- The messages `mark` made killed or cancelled go to the archive (same transaction); their
-- waiters, if any, are woken.
SELECT count(*), ({notify_waiters}) FROM pgmq.archive(%(queue)s, ARRAY(
    SELECT msg_id FROM {q} WHERE msg_id = ANY(%(ids)s::bigint[]) AND headers -> 'apalis' ->> 'status' IN ('killed', 'cancelled')
    FOR UPDATE))

-- name: request_cancel
-- A running task: the request (its reason) is kept in its headers, for the heartbeat of the
-- worker that runs it, and that worker is told at once through the control channel.
WITH requested AS (
    UPDATE {q} m
    SET headers = CASE WHEN jsonb_typeof(m.headers) = 'object' THEN m.headers ELSE '{}' END
        || jsonb_build_object('apalis',
            CASE WHEN jsonb_typeof(m.headers -> 'apalis') = 'object' THEN m.headers -> 'apalis' ELSE '{}' END
            || jsonb_build_object('cancel', %(reason)s::text))
    WHERE m.msg_id = ANY(%(ids)s::bigint[]) AND {status} = 'running'
    RETURNING m.msg_id
)
SELECT msg_id, pg_notify('apalis_pgmq', concat_ws(' ', 'c', %(queue)s::text, msg_id, %(told)s::text))
FROM requested

-- name: cancel_instead
-- Runs that would run again (a retry, a release) but whose cancel was requested meanwhile end
-- cancelled instead, with the requested reason.
UPDATE {q} m
SET headers = m.headers || jsonb_build_object('apalis', (m.headers -> 'apalis')
    || jsonb_build_object('status', 'cancelled', 'error', m.headers -> 'apalis' -> 'cancel'))
FROM unnest(%(ids)s::bigint[], %(cts)s::int[]) AS u(id, ct)
WHERE m.msg_id = u.id AND m.read_ct = u.ct AND m.headers -> 'apalis' ? 'cancel'
RETURNING m.msg_id

-- name: final_status
SELECT msg_id, {archived} FROM {a} WHERE msg_id = ANY(%(ids)s::bigint[])

-- name: wait_begin
INSERT INTO apalis_pgmq.waits (queue, msg_id, until)
VALUES (%(queue)s, %(id)s, now() + make_interval(secs => %(within)s))
RETURNING id

-- name: wait_settle
-- Waits for a transaction that is archiving the task right now (it holds the row) to commit:
-- such an ack may have looked for waiters before this one's row existed, and sends no NOTIFY.
SELECT 1 FROM {q} WHERE msg_id = %(id)s FOR SHARE

-- name: wait_end
DELETE FROM apalis_pgmq.waits WHERE id = %(wait)s

-- name: forget_waits
DELETE FROM apalis_pgmq.waits WHERE until < now()

-- name: is_paused
SELECT coalesce((SELECT paused FROM apalis_pgmq.queues WHERE queue = %(queue)s), false)

-- name: set_paused
WITH saved AS (
    INSERT INTO apalis_pgmq.queues (queue, paused) VALUES (%(queue)s, %(paused)s)
    ON CONFLICT (queue) DO UPDATE SET paused = EXCLUDED.paused
    RETURNING paused
)
SELECT pg_notify('apalis_pgmq', concat_ws(' ', 'p', %(queue)s::text, CASE WHEN paused THEN 1 ELSE 0 END)) FROM saved

-- name: bulk_select
-- The tasks a bulk action takes: the queue table and the archive by their status, the time of
-- their last change (archived, else enqueued), their error; oldest first.
SELECT src, msg_id FROM (
    SELECT 'q' AS src, msg_id, enqueued_at AS changed, {status} AS status, headers -> 'apalis' ->> 'error' AS error
    FROM {q}
    UNION ALL
    SELECT 'a', msg_id, archived_at, {archived}, headers -> 'apalis' ->> 'error'
    FROM {a}
) AS t
WHERE status = ANY(%(statuses)s::text[])
  AND (%(since)s::float8 IS NULL OR changed >= to_timestamp(%(since)s))
  AND (%(until)s::float8 IS NULL OR changed <= to_timestamp(%(until)s))
  AND (%(error)s::text IS NULL OR strpos(lower(coalesce(error, '')), lower(%(error)s)) > 0)
ORDER BY changed, msg_id
LIMIT %(limit)s

-- name: bulk_delete_live
SELECT count(*) FROM pgmq.delete(%(queue)s, ARRAY(
    SELECT msg_id FROM {q} WHERE msg_id = ANY(%(ids)s::bigint[]) AND {status} = ANY(%(statuses)s::text[]) FOR UPDATE))

-- name: bulk_delete_archived
WITH gone AS (
    DELETE FROM {a} WHERE msg_id = ANY(%(ids)s::bigint[]) AND {archived} = ANY(%(statuses)s::text[]) RETURNING 1
)
SELECT count(*) FROM gone

-- name: purge_queue_status
SELECT count(*) FROM pgmq.delete(%(queue)s, ARRAY(
    SELECT msg_id FROM {q} WHERE {status} = %(status)s AND enqueued_at <= to_timestamp(%(cutoff)s)))

-- name: purge_archive_status
WITH gone AS (
    DELETE FROM {a}
    WHERE {archived} = %(status)s
      AND archived_at <= to_timestamp(%(cutoff)s)
    RETURNING msg_id
)
SELECT count(*) FROM gone
