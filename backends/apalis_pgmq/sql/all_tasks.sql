-- Every task of a queue, from its queue table and its archive, with apalis's status (the
-- inspector's and the board's reads select from it).
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
           {archived},
           extract(epoch FROM archived_at)::float8
    FROM {a}
