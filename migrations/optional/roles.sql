-- Optional least-privilege roles for one eventrail schema. `{schema}` is the quoted schema and
-- `{role_prefix}` the validated role prefix. Roles are cluster-wide; they are created NOLOGIN:
-- grant them to login roles (`GRANT {role_prefix}_writer TO app_user`).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role_prefix}_reader') THEN
        CREATE ROLE {role_prefix}_reader NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role_prefix}_writer') THEN
        CREATE ROLE {role_prefix}_writer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role_prefix}_admin') THEN
        CREATE ROLE {role_prefix}_admin NOLOGIN;
    END IF;
END
$$;

-- reader: read the log and its summaries.
GRANT USAGE ON SCHEMA {schema} TO {role_prefix}_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role_prefix}_reader;

-- writer: read, and append through append_events (INSERT only: events stay immutable).
GRANT {role_prefix}_reader TO {role_prefix}_writer;
GRANT INSERT ON {schema}.events TO {role_prefix}_writer;
GRANT USAGE ON SEQUENCE {schema}.events_global_position_seq TO {role_prefix}_writer;
GRANT EXECUTE ON FUNCTION {schema}.append_events(text, smallint, bigint, text, bigint, uuid[], text[], integer[], jsonb[], bytea[], jsonb[], text) TO {role_prefix}_writer;

-- admin: everything in the schema (migrations, maintenance).
GRANT ALL ON SCHEMA {schema} TO {role_prefix}_admin;
GRANT ALL ON ALL TABLES IN SCHEMA {schema} TO {role_prefix}_admin;
GRANT ALL ON ALL SEQUENCES IN SCHEMA {schema} TO {role_prefix}_admin;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {schema} TO {role_prefix}_admin;
