//! eventrail's integration tests: one binary, every test against a real PostgreSQL (and, for
//! the outbox on MySQL, a real MariaDB).
//!
//! Each test gets its own database cloned from a migrated template (see [`harness`]).

mod cli;
mod commands;
mod config;
mod devdb;
mod election;
mod errors;
mod gaps;
mod harness;
mod isolation;
mod message_db;
mod migrations;
mod mysql_harness;
mod outbox;
mod outbox_aws;
mod outbox_backends;
mod outbox_kafka;
mod outbox_outage;
mod outbox_plans;
mod outbox_progress;
mod outbox_pubsub;
mod partitioned;
mod pgbouncer;
mod poison;
mod processors;
mod saga;
mod saga_remote;
mod standby;
mod store;
mod tls;
mod torture;
mod two_schemas;
mod worker;
mod worker_faults;
