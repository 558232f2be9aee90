-- eventrail event log. `{schema}` is replaced by the validated, quoted schema name.

-- CACHE 1 is load-bearing: the gap proof needs "position g < h implies g was handed out before h",
-- which per-backend sequence caches would break.
CREATE SEQUENCE {schema}.events_global_position_seq AS bigint START 1 CACHE 1 NO CYCLE;

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
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_key UNIQUE (stream_name, stream_version),
    CONSTRAINT events_one_payload CHECK ((data IS NULL) <> (data_binary IS NULL)),
    CONSTRAINT events_stream_version_check CHECK (stream_version >= 0)
);
ALTER SEQUENCE {schema}.events_global_position_seq OWNED BY {schema}.events.global_position;

CREATE INDEX events_category_position_idx ON {schema}.events (category, global_position);
CREATE INDEX events_type_position_idx ON {schema}.events (event_type, global_position);

-- Events are immutable: UPDATE, DELETE and TRUNCATE are refused with SQLSTATE ER001.
CREATE FUNCTION {schema}.refuse_event_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are immutable: % refused on %', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'ER001';
END
$$;
CREATE TRIGGER events_immutable_rows BEFORE UPDATE OR DELETE ON {schema}.events
    FOR EACH ROW EXECUTE FUNCTION {schema}.refuse_event_change();
CREATE TRIGGER events_immutable_truncate BEFORE TRUNCATE ON {schema}.events
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.refuse_event_change();

-- Appends a batch to one stream. One statement, so one round trip in autocommit, and the same
-- code path inside a caller's transaction.
--   p_expected_kind: 0 any, 1 no stream, 2 stream exists, 3 exact (p_expected_version)
--   p_scope: NULL no position precondition, '' the whole log, else a category
--   p_after: the caller's last seen position in p_scope (0: none)
-- Returns outcome 0 with one row per event, 1 (wrong version, actual in `actual`) or
-- 2 (position conflict, head in `actual`) with a single row and nothing written.
CREATE FUNCTION {schema}.append_events(
    p_stream text,
    p_expected_kind smallint,
    p_expected_version bigint,
    p_scope text,
    p_after bigint,
    p_event_ids uuid[],
    p_event_types text[],
    p_schema_versions integer[],
    p_data jsonb[],
    p_data_binary bytea[],
    p_metadata jsonb[],
    p_notify_channel text
) RETURNS TABLE (
    outcome smallint,
    actual bigint,
    global_position bigint,
    stream_version bigint,
    recorded_at timestamptz,
    transaction_id text
) LANGUAGE plpgsql AS $$
DECLARE
    v_category text := split_part(p_stream, '-', 1);
    v_current bigint;
    v_head bigint;
BEGIN
    -- One statement (statement overhead dominates small appends). Its target list is evaluated
    -- left to right:
    -- 1. The transaction takes its xid before it takes any position, so a reader that sees a
    --    hole also sees the transaction that may still fill it (gap proof).
    -- 2. Scope locks make position preconditions race-free: every append holds its scopes
    --    shared, a precondition holds its scope exclusively, so its check sees every append in
    --    that scope. Always in the order: whole log, category, stream.
    -- 3. The stream lock serialises appends to one stream, so the version check cannot race.
    PERFORM pg_current_xact_id(),
            CASE WHEN p_scope = '' THEN pg_advisory_xact_lock(1701147137, 0)
                 ELSE pg_advisory_xact_lock_shared(1701147137, 0) END,
            CASE WHEN p_scope <> '' THEN pg_advisory_xact_lock(1701147138, hashtext(p_scope)) END,
            CASE WHEN p_scope IS NULL OR (p_scope <> '' AND p_scope <> v_category)
                 THEN pg_advisory_xact_lock_shared(1701147138, hashtext(v_category)) END,
            pg_advisory_xact_lock(1701147139, hashtext(p_stream));

    -- A new statement, so a new snapshot: it sees every append that held the locks before us.
    SELECT max(e.stream_version) INTO v_current FROM {schema}.events e WHERE e.stream_name = p_stream;
    IF NOT (p_expected_kind = 0
            OR (p_expected_kind = 1 AND v_current IS NULL)
            OR (p_expected_kind = 2 AND v_current IS NOT NULL)
            OR (p_expected_kind = 3 AND v_current = p_expected_version)) THEN
        RETURN QUERY SELECT 1::smallint, v_current, NULL::bigint, NULL::bigint, NULL::timestamptz, NULL::text;
        RETURN;
    END IF;
    -- Separate statements per scope keep each plan a simple index probe (a combined `OR` plan
    -- would be re-planned on every call).
    IF p_scope = '' THEN
        SELECT max(e.global_position) INTO v_head FROM {schema}.events e;
    ELSIF p_scope IS NOT NULL THEN
        SELECT max(e.global_position) INTO v_head FROM {schema}.events e WHERE e.category = p_scope;
    END IF;
    IF v_head > p_after THEN
        RETURN QUERY SELECT 2::smallint, v_head, NULL::bigint, NULL::bigint, NULL::timestamptz, NULL::text;
        RETURN;
    END IF;

    RETURN QUERY
    WITH inserted AS (
        INSERT INTO {schema}.events AS e
            (stream_name, stream_version, event_id, event_type, schema_version, data, data_binary, metadata)
        SELECT p_stream, coalesce(v_current, -1) + n.ord, n.id, n.event_type, n.schema_version,
               n.data, n.data_binary, n.metadata
          FROM unnest(p_event_ids, p_event_types, p_schema_versions, p_data, p_data_binary, p_metadata)
               WITH ORDINALITY AS n(id, event_type, schema_version, data, data_binary, metadata, ord)
         ORDER BY n.ord
        RETURNING e.global_position, e.stream_version, e.recorded_at, e.transaction_id
    )
    SELECT 0::smallint, NULL::bigint, i.global_position, i.stream_version, i.recorded_at,
           i.transaction_id::text
      FROM inserted i ORDER BY i.stream_version;

    -- A hint for subscribers: the newest position, never data.
    IF p_notify_channel IS NOT NULL THEN
        PERFORM pg_notify(p_notify_channel, currval('{schema}.events_global_position_seq')::text);
    END IF;
END
$$;

-- Summaries of the log.
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
