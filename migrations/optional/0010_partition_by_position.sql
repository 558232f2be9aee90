-- eventrail event log, optional migration 10: the events table partitioned by position range, for
-- very large logs. Applied only on request (`eventrail migrate --partition-size N`,
-- `Migrator::partition_by_position`), after migrations 1–9. `{schema}` is the quoted schema and
-- `{partition_size}` the number of positions per partition. After it, the migrator replaces
-- `append_events` with a version that reads a stream's version from `streams`.
--
-- PostgreSQL's unique indexes on a partitioned table must include the partition key, so the two
-- rules the plain table's unique constraints kept move to tables of their own, kept by a
-- statement trigger on every insert path (the one-statement append, `append_events`, COPY):
-- - `event_ids`: an event id once in the whole log (its key keeps the plain table's constraint
--   name, `events_event_id_key`, so a duplicate is reported the same way);
-- - `streams`: one row per stream, its version and first position. A stream's version is read
--   from it, not by a `max()` that would descend one index per partition, and the trigger
--   refuses a batch whose versions do not follow the stream's (`events_stream_version_key`).
--
-- The conversion copies the log in one transaction under an ACCESS EXCLUSIVE lock: on a large log
-- it takes as long as rewriting the table. New partitions are attached later with a SHARE UPDATE
-- EXCLUSIVE lock on the parent, which appends and reads do not wait for.

LOCK TABLE {schema}.events IN ACCESS EXCLUSIVE MODE;
DROP VIEW {schema}.events_by_type, {schema}.events_by_stream, {schema}.events_by_category;
ALTER TABLE {schema}.events RENAME TO events_unpartitioned;
ALTER INDEX {schema}.events_pkey RENAME TO events_unpartitioned_pkey;
ALTER INDEX {schema}.events_event_id_key RENAME TO events_unpartitioned_event_id_key;
ALTER INDEX {schema}.events_stream_version_key RENAME TO events_unpartitioned_stream_version_key;
ALTER INDEX {schema}.events_category_position_idx RENAME TO events_unpartitioned_category_idx;
ALTER INDEX {schema}.events_type_position_idx RENAME TO events_unpartitioned_type_idx;
ALTER TABLE {schema}.events_unpartitioned ALTER COLUMN global_position DROP DEFAULT;
ALTER SEQUENCE {schema}.events_global_position_seq OWNED BY NONE;

CREATE TABLE {schema}.events (
    global_position bigint      NOT NULL DEFAULT nextval('{schema}.events_global_position_seq'),
    stream_name     text        NOT NULL,
    category        text        NOT NULL GENERATED ALWAYS AS (split_part(stream_name, '-', 1)) STORED,
    stream_version  bigint      NOT NULL,
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL DEFAULT 1,
    data            jsonb,
    data_binary     bytea,
    metadata        jsonb       NOT NULL DEFAULT '{}',
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    CONSTRAINT events_pkey PRIMARY KEY (global_position),
    CONSTRAINT events_one_payload CHECK ((data IS NULL) <> (data_binary IS NULL)),
    CONSTRAINT events_stream_version_check CHECK (stream_version >= 0)
) PARTITION BY RANGE (global_position);
ALTER SEQUENCE {schema}.events_global_position_seq OWNED BY {schema}.events.global_position;
CREATE INDEX events_stream_version_idx ON {schema}.events (stream_name, stream_version);
CREATE INDEX events_category_position_idx ON {schema}.events (category, global_position);
CREATE INDEX events_type_position_idx ON {schema}.events (event_type, global_position);

CREATE TABLE {schema}.event_ids (
    event_id        uuid   NOT NULL,
    global_position bigint NOT NULL,
    CONSTRAINT events_event_id_key PRIMARY KEY (event_id)
);

CREATE TABLE {schema}.streams (
    stream_name    text   NOT NULL,
    version        bigint NOT NULL,
    first_position bigint NOT NULL,
    CONSTRAINT streams_pkey PRIMARY KEY (stream_name)
);

-- One row: the partition size and the exclusive upper bound of the newest partition.
CREATE TABLE {schema}.event_partitioning (
    one            boolean NOT NULL DEFAULT true,
    partition_size bigint  NOT NULL,
    upper_bound    bigint  NOT NULL,
    CONSTRAINT event_partitioning_pkey PRIMARY KEY (one),
    CONSTRAINT event_partitioning_one CHECK (one),
    CONSTRAINT event_partitioning_size CHECK (partition_size > 0)
);
INSERT INTO {schema}.event_partitioning (partition_size, upper_bound) VALUES ({partition_size}, 1);

