-- eventrail event log, migration 14: on the one-table layout, `append_events` reads a stream's
-- version by one backward descent of the stream index instead of `max(stream_version)`. For a
-- stream the statistics estimate at a row or two (any stream that grew after the last ANALYZE),
-- PostgreSQL plans that `max()` as an aggregate over every index entry of the stream, so each
-- append through the function read the whole stream. `{schema}` is the quoted schema.
--
-- Migration 7's function is patched where it stands (its one probe statement replaced), so that
-- its body, owner, rights and settings stay as they were. On a partitioned log (optional
-- migration 10) the function reads the `streams` row instead, and this migration does nothing.

DO $migration$
DECLARE
    v_function regprocedure := '{schema}.append_events(text, smallint, bigint, text, bigint, uuid[], text[], integer[], jsonb[], bytea[], jsonb[], text)'::regprocedure;
    v_max constant text := 'SELECT max(e.stream_version) INTO v_current FROM {schema}.events e WHERE e.stream_name = p_stream;';
    v_descent constant text := 'SELECT e.stream_version INTO v_current FROM {schema}.events e WHERE e.stream_name = p_stream ORDER BY e.stream_version DESC LIMIT 1;';
    v_definition text;
BEGIN
    IF to_regclass('{schema}.event_partitioning') IS NOT NULL THEN
        RETURN;
    END IF;
    v_definition := pg_get_functiondef(v_function);
    IF position(v_max IN v_definition) = 0 THEN
        RAISE EXCEPTION 'append_events in % is not the function of migration 7: its version probe was not found', '{schema}';
    END IF;
    EXECUTE replace(v_definition, v_max, v_descent);
END
$migration$;
