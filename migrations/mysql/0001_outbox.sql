-- eventrail transactional outbox on MySQL 8.0.1+ / MariaDB 10.6+ (for FOR UPDATE SKIP LOCKED).
-- `{outbox}`, `{outbox_key_locks}` and `{outbox_destinations}` are replaced by validated, quoted
-- names. Every statement is idempotent: the migrate call may run it again after a failure.
-- Partition keys and destinations are VARBINARY (their UTF-8 bytes), so that they compare as
-- PostgreSQL's text does: case, accents and trailing spaces matter (the `_bin` collations of
-- MySQL 8 and MariaDB pad spaces, and their no-pad ones differ between the two). Other text is
-- utf8mb4. Times are UTC DATETIME(6), written with UTC_TIMESTAMP(6),
-- so that the session time zone never matters. Ids are uuids as BINARY(16). CHECK constraints
-- stay unnamed: their names are per database in MySQL, and one database may hold two outboxes.

-- One row per message, as in PostgreSQL's outbox: `sequence` orders a partition key's messages,
-- the lease on a key's oldest unsent row (its head) holds the key.
CREATE TABLE IF NOT EXISTS {outbox} (
    sequence         BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    message_id       BINARY(16)   NOT NULL,
    partition_key    VARBINARY(1020) NOT NULL,
    destination      VARBINARY(1020) NOT NULL,
    headers          LONGTEXT     NOT NULL,
    payload          LONGBLOB     NOT NULL,
    content_type     VARCHAR(255) NOT NULL,
    created_at       DATETIME(6)  NOT NULL,
    attempts         INT          NOT NULL DEFAULT 0,
    next_attempt_at  DATETIME(6)  NOT NULL,
    last_error       LONGTEXT     NULL,
    state            VARCHAR(7)   NOT NULL DEFAULT 'pending',
    lease_owner      BINARY(16)   NULL,
    lease_expires_at DATETIME(6)  NULL,
    sent_at          DATETIME(6)  NULL,
    UNIQUE KEY message_id (message_id),
    -- A key's run in order.
    KEY partition_key_sequence (partition_key, sequence),
    -- The heads: unsent rows only, by key (MySQL has no partial indexes).
    KEY state_partition_key (state, partition_key, sequence),
    -- Cleanup of sent rows.
    KEY state_sent_at (state, sent_at),
    KEY state_destination (state, destination),
    CHECK (attempts >= 0),
    CHECK (state IN ('pending', 'sent', 'dead'))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The producers' key locks: 65,536 rows made once. A producer locks the rows of its keys'
-- buckets (FNV-1a of the key's UTF-8 bytes, modulo 65,536; fixed forever, so that every version
-- of the library agrees) in ascending order before it inserts, until it commits, so that a key's
-- sequence order is its commit order (PostgreSQL uses a transaction-level advisory lock; MySQL's
-- named locks are session-level). Locking existing rows by their primary key takes no gap
-- locks at any isolation level, so producers never deadlock each other over new keys; two keys
-- that share a bucket only wait for each other.
CREATE TABLE IF NOT EXISTS {outbox_key_locks} (
    bucket INT NOT NULL PRIMARY KEY
) ENGINE = InnoDB;

INSERT IGNORE INTO {outbox_key_locks} (bucket)
SELECT a.n + 16 * b.n + 256 * c.n + 4096 * d.n
FROM (SELECT 0 AS n UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4
      UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9
      UNION ALL SELECT 10 UNION ALL SELECT 11 UNION ALL SELECT 12 UNION ALL SELECT 13
      UNION ALL SELECT 14 UNION ALL SELECT 15) AS a
CROSS JOIN (SELECT 0 AS n UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4
      UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9
      UNION ALL SELECT 10 UNION ALL SELECT 11 UNION ALL SELECT 12 UNION ALL SELECT 13
      UNION ALL SELECT 14 UNION ALL SELECT 15) AS b
CROSS JOIN (SELECT 0 AS n UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4
      UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9
      UNION ALL SELECT 10 UNION ALL SELECT 11 UNION ALL SELECT 12 UNION ALL SELECT 13
      UNION ALL SELECT 14 UNION ALL SELECT 15) AS c
CROSS JOIN (SELECT 0 AS n UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4
      UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9
      UNION ALL SELECT 10 UNION ALL SELECT 11 UNION ALL SELECT 12 UNION ALL SELECT 13
      UNION ALL SELECT 14 UNION ALL SELECT 15) AS d;

-- Destinations backed off as a whole, as in PostgreSQL's outbox_destinations.
CREATE TABLE IF NOT EXISTS {outbox_destinations} (
    destination     VARBINARY(1020) NOT NULL PRIMARY KEY,
    reason          VARCHAR(11)  NOT NULL,
    since           DATETIME(6)  NOT NULL,
    failures        INT          NOT NULL DEFAULT 1,
    next_attempt_at DATETIME(6)  NOT NULL,
    last_error      LONGTEXT     NOT NULL,
    CHECK (reason IN ('unavailable', 'missing')),
    CHECK (failures >= 1)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