-- Attaches partitions until there is room for one more partition's worth of positions past the
-- sequence's last value, or for `p_room` positions if more; returns the new upper bound. Concurrent callers wait for each other on
-- the bookkeeping row. Each partition is created apart and then attached, which takes SHARE UPDATE
-- EXCLUSIVE on the parent (CREATE TABLE … PARTITION OF would take ACCESS EXCLUSIVE and wait for
-- every open reader).
CREATE FUNCTION {schema}.add_event_partitions(p_room bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_size bigint;
    v_bound bigint;
    v_through bigint;
    v_name text;
    v_grantee text;
BEGIN
    SELECT p.partition_size, p.upper_bound INTO STRICT v_size, v_bound
      FROM {schema}.event_partitioning p FOR UPDATE;
    SELECT s.last_value + greatest(v_size, p_room) INTO v_through FROM {schema}.events_global_position_seq s;
    WHILE v_bound <= v_through LOOP
        v_name := format('events_p%s', lpad(((v_bound - 1) / v_size)::text, 6, '0'));
        EXECUTE format('CREATE TABLE {schema}.%I (LIKE {schema}.events INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING CONSTRAINTS)', v_name);
        EXECUTE format('ALTER TABLE {schema}.events ATTACH PARTITION {schema}.%I FOR VALUES FROM (%s) TO (%s)',
                       v_name, v_bound, v_bound + v_size);
        -- Written through the parent only (its trigger keeps event_ids and streams): whatever
        -- the schema's default privileges granted on the new table, no one but the owner may
        -- write to it directly.
        FOR v_grantee IN
            SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
              FROM pg_class c, aclexplode(c.relacl) a
             WHERE c.oid = format('{schema}.%I', v_name)::regclass AND a.grantee <> c.relowner
        LOOP
            EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {schema}.%I FROM %s', v_name, v_grantee);
        END LOOP;
        v_bound := v_bound + v_size;
    END LOOP;
    UPDATE {schema}.event_partitioning SET upper_bound = v_bound;
    RETURN v_bound;
END
$$;
REVOKE EXECUTE ON FUNCTION {schema}.add_event_partitions(bigint) FROM PUBLIC;

-- After every insert statement into events: the batch's event ids, and each stream's new version,
-- which must follow the stream's current one (the appender holds the stream lock, so this only
-- fails for a version computed from a stale snapshot, or a writer that bypassed the lock).
CREATE FUNCTION {schema}.record_event_heads() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_refused bigint;
BEGIN
    -- One statement (a second one costs about a third of the trigger's time).
    WITH ids AS (
        INSERT INTO {schema}.event_ids (event_id, global_position)
        SELECT n.event_id, n.global_position FROM new_events n
    ), batch AS (
        SELECT n.stream_name, min(n.stream_version) AS first_version,
               max(n.stream_version) AS last_version, count(*) AS events,
               min(n.global_position) AS first_position
          FROM new_events n GROUP BY n.stream_name
    ), followed AS (
        UPDATE {schema}.streams s SET version = b.last_version
          FROM batch b
         WHERE s.stream_name = b.stream_name AND s.version = b.first_version - 1
           AND b.events = b.last_version - b.first_version + 1
        RETURNING s.stream_name
    ), created AS (
        INSERT INTO {schema}.streams AS s (stream_name, version, first_position)
        SELECT b.stream_name, b.last_version, b.first_position FROM batch b
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
$$;

CREATE TRIGGER events_record_heads AFTER INSERT ON {schema}.events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.record_event_heads();
CREATE TRIGGER events_immutable_rows BEFORE UPDATE OR DELETE ON {schema}.events
    FOR EACH ROW EXECUTE FUNCTION {schema}.refuse_event_change();
CREATE TRIGGER events_immutable_truncate BEFORE TRUNCATE ON {schema}.events
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.refuse_event_change();

-- The log so far, in position order, through the trigger (which fills event_ids and streams).
SELECT {schema}.add_event_partitions(0);
INSERT INTO {schema}.events (global_position, stream_name, stream_version, event_id, event_type,
                             schema_version, data, data_binary, metadata, recorded_at, transaction_id)
SELECT global_position, stream_name, stream_version, event_id, event_type, schema_version, data,
       data_binary, metadata, recorded_at, transaction_id
  FROM {schema}.events_unpartitioned ORDER BY global_position;
DROP TABLE {schema}.events_unpartitioned;

-- The summary views of migration 1, on the new table.
CREATE VIEW {schema}.events_by_type AS
SELECT event_type, count(*) AS events, min(global_position) AS first_position,
       max(global_position) AS last_position, max(recorded_at) AS last_recorded_at
  FROM {schema}.events GROUP BY event_type;

CREATE VIEW {schema}.events_by_stream AS
SELECT stream_name, category, count(*) AS events, max(stream_version) AS stream_version,
       min(global_position) AS first_position, max(global_position) AS last_position,
       max(recorded_at) AS last_recorded_at
  FROM {schema}.events GROUP BY stream_name, category;

CREATE VIEW {schema}.events_by_category AS
SELECT category, count(DISTINCT stream_name) AS streams, count(*) AS events,
       min(global_position) AS first_position, max(global_position) AS last_position,
       max(recorded_at) AS last_recorded_at
  FROM {schema}.events GROUP BY category;
