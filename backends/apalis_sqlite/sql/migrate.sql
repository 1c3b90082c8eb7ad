-- The schema's own bookkeeping: which numbered migration (sql/NNNN_*.sql) was applied last.

-- name: version_table
CREATE TABLE IF NOT EXISTS {prefix}schema_version (
    id          INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    version     INTEGER NOT NULL,
    migrated_at REAL    NOT NULL
) STRICT;

-- name: get_version
SELECT version FROM {prefix}schema_version WHERE id = 1;

-- name: set_version
INSERT INTO {prefix}schema_version (id, version, migrated_at) VALUES (1, :version, :now)
ON CONFLICT (id) DO UPDATE SET version = excluded.version, migrated_at = excluded.migrated_at;
