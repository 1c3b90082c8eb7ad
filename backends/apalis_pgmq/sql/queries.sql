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
-- The claim: pgmq.read hides up to qty messages for the lease; read_ct counts the attempts.
SELECT msg_id, read_ct, extract(epoch FROM enqueued_at)::float8, message, headers -> 'apalis'
FROM pgmq.read(%(queue)s, %(lease)s, %(qty)s)

-- name: extend
-- The heartbeat of running tasks: every lease of this worker extended in one call.
SELECT count(*) FROM pgmq.set_vt(%(queue)s, %(ids)s::bigint[], clock_timestamp() + make_interval(secs => %(lease)s))

-- name: archive
-- Done (or killed): archive only the messages this run still holds, i.e. nobody read them again
-- since (same read_ct); FOR UPDATE keeps a concurrent pgmq.read off them until we commit.
SELECT count(*) FROM pgmq.archive(%(queue)s, ARRAY(
    SELECT m.msg_id FROM {q} m
    JOIN unnest(%(ids)s::bigint[], %(cts)s::int[]) AS u(id, ct) ON m.msg_id = u.id AND m.read_ct = u.ct
    FOR UPDATE OF m))

-- name: annotate
-- What pgmq has no column for (error, result, killed, the attempt that failed) goes into the
-- message's headers under "apalis", before the message is archived or made visible again.
-- Foreign headers that are not an object (pgmq allows any jsonb) give way to ours.
UPDATE {q} m
SET headers = CASE WHEN jsonb_typeof(m.headers) = 'object' THEN m.headers ELSE '{{}}' END
    || jsonb_build_object('apalis',
        CASE WHEN jsonb_typeof(m.headers -> 'apalis') = 'object' THEN m.headers -> 'apalis' ELSE '{{}}' END || u.patch)
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
-- lowers read_ct, so this one writes the queue table directly.
UPDATE {q} m SET vt = clock_timestamp(), read_ct = greatest(m.read_ct - 1, 0)
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
SELECT msg_id, read_ct, enqueued_at, run_at, message, apalis, status, done_at FROM (
    -- run_at is when the message is (or was) due: its vt, except that a running or archived
    -- message's vt is only its lease's end, so its last read is shown.
    SELECT msg_id, read_ct, extract(epoch FROM enqueued_at)::float8 AS enqueued_at,
           extract(epoch FROM CASE WHEN status = 'running' THEN last_read_at ELSE vt END)::float8 AS run_at,
           message, headers -> 'apalis' AS apalis, status, NULL::float8 AS done_at
    FROM (SELECT *, {status} AS status FROM {q}) AS live
    UNION ALL
    SELECT msg_id, read_ct, extract(epoch FROM enqueued_at)::float8,
           extract(epoch FROM coalesce(last_read_at, vt))::float8,
           message, headers -> 'apalis',
           CASE WHEN headers -> 'apalis' ->> 'status' = 'killed' THEN 'killed' ELSE 'done' END,
           extract(epoch FROM archived_at)::float8
    FROM {a}
) AS t
WHERE (%(status)s::text IS NULL OR status = %(status)s) AND (%(id)s::bigint IS NULL OR msg_id = %(id)s)
ORDER BY run_at, msg_id
LIMIT %(limit)s OFFSET %(offset)s

-- name: stats
-- Per status: how many, and how many wait for a time still to come (a delayed send, or a retry
-- in its backoff: hidden until vt without a live lease).
SELECT status, count(*), count(*) FILTER (WHERE status IN ('pending', 'failed') AND vt > clock_timestamp())
FROM (SELECT {status} AS status, vt FROM {q}) AS t GROUP BY 1
UNION ALL
SELECT CASE WHEN headers -> 'apalis' ->> 'status' = 'killed' THEN 'killed' ELSE 'done' END, count(*), 0
FROM {a} GROUP BY 1

-- name: retry_failed
UPDATE {q} SET read_ct = 0, vt = clock_timestamp(), headers = headers #- '{{apalis,failed_ct}}'
WHERE msg_id = %(id)s AND {status} = 'failed'
RETURNING msg_id

-- name: retry_killed
-- pgmq has no "unarchive": the killed message goes back into the queue table with its own id.
WITH moved AS (
    DELETE FROM {a} WHERE msg_id = %(id)s AND headers -> 'apalis' ->> 'status' = 'killed'
    RETURNING msg_id, enqueued_at, message, headers
)
INSERT INTO {q} (msg_id, read_ct, enqueued_at, vt, message, headers) OVERRIDING SYSTEM VALUE
SELECT msg_id, 0, enqueued_at, clock_timestamp(), message,
       headers #- '{{apalis,status}}' #- '{{apalis,failed_ct}}'
FROM moved
RETURNING msg_id

-- name: kill
WITH marked AS (
    UPDATE {q} m
    SET headers = CASE WHEN jsonb_typeof(m.headers) = 'object' THEN m.headers ELSE '{{}}' END
        || jsonb_build_object('apalis',
            CASE WHEN jsonb_typeof(m.headers -> 'apalis') = 'object' THEN m.headers -> 'apalis' ELSE '{{}}' END
            || %(patch)s::jsonb)
    WHERE m.msg_id = %(id)s
    RETURNING msg_id
)
SELECT count(*) FROM marked

-- name: archive_one
SELECT pgmq.archive(%(queue)s, %(id)s::bigint)

-- name: purge_queue_status
SELECT count(*) FROM pgmq.delete(%(queue)s, ARRAY(
    SELECT msg_id FROM {q} WHERE {status} = %(status)s AND enqueued_at <= to_timestamp(%(cutoff)s)))

-- name: purge_archive_status
WITH gone AS (
    DELETE FROM {a}
    WHERE CASE WHEN headers -> 'apalis' ->> 'status' = 'killed' THEN 'killed' ELSE 'done' END = %(status)s
      AND archived_at <= to_timestamp(%(cutoff)s)
    RETURNING msg_id
)
SELECT count(*) FROM gone
