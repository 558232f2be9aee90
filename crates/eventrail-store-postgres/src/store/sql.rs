//! The store's SQL text, formatted once per store with its schema (and lock namespace) filled
//! in, so no statement is built on the hot path.

use super::partitions::Layout;
use crate::keys::{SCOPE_ALL_LOCK, SCOPE_CATEGORY_LOCK, STREAM_LOCK};
use crate::rows::EVENT_COLUMNS;

/// SQL text with the schema filled in once.
#[derive(Debug)]
pub(super) struct Sql {
    pub(super) append: String,
    pub(super) append_locks: String,
    pub(super) reserve_positions: String,
    pub(super) copy_events: String,
    pub(super) read_category: String,
    pub(super) read_all: String,
    pub(super) read_range: String,
    pub(super) read_scope_all: String,
    pub(super) read_scope_category: String,
    pub(super) layout: String,
    pub(super) partitioning: String,
    pub(super) add_partitions: String,
    pub(super) probe: String,
    pub(super) appenders: String,
    /// The lookups by stream name and event id, on the one table.
    table: LayoutSql,
    /// The same on a partitioned log.
    partitioned: LayoutSql,
}

/// The statements that differ with the events table's layout.
#[derive(Debug)]
pub(super) struct LayoutSql {
    pub(super) append_plain: String,
    pub(super) stream_version: String,
    /// The positions of a stream's first and last events, which bound its reads (partitioned
    /// log only).
    pub(super) stream_bounds: Option<String>,
    pub(super) read_stream_forward: String,
    pub(super) read_stream_backward: String,
    pub(super) existing_ids: String,
}

impl Sql {
    /// `schema` quoted, `name` as the user gave it (the lock namespace).
    pub(super) fn new(schema: &str, name: &str) -> Self {
        let namespace = crate::keys::lock_namespace(name);
        let events = format!("{schema}.events");
        let types = "($TYPES::text[] IS NULL OR event_type = ANY($TYPES))";
        Self {
            append_locks: format!("SELECT {}", appender_locks(&namespace)),
            reserve_positions: format!(
                "SELECT ARRAY(SELECT nextval('{schema}.events_global_position_seq') \
                                FROM generate_series(1, $1::int4))"
            ),
            copy_events: format!(
                "COPY {events} (global_position, stream_name, stream_version, event_id, event_type, \
                 schema_version, data, data_binary, metadata) FROM STDIN (FORMAT binary)"
            ),
            append: format!(
                "SELECT * FROM {schema}.append_events($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            ),
            read_category: format!(
                "SELECT {EVENT_COLUMNS} FROM {events} WHERE category = $1 AND global_position >= $2 \
                 AND {} ORDER BY global_position LIMIT $4",
                types.replace("$TYPES", "$3")
            ),
            read_all: format!(
                "SELECT {EVENT_COLUMNS} FROM {events} WHERE global_position >= $1 \
                 AND {} ORDER BY global_position LIMIT $3",
                types.replace("$TYPES", "$2")
            ),
            read_range: format!(
                "SELECT {EVENT_COLUMNS} FROM {events} WHERE global_position > $1 AND global_position <= $2 \
                 AND ($3::text[] IS NULL OR category = ANY($3)) AND {} ORDER BY global_position",
                types.replace("$TYPES", "$4")
            ),
            read_scope_all: format!(
                "SELECT {EVENT_COLUMNS} FROM {events} WHERE global_position > $1 ORDER BY global_position LIMIT $2"
            ),
            read_scope_category: format!(
                "SELECT {EVENT_COLUMNS} FROM {events} WHERE category = $3 AND global_position > $1 \
                 ORDER BY global_position LIMIT $2"
            ),
            layout: format!(
                "SELECT (SELECT relkind = 'p' FROM pg_catalog.pg_class \
                 WHERE oid = to_regclass('{events}'))"
            ),
            partitioning: format!(
                "SELECT partition_size, upper_bound FROM {schema}.event_partitioning"
            ),
            add_partitions: format!("SELECT {schema}.add_event_partitions($1)"),
            // The WAL insert position is read after the statement's snapshot (see
            // `Frontier::wal_insert`); a server in recovery has none to give.
            probe: format!(
                "SELECT pg_current_snapshot()::text, ARRAY(SELECT global_position FROM {events} \
                 WHERE global_position > $1 ORDER BY global_position LIMIT $2), \
                 CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_insert_lsn()::text END"
            ),
            // One read of the lock table (MATERIALIZED: one consistent `pg_lock_status()`), joining
            // each holder of the appender lock to its own transaction id lock.
            appenders: format!(
                "WITH l AS MATERIALIZED (SELECT * FROM pg_locks) \
                 SELECT pg_current_snapshot()::text, ARRAY(SELECT x.transactionid::text FROM l a \
                 JOIN l x ON x.virtualtransaction = a.virtualtransaction AND x.locktype = 'transactionid' \
                  AND x.mode = 'ExclusiveLock' AND x.granted \
                 WHERE a.locktype = 'advisory' AND a.granted \
                  AND a.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                  AND a.classid = {SCOPE_ALL_LOCK}::oid AND a.objsubid = 2 \
                  AND a.objid IN (hashtext('{namespace}')::oid, 0::oid))"
            ),
            table: LayoutSql::table(schema, &namespace),
            partitioned: LayoutSql::partitioned(schema, &namespace),
        }
    }
}

impl Sql {
    /// The statements for `layout`.
    pub(super) fn of(&self, layout: Layout) -> &LayoutSql {
        match layout {
            Layout::Table => &self.table,
            Layout::Partitioned => &self.partitioned,
        }
    }
}

impl LayoutSql {
    /// On the one table: a stream's version is the newest of its events, found by one backward
    /// descent of the stream index. Not `max(stream_version)`: for a stream the statistics
    /// estimate at a row or two (any stream that grew after the last `ANALYZE`), PostgreSQL
    /// plans that `max()` as an aggregate over every index entry of the stream, so each append
    /// read the whole stream (11.5 ms instead of 0.09 ms at 18,900 events).
    fn table(schema: &str, namespace: &str) -> Self {
        let version = format!(
            "(SELECT stream_version FROM {schema}.events WHERE stream_name = $1 \
             ORDER BY stream_version DESC LIMIT 1)"
        );
        Self {
            append_plain: append_plain(schema, namespace, &version),
            stream_version: format!("SELECT {version}"),
            stream_bounds: None,
            read_stream_forward: read_stream(schema, ">=", "", ""),
            read_stream_backward: read_stream(schema, "<=", "", " DESC"),
            existing_ids: format!(
                "SELECT event_id FROM {schema}.events WHERE event_id = ANY($1) LIMIT 1"
            ),
        }
    }

