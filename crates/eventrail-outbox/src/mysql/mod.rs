//! The outbox on MySQL/MariaDB (the `mysql` feature): [`MySqlOutbox`] enqueues in the
//! caller's `mysql_async` transaction, [`MySqlRelay`] relays with the same loop and semantics
//! as the PostgreSQL relay, over MySQL's statements, and [`MySqlOutboxAdmin`] shows the status
//! and handles dead letters.
//!
//! Needs MySQL 8.0 or MariaDB 10.6 or later (`FOR UPDATE SKIP LOCKED`, `JSON_TABLE`, window
//! functions); tested against MariaDB.

mod admin;
mod error;
mod outbox;
mod relay;
mod tables;

pub use admin::MySqlOutboxAdmin;
pub use outbox::MySqlOutbox;
pub use relay::MySqlRelay;
pub use tables::MYSQL_OUTBOX_MIGRATION;
