-- Optional least-privilege roles for one eventrail schema: the event store's part. `{schema}` is
-- the quoted schema and `{role_prefix}` the validated role prefix; the worker and the outbox add
-- their parts (roles_worker.sql, roles_outbox.sql). Roles are cluster-wide and NOLOGIN: grant
-- them to login roles (`GRANT {role_prefix}_writer TO app_user`). Idempotent: run it again after
-- adding a component.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['reader', 'writer', 'worker', 'admin'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role_prefix}_' || r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', '{role_prefix}_' || r);
        END IF;
    END LOOP;
END
$$;

-- reader: the log, its summary views and the migration records.
GRANT USAGE ON SCHEMA {schema} TO {role_prefix}_reader;
GRANT SELECT ON {schema}.events, {schema}.events_by_type, {schema}.events_by_stream,
    {schema}.events_by_category, {schema}.eventrail_migrations TO {role_prefix}_reader;

-- writer: reads, and appends only through append_events (which runs with its owner's rights):
-- no INSERT on events, which would bypass the appender lock the gap proof relies on.
GRANT {role_prefix}_reader TO {role_prefix}_writer;
REVOKE INSERT ON {schema}.events FROM {role_prefix}_writer;
REVOKE USAGE ON SEQUENCE {schema}.events_global_position_seq FROM {role_prefix}_writer;
GRANT EXECUTE ON FUNCTION {schema}.append_events(text, smallint, bigint, text, bigint, uuid[], text[], integer[], jsonb[], bytea[], jsonb[], text) TO {role_prefix}_writer;

-- worker: reads; the worker's and the outbox's parts grant the tables it keeps.
GRANT {role_prefix}_reader TO {role_prefix}_worker;

-- admin: operations and maintenance (it is writer and worker, and owns nothing). Events stay
-- immutable for everyone: no INSERT, UPDATE, DELETE or TRUNCATE on them.
GRANT {role_prefix}_writer, {role_prefix}_worker TO {role_prefix}_admin;
GRANT USAGE, CREATE ON SCHEMA {schema} TO {role_prefix}_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role_prefix}_admin;
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {schema}.events FROM {role_prefix}_admin;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role_prefix}_admin;
REVOKE USAGE ON SEQUENCE {schema}.events_global_position_seq FROM {role_prefix}_admin;

-- Tables that later migrations add (run by the same role as this script): readable by the reader,
-- writable by the admin. Re-run `eventrail migrate --roles` after an upgrade for finer grants.
ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT ON TABLES TO {role_prefix}_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role_prefix}_admin;
ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT USAGE ON SEQUENCES TO {role_prefix}_admin;

-- A log partitioned by position (optional migration 10): its bookkeeping tables are readable and
-- written by the append trigger alone, and the store's writers attach partitions ahead.
DO $$
DECLARE
    p text;
BEGIN
    IF to_regclass('{schema}.event_partitioning') IS NOT NULL THEN
        REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {schema}.event_ids, {schema}.streams,
            {schema}.event_partitioning FROM {role_prefix}_admin;
        GRANT SELECT ON {schema}.event_ids, {schema}.streams, {schema}.event_partitioning
            TO {role_prefix}_reader;
        GRANT EXECUTE ON FUNCTION {schema}.add_event_partitions(bigint) TO {role_prefix}_writer;
        -- Partitions are written through the parent only (`ALL TABLES` above included them).
        FOR p IN SELECT i.inhrelid::regclass::text FROM pg_inherits i
                  WHERE i.inhparent = '{schema}.events'::regclass LOOP
            EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON %s FROM {role_prefix}_admin', p);
        END LOOP;
    END IF;
END
$$;
