-- The status of a message in the archive table: killed and cancelled say so in the "apalis"
-- headers; any other archived message is done.
CASE headers -> 'apalis' ->> 'status' WHEN 'killed' THEN 'killed' WHEN 'cancelled' THEN 'cancelled' ELSE 'done' END
