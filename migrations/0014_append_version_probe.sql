-- eventrail event log, migration 14: `append_events` reads a stream's version and a category's
-- last position by one backward descent of an index instead of `max()`. For a stream or a
-- category the statistics estimate at a row or two (any that grew after the last ANALYZE),
-- PostgreSQL plans such a `max()` as an aggregate over every index entry of the stream or the
-- category, so each append through the function read all of them. `{schema}` is the quoted
-- schema.
--
-- Migration 7's function is patched where it stands (its probe statements replaced), so that its
-- body, owner, rights and settings stay as they were. On a partitioned log (optional migration
-- 10) the function reads the version from the `streams` row, and only the category probe is
-- replaced; `Migrator::partition_by_position` runs this migration again after the conversion.
-- Patching a patched function changes nothing.

DO $migration$
DECLARE
    v_function regprocedure := '{schema}.append_events(text, smallint, bigint, text, bigint, uuid[], text[], integer[], jsonb[], bytea[], jsonb[], text)'::regprocedure;
    v_definition text := pg_get_functiondef(v_function);
    v_patched text;
BEGIN
    v_patched := replace(
        replace(
            v_definition,
            'SELECT max(e.stream_version) INTO v_current FROM {schema}.events e WHERE e.stream_name = p_stream;',
            'SELECT e.stream_version INTO v_current FROM {schema}.events e WHERE e.stream_name = p_stream ORDER BY e.stream_version DESC LIMIT 1;'
        ),
        'SELECT max(e.global_position) INTO v_head FROM {schema}.events e WHERE e.category = p_scope;',
        'SELECT e.global_position INTO v_head FROM {schema}.events e WHERE e.category = p_scope ORDER BY e.global_position DESC LIMIT 1;'
    );
    IF v_patched <> v_definition THEN
        EXECUTE v_patched;
    END IF;
END
$migration$;
