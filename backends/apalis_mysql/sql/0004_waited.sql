-- Schema version 4: `waited` marks a task someone waits for, so the acknowledgement that ends it
-- signals the waiters' processes (`listener`); the ends of other tasks signal no one. MariaDB
-- adds the column without rewriting a row.
ALTER TABLE {prefix}tasks ADD COLUMN IF NOT EXISTS waited TINYINT NOT NULL DEFAULT 0;
