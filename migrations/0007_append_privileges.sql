-- eventrail event log, migration 7: append_events runs with its owner's rights, so that a writer
-- can append only through it. A raw INSERT into events would bypass the rule that every appender
-- holds its transaction id and the appender lock before it holds a position (the gap proof), so
-- the writer role gets EXECUTE on this function and no INSERT on the table. The search path is
-- fixed (every name in the body is qualified) and PUBLIC loses EXECUTE: grant it (or the writer
-- role of `eventrail migrate --roles`) to the roles that append.
ALTER FUNCTION {schema}.append_events(text, smallint, bigint, text, bigint, uuid[], text[], integer[], jsonb[], bytea[], jsonb[], text)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
REVOKE EXECUTE ON FUNCTION {schema}.append_events(text, smallint, bigint, text, bigint, uuid[], text[], integer[], jsonb[], bytea[], jsonb[], text) FROM PUBLIC;
