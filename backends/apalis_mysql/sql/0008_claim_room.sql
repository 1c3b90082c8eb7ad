-- Schema version 8: room on a waiting task's row for its claim. A claim writes `lock_by` and
-- `lock_at` over NULLs: the row grows by the worker's id and 8 bytes, so InnoDB cannot update it
-- where it lies; it writes the new version elsewhere on the page, and a page filled by pushes
-- has no room left for that after a few rows: it reorganizes the page and logs the whole of it
-- (a claim of 50 tasks reorganized ~10 pages and wrote ~2 KB of redo a task). `claim_room` holds
-- 64 bytes from the push on (the column's default, so every insert gets it, a daemon's of the
-- previous version's too), and the claim sets it NULL as it sets `lock_by` and `lock_at`: the row
-- does not grow for a worker id of up to 56 bytes, and its new version takes its old place.
-- Nothing reads the column. A claim by a daemon of the previous version leaves it (the row grows
-- as before), and the acknowledgement drops it either way. MariaDB adds it without rewriting a
-- row.
ALTER TABLE {prefix}tasks
    ADD COLUMN IF NOT EXISTS claim_room VARBINARY(64) NULL
        DEFAULT '................................................................';
