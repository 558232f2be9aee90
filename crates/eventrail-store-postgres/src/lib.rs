#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod connect;
mod error;
mod frontier;
pub mod keys;
mod migrate;
mod options;
mod rows;
mod statements;
mod store;

pub use config::{
    ConfigFile, ConfigFileError, EventrailConfig, EventrailConfigBuilder, LeaderElection,
    LeaderElectionMode, OutboxTables, SagaTables, WorkerTables,
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
pub use statements::{PooledClient, Statements};
pub use store::{PgEventStore, PgEventStoreBuilder, PgStatelessProcessor, Standby};
