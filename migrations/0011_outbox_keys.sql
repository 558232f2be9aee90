-- eventrail outbox: the partition keys that have unsent messages, so that no index of the outbox
-- names a column a relay writes, and claiming, failing or sending a message updates its row in
-- place (a HOT update: no index entry written).
-- `{schema}`, `{outbox}` and `{outbox_keys}` are replaced by validated, quoted names.

-- One row per partition key that may have unsent messages (pending or dead): a relay's walk of
-- due keys reads this table instead of an index of every unsent message. Enqueue inserts or
-- updates the row (under the key's lock, until its commit); the settle that sends a key's last
-- enqueued message deletes it, and otherwise moves `unsent_from` past what it sent.
CREATE TABLE {outbox_keys} (
    partition_key    text   PRIMARY KEY,
    -- The key's last enqueued sequence, written by every enqueue of the key: a settle deletes
    -- the row only when it sent through it, checked on the row it locked, so an enqueue that
    -- committed meanwhile keeps the row.
    enqueued_through bigint NOT NULL,
    -- At or below the sequence of the key's oldest unsent message (its head): where the head's
    -- lookup starts. Not indexed, so that moving it is an update in place.
    unsent_from      bigint NOT NULL
) WITH (fillfactor = 70);

INSERT INTO {outbox_keys} (partition_key, enqueued_through, unsent_from)
SELECT partition_key, max(sequence), min(sequence) FILTER (WHERE state <> 'sent')
FROM {outbox}
GROUP BY partition_key
HAVING bool_or(state <> 'sent');

-- The outbox's indexes no longer name `state`, `sent_at`, the lease or the attempts: a key's
-- messages are found by (partition_key, sequence) from its `unsent_from` on, the cleanup's
-- candidates by `created_at` (a message is sent after it was enqueued). Each page keeps room
-- for the new versions of its rows.
DO $$
DECLARE
    partial regclass;
BEGIN
    FOR partial IN
        SELECT indexrelid::regclass FROM pg_index
        WHERE indrelid = '{outbox}'::regclass AND indpred IS NOT NULL
    LOOP
        EXECUTE format('DROP INDEX %s', partial);
    END LOOP;
END $$;
CREATE INDEX ON {outbox} (partition_key, sequence);
CREATE INDEX ON {outbox} (created_at);
ALTER TABLE {outbox} SET (fillfactor = 70);
