//! The store's SQL text, formatted once per store with its schema (and lock namespace) filled
//! in, so no statement is built on the hot path.

use crate::keys::SCOPE_ALL_LOCK;
use crate::rows::EVENT_COLUMNS;

/// SQL text with the schema filled in once.
#[derive(Debug)]
pub(super) struct Sql {
    pub(super) append: String,
    pub(super) read_stream_forward: String,
    pub(super) read_stream_backward: String,
    pub(super) read_category: String,
    pub(super) read_all: String,
    pub(super) read_range: String,
    pub(super) read_scope_all: String,
    pub(super) read_scope_category: String,
    pub(super) stream_version: String,
    pub(super) probe: String,
    pub(super) appenders: String,
    pub(super) existing_ids: String,
}

impl Sql {
    /// `schema` quoted, `name` as the user gave it (the lock namespace).
    pub(super) fn new(schema: &str, name: &str) -> Self {
        let namespace = crate::keys::lock_namespace(name);
        let events = format!("{schema}.events");
        let types = "($TYPES::text[] IS NULL OR event_type = ANY($TYPES))";
        Self {
            append: format!(
                "SELECT * FROM {schema}.append_events($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            ),
            read_stream_forward: format!(
                "SELECT {EVENT_COLUMNS} FROM {events} WHERE stream_name = $1 AND stream_version >= $2 \
                 AND {} ORDER BY stream_version LIMIT $4",
                types.replace("$TYPES", "$3")
            ),
            read_stream_backward: format!(
                "SELECT {EVENT_COLUMNS} FROM {events} WHERE stream_name = $1 AND stream_version <= $2 \
                 AND {} ORDER BY stream_version DESC LIMIT $4",
                types.replace("$TYPES", "$3")
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
            stream_version: format!(
                "SELECT max(stream_version) FROM {events} WHERE stream_name = $1"
            ),
            probe: format!(
                "SELECT pg_current_snapshot()::text, ARRAY(SELECT global_position FROM {events} \
                 WHERE global_position > $1 ORDER BY global_position LIMIT $2)"
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
            existing_ids: format!("SELECT event_id FROM {events} WHERE event_id = ANY($1) LIMIT 1"),
        }
    }
}
