-- Only one worker per schema and queue sweeps at a time; the others skip this beat's sweep.
SELECT pg_try_advisory_xact_lock(hashtext(%(scope)s), hashtext(%(queue)s))
