-- name: drop_orphan_claim_fns
-- The limited claim functions of queues pgmq no longer has: pgmq.drop_queue drops a queue's
-- tables and indexes, not the function apalis made for it (`limits.sql`'s `create_limit_claim`:
-- `limit_claim3_<queue>`, and earlier versions' `limit_claim_<queue>` and `limit_claim2_<queue>`),
-- nor its sweep's place (`limit_sweeps`).
-- Dropped when a store opens, so the schema does not gather one function per queue ever
-- dropped. One this role may not drop is left as it is; one dropped while another process still
-- claims with it (its queue made again meanwhile) is made again by that process's next claim
-- (`PgmqLimits.fetch`). A pgmq whose queue list (`pgmq.meta`) this role cannot read is left
-- alone: the store opens as before.
DO $orphans$
DECLARE
    v_fn regprocedure;
BEGIN
    FOR v_fn IN
        SELECT p.oid::regprocedure FROM pg_proc AS p
        WHERE p.pronamespace = 'apalis_pgmq'::regnamespace
          AND (starts_with(p.proname, 'limit_claim_') OR starts_with(p.proname, 'limit_claim2_')
               OR starts_with(p.proname, 'limit_claim3_'))
          AND NOT EXISTS (
              SELECT 1 FROM pgmq.meta AS m
              WHERE p.proname IN ('limit_claim_' || m.queue_name, 'limit_claim2_' || m.queue_name,
                                  'limit_claim3_' || m.queue_name))
    LOOP
        BEGIN
            EXECUTE format('DROP FUNCTION IF EXISTS %s', v_fn);
        EXCEPTION WHEN insufficient_privilege OR dependent_objects_still_exist THEN
            NULL;
        END;
    END LOOP;
    DELETE FROM apalis_pgmq.limit_sweeps AS s
    WHERE NOT EXISTS (SELECT 1 FROM pgmq.meta AS m WHERE m.queue_name = s.queue);
EXCEPTION WHEN undefined_table OR undefined_column OR insufficient_privilege THEN
    NULL;
END
$orphans$
