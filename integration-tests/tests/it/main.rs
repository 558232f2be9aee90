//! eventrail's integration tests: one binary, every test against a real PostgreSQL.
//!
//! Each test gets its own database cloned from a migrated template (see [`harness`]).

mod cli;
mod commands;
mod config;
mod devdb;
mod errors;
mod gaps;
mod harness;
mod isolation;
mod message_db;
mod migrations;
mod outbox;
mod outbox_aws;
mod outbox_kafka;
mod outbox_outage;
mod outbox_pubsub;
mod pgbouncer;
mod poison;
mod processors;
mod store;
mod tls;
mod torture;
mod two_schemas;
mod worker;
mod worker_faults;