    /// On a partitioned log: a stream's version is its `streams` row, one index probe however
    /// many partitions there are (a `max()` would descend one index per partition); a stream
    /// read takes the positions of the stream's first and last events from that row first
    /// (`stream_bounds`; migration 13) and passes them as `$5` and `$6`, so PostgreSQL opens
    /// only the partitions between them (pruned when the plan starts: the others are neither
    /// opened nor searched, where bounds read by a subquery of the same statement would still
    /// open every partition); event ids are looked up in `event_ids`.
    fn partitioned(schema: &str, namespace: &str) -> Self {
        let version = format!("(SELECT version FROM {schema}.streams WHERE stream_name = $1)");
        let bounded = " AND global_position >= $5 AND global_position <= $6";
        Self {
            append_plain: append_plain(schema, namespace, &version),
            stream_version: format!("SELECT {version}"),
            stream_bounds: Some(format!(
                "SELECT first_position, last_position FROM {schema}.streams WHERE stream_name = $1"
            )),
            read_stream_forward: read_stream(schema, ">=", bounded, ""),
            read_stream_backward: read_stream(schema, "<=", bounded, " DESC"),
            existing_ids: format!(
                "SELECT event_id FROM {schema}.event_ids WHERE event_id = ANY($1) LIMIT 1"
            ),
        }
    }
}

/// A page of stream `$1` from version `$2` (`from` is `>=` forward, `<=` backward), of the
/// event types `$3` (all when null), at most `$4` events, with `and` added to the filter.
fn read_stream(schema: &str, from: &str, and: &str, order: &str) -> String {
    format!(
        "SELECT {EVENT_COLUMNS} FROM {schema}.events WHERE stream_name = $1 AND stream_version {from} $2 \
         AND ($3::text[] IS NULL OR event_type = ANY($3)){and} ORDER BY stream_version{order} LIMIT $4"
    )
}

/// What every append takes before it draws a position, in this order (the gap proof): its
/// transaction id, the appender (whole-log) and category locks shared, and the stream lock, for
/// the stream `$1`. Without a position precondition: that one takes its scope exclusively.
fn appender_locks(namespace: &str) -> String {
    format!(
        "pg_current_xact_id() AS xid, \
         pg_advisory_xact_lock_shared({SCOPE_ALL_LOCK}, hashtext('{namespace}')), \
         pg_advisory_xact_lock_shared({SCOPE_CATEGORY_LOCK}, \
             hashtext('{namespace}' || split_part($1, '-', 1))), \
         pg_advisory_xact_lock({STREAM_LOCK}, hashtext('{namespace}' || $1))"
    )
}

/// The plain append (no position precondition) as one SQL statement, without the plpgsql call
/// of `append_events` (which costs as much server time as the INSERT itself). It takes what the
/// function takes, in the same order: the transaction id, then the appender (whole-log) and
/// category locks shared and the stream lock, all in the `held` CTE, which every inserted row
/// joins, so no position is drawn before them (the gap proof).
///
/// Unlike the function, its snapshot is the statement's, taken before it waited for the stream
/// lock, so its version may be stale: the version check is run against that snapshot and, when
/// it fails, nothing is written (no row) and the caller asks the function for the authoritative
/// answer; when it passes on a stale version, the insert collides on `events_stream_version_key`
/// and the caller does the same. The store's own autocommit appends use it: a failed statement
/// there aborts nothing of a caller's.
///
/// Parameters: `$1` stream, `$2` expected kind (as the function's), `$3` expected version,
/// `$4`..`$9` the event columns. Returns each event's position and stream version, in order.
fn append_plain(schema: &str, namespace: &str, version: &str) -> String {
    let locks = appender_locks(namespace);
    format!(
        "WITH held AS MATERIALIZED (SELECT {locks}), head AS MATERIALIZED ( \
             SELECT {version} AS version \
         ) \
         INSERT INTO {schema}.events AS e \
             (stream_name, stream_version, event_id, event_type, schema_version, data, data_binary, metadata) \
         SELECT $1, coalesce(h.version, -1) + n.ord, n.id, n.event_type, n.schema_version, \
                n.data, n.data_binary, n.metadata \
           FROM held, head h, \
                unnest($4::uuid[], $5::text[], $6::int4[], $7::jsonb[], $8::bytea[], $9::jsonb[]) \
                WITH ORDINALITY AS n(id, event_type, schema_version, data, data_binary, metadata, ord) \
          WHERE $2::int2 = 0 \
             OR ($2 = 1 AND h.version IS NULL) \
             OR ($2 = 2 AND h.version IS NOT NULL) \
             OR ($2 = 3 AND h.version = $3::int8) \
          ORDER BY n.ord \
         RETURNING e.global_position, e.stream_version"
    )
}
