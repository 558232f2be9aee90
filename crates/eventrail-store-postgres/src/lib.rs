//! eventrail's PostgreSQL event store.
//!
//! - [`PgEventStore`] appends in one round trip with race-free expected-version and
//!   expected-position checks, runs [`StatelessProcessor`](eventrail_core::StatelessProcessor)s in
//!   the append transaction, joins a caller's transaction ([`PgEventStore::append_in`]) and reads
//!   streams, categories and the whole log.
//! - [`PgEventStore::read_safe`] follows the log without ever passing a position that may still
//!   commit: holes in `global_position` are skipped only when proven permanent, and every skip
//!   comes back with its evidence ([`GapSkip`]).
//! - [`Migrator`] applies the embedded migrations under an advisory lock, with checksums.
//!
//! # Gap safety: the argument
//!
//! Positions come from a sequence with `CACHE 1`, so a smaller position was handed out earlier.
//! `append_events` takes the transaction's xid, then the log's *appender lock* (an advisory
//! transaction lock every append holds), and only then a position; the lock is held until the
//! transaction ends. When a reader sees a hole at `h` below a committed position under snapshot
//! `S`, the transaction that took `h` was in progress in `S` (or rolled back). Right after, the
//! reader reads the holders of the appender lock from `pg_locks` (with their xids): a holder of
//! `h` still running then is among them. Once a later snapshot shows none of those candidates
//! (the ones in progress in `S`) in progress, every holder of `h` has ended before it, so a hole
//! still missing from the rows read under that snapshot can never commit, and it is skipped.
//! Every hole of a probe window is observed together, so they mature together. No clock is
//! involved, and only transactions appending to this log are waited for: a long transaction
//! elsewhere in the cluster, or one that does not append, never delays a reader.
//!
//! Raw `INSERT`s into the events table bypass the appender lock and are not covered by the proof:
//! append through the store.
//!
//! The alternative used by Emmett and Watermill (read only `transaction_id < xmin`) needs no proof
//! but stalls every reader on any long writer in the cluster, even when there is no hole; this
//! store stalls only on an actual hole, and reports who holds it ([`FrontierStall`]).
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod connect;
mod error;
mod frontier;
pub mod keys;
mod migrate;
mod options;
mod rows;
mod store;

pub use config::{
    ConfigFile, ConfigFileError, EventrailConfig, EventrailConfigBuilder, OutboxTables,
    WorkerTables,
};
pub use connect::{
    DEFAULT_ACQUIRE_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_CONNECTIONS, ListenEvent,
    PgConnectOptions, PgConnection, PgListener, PgTlsStream, SslClientCert, SslMode, SslRootCert,
};
pub use error::{
    ConfigError, ConnectError, MigrationError, classify, database_error, is_retryable_sqlstate,
};
pub use frontier::{
    BlockingSession, Frontier, FrontierStall, GapSkip, GapWatch, HoleEvidence, SafeRead, Snapshot,
    widen_xid,
};
pub use migrate::{Migration, MigrationInfo, MigrationState, Migrator, is_known_migration};
pub use options::{
    PgStoreOptions, QualifiedTable, from_sql_int, qualify_table, to_sql_int, validate_identifier,
};
pub use store::{PgEventStore, PgEventStoreBuilder, PgStatelessProcessor};
