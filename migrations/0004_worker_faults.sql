-- eventrail worker faults (issue 10). `{..}` table names are replaced by validated, quoted
-- names. Each block below belongs to one change; keep them separate.

-- ==== poison events and undecodable rows: park at the event, skip it audited ====
-- A parked consumer names the event it stopped at: a handler that kept failing on it, or a row
-- the store cannot decode. NULL when it parked without one (a batch timeout before this
-- migration). Its checkpoint is then `parked_position - 1`.
ALTER TABLE {consumer_checkpoints} ADD COLUMN parked_position bigint;

-- An operator's skip of a parked event is audited with the gap skips, reason 'poison', with the
-- error it was parked with and who skipped it.
ALTER TABLE {consumer_gap_skips} ADD COLUMN detail text, ADD COLUMN skipped_by text;

-- The reason's CHECK was created unnamed in 0002 (and the table name is configurable): find it
-- by its column, not by its generated name.
DO $$
DECLARE
    check_name name;
BEGIN
    SELECT c.conname INTO check_name
    FROM pg_constraint c
    JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attname = 'reason'
    WHERE c.conrelid = '{consumer_gap_skips}'::regclass AND c.contype = 'c'
      AND c.conkey = ARRAY[a.attnum];
    IF check_name IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', '{consumer_gap_skips}'::regclass, check_name);
    END IF;
END
$$;
ALTER TABLE {consumer_gap_skips} ADD CONSTRAINT gap_skips_reason_check
    CHECK (reason IN ('proven', 'timeout', 'poison'));
-- ==== end of poison events ====

-- ==== gap proof by appenders: the evidence names the candidate transactions ====
-- A hole now waits only for the transactions that were appending to the log when it was seen
-- (not for a horizon xid over the whole cluster): the audit names those candidates.
ALTER TABLE {consumer_gap_skips} RENAME COLUMN horizon_xid TO candidate_xids;
-- ==== end of gap proof by appenders ====
