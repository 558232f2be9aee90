//! eventrail's worker runtime: consumers that scale horizontally over PostgreSQL and never lose
//! or skip an event.
//!
//! Each [`Worker`] registers in `worker_nodes` and heartbeats, holds a session advisory lock on
//! its own identity (its death is visible at once), and takes part in leader election
//! (`pg_try_advisory_lock`, or a lease row behind PgBouncer). The leader assigns consumers
//! evenly over live workers and rebalances on join and leave, moving only what must move (sticky
//! assignment: current assignments stay while their worker is live and the spread is within one). Each worker runs only its
//! assigned consumers; every checkpoint write checks the assignment's epoch in the batch
//! transaction, so a worker that lost a consumer can never commit a batch of it.
//!
//! A consumer loop probes the gap-safe frontier outside the batch transaction, then, in one
//! transaction, hands each event and the transaction to the handler, audits proven gap skips in
//! `consumer_gap_skips` and saves the checkpoint. A failing handler rolls the batch back; the
//! good prefix before the failing event then commits, the event is retried alone with backoff,
//! and the consumer parks at exactly that event (position and error chain in `eventrail status`)
//! until an operator resumes it or skips the event ([`WorkerAdmin::skip`], audited). A row the
//! store cannot decode parks the consumers that read it the same way, without retries.
//!
//! Faults: a worker whose session connection is lost (terminated, the server restarted or
//! failed over) reconnects with backoff, registers again and resumes. A leader whose heartbeat
//! is past the timeout loses leadership even if its session is alive (a candidate terminates
//! that session: the worker's role needs `pg_signal_backend`), and a deposed leader's rebalance
//! is refused in its own transaction. Batches carry server-side timeouts, and a batch of an
//! outdated epoch that holds a checkpoint row is terminated by the consumer's new owner.
//!
//! Read-your-writes: [`wait_for`] returns once a consumer's checkpoint reached a position.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod admin;
mod assign;
mod consumer;
mod consumer_loop;
mod dispatcher;
mod error;
mod fence;
mod options;
mod runtime;
mod tables;
mod wait;

pub use admin::{ConsumerStatus, GapRecord, Status, WorkerAdmin, WorkerStatus};
pub use consumer::{Consumer, ConsumerScope, ReactorConsumer, StatefulConsumer};
pub use error::WorkerError;
pub use options::{DispatcherStrategy, LeaderMode, RetryPolicy, TableNames, WorkerOptions};
pub use runtime::{Worker, WorkerBuilder};
pub use tables::{WORKER_FAULTS_MIGRATION, WORKER_MIGRATION, checkpoint_channel, worker_migrator};
pub use wait::{wait_for, wait_for_config};
