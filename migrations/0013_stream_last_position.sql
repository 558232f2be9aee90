-- eventrail event log, migration 13: on a log partitioned by position range (optional migration
-- 10), each stream's row in `streams` also keeps the position of its last event, so that a stream
-- read opens only the partitions between the stream's first and last events: reading an old
-- stream no longer descends the stream index of every partition written after it. `{schema}` is
-- the quoted schema.
--
-- On the one-table layout it does nothing. `Migrator::partition_by_position` runs it again after
-- converting a log (every step is idempotent), so a log partitioned later gets the column too.

DO $migration$
BEGIN
    IF to_regclass('{schema}.event_partitioning') IS NULL THEN
        RETURN;
    END IF;
    ALTER TABLE {schema}.streams ADD COLUMN IF NOT EXISTS last_position bigint;
    -- Streams written before: their newest event, looked up once (only in the partitions from
    -- the stream's first event on).
    UPDATE {schema}.streams s
       SET last_position = (SELECT max(e.global_position) FROM {schema}.events e
                             WHERE e.stream_name = s.stream_name
                               AND e.global_position >= s.first_position)
     WHERE s.last_position IS NULL;
    ALTER TABLE {schema}.streams ALTER COLUMN last_position SET NOT NULL;

    -- Migration 10's trigger, keeping the last position too (a stream's row is updated by every
    -- append anyway; no index covers the column, so the update stays HOT).
    CREATE OR REPLACE FUNCTION {schema}.record_event_heads() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $trigger$
    DECLARE
        v_refused bigint;
    BEGIN
        WITH ids AS (
            INSERT INTO {schema}.event_ids (event_id, global_position)
            SELECT n.event_id, n.global_position FROM new_events n
        ), batch AS (
            SELECT n.stream_name, min(n.stream_version) AS first_version,
                   max(n.stream_version) AS last_version, count(*) AS events,
                   min(n.global_position) AS first_position, max(n.global_position) AS last_position
              FROM new_events n GROUP BY n.stream_name
        ), followed AS (
            UPDATE {schema}.streams s
               SET version = b.last_version, last_position = greatest(s.last_position, b.last_position)
              FROM batch b
             WHERE s.stream_name = b.stream_name AND s.version = b.first_version - 1
               AND b.events = b.last_version - b.first_version + 1
            RETURNING s.stream_name
        ), created AS (
            INSERT INTO {schema}.streams AS s (stream_name, version, first_position, last_position)
            SELECT b.stream_name, b.last_version, b.first_position, b.last_position FROM batch b
             WHERE b.first_version = 0 AND b.events = b.last_version + 1
            ON CONFLICT (stream_name) DO NOTHING
            RETURNING s.stream_name
        )
        SELECT (SELECT count(*) FROM batch) - (SELECT count(*) FROM followed)
               - (SELECT count(*) FROM created)
          INTO v_refused;
        IF v_refused <> 0 THEN
            RAISE EXCEPTION 'stream versions of % stream(s) do not follow their current version', v_refused
                USING ERRCODE = 'unique_violation', CONSTRAINT = 'events_stream_version_key';
        END IF;
        RETURN NULL;
    END
    $trigger$;
END
$migration$;
