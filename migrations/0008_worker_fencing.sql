-- eventrail worker fencing tokens (issue 14): the leader's token is stored with what it writes,
-- so that a deposed leader's late assignment writes are refused in their own transaction.
-- `{..}` names are replaced by validated, quoted names. Idempotent (IF NOT EXISTS, OR REPLACE)
-- and compatible: workers of the previous version ignore the new columns (their defaults keep
-- every old statement valid).

-- The highest fencing token a leader has written with: raised by each new leader in the same
-- transaction as its first assignment writes, never lowered by the workers.
ALTER TABLE {worker_leader} ADD COLUMN IF NOT EXISTS fencing_token bigint NOT NULL DEFAULT 0;

-- The token of the leader that last moved each consumer.
ALTER TABLE {consumer_assignments} ADD COLUMN IF NOT EXISTS leader_token bigint NOT NULL DEFAULT 0;

-- An assignment write that sets `leader_token` (every leader's write does; releases and
-- operators' writes do not) to a token lower than the stored one is refused with SQLSTATE ERF01. The stored row is read FOR SHARE: a leader raising the fence concurrently is waited
-- for, so the refusal cannot be missed by a write that commits after it.
CREATE OR REPLACE FUNCTION {schema}.refuse_stale_leader_write() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    fence bigint;
BEGIN
    SELECT fencing_token INTO fence FROM {worker_leader} WHERE id = 1 FOR SHARE;
    IF fence IS NOT NULL AND NEW.leader_token < fence THEN
        RAISE EXCEPTION 'assignment write with fencing token % refused: a leader with token % has written since', NEW.leader_token, fence
            USING ERRCODE = 'ERF01';
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS assignments_fenced_by_leader_token ON {consumer_assignments};
CREATE TRIGGER assignments_fenced_by_leader_token BEFORE UPDATE OF leader_token ON {consumer_assignments}
    FOR EACH ROW EXECUTE FUNCTION {schema}.refuse_stale_leader_write();
