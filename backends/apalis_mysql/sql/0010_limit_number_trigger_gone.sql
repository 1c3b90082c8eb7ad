-- Schema version 10: the trigger the first form of migration 0009 made (`tasks_limit_number`,
-- which numbered keyed tasks at insert) is dropped; our inserts number them now (0009). Dropped
-- only where it exists: with binary logging on, DROP TRIGGER needs SUPER even with IF EXISTS, and
-- a database with the trigger was migrated by a user allowed to make it. Where it is left, it is
-- harmless: it numbers only a row inserted without a number.
SET @apalis_trigger = (
    SELECT COUNT(*) FROM information_schema.TRIGGERS
    WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME = '{prefix}tasks_limit_number'
);
EXECUTE IMMEDIATE IF(@apalis_trigger > 0, 'DROP TRIGGER {prefix}tasks_limit_number', 'DO 0')
