-- eventrail event log, migration 7: append_events keys its advisory locks by schema and runs
-- with its owner's rights. `{schema}` is the quoted schema, `{lock_namespace}` the literal
-- `'<schema>/'` every lock key starts with (see the store's `keys` module). Same signature and
-- outcomes as migration 6.
--
-- Keyed locks: two eventrail schemas in one database no longer wait for each other's stream,
-- category and whole-log locks, and a reader's gap proof waits only for this log's appenders.
--
-- Owner's rights: a writer can append only through this function. A raw INSERT into events would
-- bypass the rule that every appender holds its transaction id and the appender lock before it
-- holds a position (the gap proof), so the writer role of `eventrail migrate --roles` gets
-- EXECUTE on this function and no INSERT on the table. The search path is fixed (every name in
-- the body is qualified) and PUBLIC loses EXECUTE: grant it (or the writer role) to the roles
-- that append.

CREATE OR REPLACE FUNCTION {schema}.append_events(
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
) LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_category text := split_part(p_stream, '-', 1);
    v_current bigint;
    v_head bigint;
BEGIN
    -- The version and position checks below read with a fresh statement snapshot after taking
    -- the locks ("it sees every append that held the locks before us"). That holds only at READ
    -- COMMITTED: under REPEATABLE READ or SERIALIZABLE every statement reads the transaction's
    -- first snapshot, older than the appends we waited for. A conditional append is refused there
    -- (outcome 3, nothing written, the caller's transaction left usable); the store runs its own
    -- appends at READ COMMITTED whatever the database default. An unconditional append is served:
    -- a version computed from a stale snapshot collides on events_stream_version_key.
    IF (p_expected_kind <> 0 OR p_scope IS NOT NULL)
       AND current_setting('transaction_isolation') <> 'read committed' THEN
        RETURN QUERY SELECT 3::smallint, NULL::bigint, NULL::bigint, NULL::bigint,
                            NULL::timestamptz, current_setting('transaction_isolation');
        RETURN;
    END IF;
    -- One statement (statement overhead dominates small appends). Its target list is evaluated
    -- left to right:
    -- 1. The transaction takes its xid before it takes any position, so a reader that sees a
    --    hole also sees the transaction that may still fill it (gap proof).
    -- 2. Scope locks make position preconditions race-free: every append holds its scopes
    --    shared, a precondition holds its scope exclusively, so its check sees every append in
    --    that scope. Always in the order: whole log, category, stream.
    -- 3. The stream lock serialises appends to one stream, so the version check cannot race.
    -- Every key starts with this schema's lock namespace: another schema's appends never wait
    -- for ours, and a reader of this log waits only for appenders of this log.
    PERFORM pg_current_xact_id(),
            CASE WHEN p_scope = '' THEN pg_advisory_xact_lock(1701147137, hashtext({lock_namespace}))
                 ELSE pg_advisory_xact_lock_shared(1701147137, hashtext({lock_namespace})) END,
            CASE WHEN p_scope <> '' THEN pg_advisory_xact_lock(1701147138, hashtext({lock_namespace} || p_scope)) END,
            CASE WHEN p_scope IS NULL OR (p_scope <> '' AND p_scope <> v_category)
                 THEN pg_advisory_xact_lock_shared(1701147138, hashtext({lock_namespace} || v_category)) END,
            pg_advisory_xact_lock(1701147139, hashtext({lock_namespace} || p_stream));

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

REVOKE EXECUTE ON FUNCTION {schema}.append_events(text, smallint, bigint, text, bigint, uuid[], text[], integer[], jsonb[], bytea[], jsonb[], text) FROM PUBLIC;
