-- The status of a message still in the queue table, as apalis names it:
-- never read -> pending; its last read failed and waits for its retry -> failed;
-- hidden by a live lease -> running; lease expired after a read (orphan) -> failed.
CASE
    WHEN read_ct = 0 THEN 'pending'
    WHEN headers -> 'apalis' -> 'failed_ct' = to_jsonb(read_ct) THEN 'failed'
    WHEN vt > clock_timestamp() THEN 'running'
    ELSE 'failed'
END
