-- eventrail outbox: a message is sent when its key's progress passes it, so that sending a run of
-- messages writes one row (the key's), not one row and its index entries per message.
-- `{schema}`, `{outbox}`, `{outbox_keys}` and `{outbox_keys_row}` (the trigger's function, beside the
-- keys table) are replaced by validated, quoted names.

-- One row per partition key that may have unsent messages (pending or dead). A message is sent
-- when its sequence is at or below its key's `sent_through`, when its key has no row here, or
-- when its `state` says so (rows marked before this migration). A trigger on the outbox inserts
-- a missing row for every message inserted, whoever inserts it (with `sent_through` just below
-- it: a key without a row had everything sent); a settle moves `sent_through` past the run it
-- sent; a relay's upkeep deletes the rows of keys left with nothing unsent, holding the keys'
-- enqueue locks so that no enqueue is in flight.
CREATE TABLE {outbox_keys} (
    partition_key text        PRIMARY KEY,
    sent_through  bigint      NOT NULL,
    -- When `sent_through` last moved.
    sent_at       timestamptz
);

-- The key's enqueue lock (class 1701147150, `keys::OUTBOX_KEY_LOCK`, on the qualified outbox
-- name and the key, as `Outbox::enqueue` takes it before it inserts) is held until the insert's
-- transaction ends: the upkeep never deletes the row of a key whose insert is in flight, and
-- waits for none.
CREATE FUNCTION {outbox_keys_row}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1701147150, hashtext('{outbox}/' || NEW.partition_key));
    INSERT INTO {outbox_keys} (partition_key, sent_through)
    VALUES (NEW.partition_key, NEW.sequence - 1)
    ON CONFLICT (partition_key) DO NOTHING;
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_keys_row AFTER INSERT ON {outbox}
    FOR EACH ROW EXECUTE FUNCTION {outbox_keys_row}();

INSERT INTO {outbox_keys} (partition_key, sent_through)
SELECT partition_key, min(sequence) - 1
FROM {outbox}
WHERE state <> 'sent'
GROUP BY partition_key;

-- The outbox's indexes no longer depend on a message's state: a key's messages are found by
-- (partition_key, sequence) from its `sent_through` on, the cleanup's candidates by `created_at`.
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
