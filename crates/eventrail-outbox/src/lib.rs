//! eventrail's transactional outbox.
//!
//! - [`Outbox`] enqueues messages inside the caller's transaction ([`Outbox::enqueue`],
//!   [`Outbox::enqueue_batch`]), or appends events and enqueues in one transaction
//!   ([`Outbox::append_and_enqueue`]). A rolled-back producer leaves nothing.
//! - [`Relay`] delivers them to a [`Sink`]: it claims due messages with
//!   `FOR UPDATE SKIP LOCKED` and a lease, commits the claim, publishes outside any transaction,
//!   and marks the batch in one statement once the broker acknowledged it. Messages of one
//!   partition key are never in flight together and never reordered; different keys publish
//!   concurrently; several relays may run at once. Failures retry with exponential backoff and
//!   jitter computed on the database clock; after the last attempt (or a permanent error) a
//!   message is dead and its key parked until an operator requeues or purges it
//!   ([`OutboxAdmin`]). Only failures of the message count as attempts: a sink classifies each
//!   failure ([`SinkError`], [`FailureClass`]), and a destination that is unavailable or missing
//!   is backed off as a whole (exponential backoff with jitter on the database clock, see
//!   [`OutboxOptions::destination_backoff`]) while its messages keep their attempts; its keys are
//!   not claimed meanwhile, one publish probes it when the backoff ends, and any answer of the
//!   destination ends the backoff. [`OutboxAdmin::status`] shows the destinations backed off and
//!   the messages blocked behind a dead one. Enqueue sends a NOTIFY hint; relays also poll. Sent messages are
//!   cleaned up after a sliding retention, in bounded batches.
//! - Sinks: [`InMemorySink`], [`PgTableSink`], and behind features NATS JetStream (`nats`),
//!   RabbitMQ (`amqp`), Amazon SQS (`sqs`), Amazon Kinesis (`kinesis`) and Google Cloud Pub/Sub
//!   (`pubsub`). Each passes the message id as the broker's dedup id where the broker has one (on
//!   Pub/Sub, which has none, as an attribute that consumers deduplicate on), and the partition
//!   key as its ordering key.
//! - [`Inbox`] gives consumers exactly-once effect: record the id in the transaction that
//!   applies the message.
//!
//! The tables are migrations 3 and 5 (the destinations backed off), with overridable names:
//! [`outbox_migrator`] applies migrations 1 (the event store), 3 and 5 with one runner;
//! [`with_outbox_migration`] adds 3 and 5 to a migrator of yours (for example the worker's).
//!
//! # Claiming, and why it keeps per-key order
//!
//! A claim is one transaction of two statements. The first finds each key's oldest unsent
//! message (the head) with a loose index scan, one index descent per key, picks the keys whose
//! head is due and unleased, and locks those head rows `FOR UPDATE SKIP LOCKED`: the head's row
//! lock is the key's claim lock, so a key another relay is claiming right now is skipped. The
//! second statement, whose snapshot is taken after the locks were granted and so sees every
//! earlier claim, takes per key the run of eligible messages from the oldest unsent one on (a
//! leased, delayed or dead message ends the run) and leases the head only: a key whose head is
//! leased cannot be claimed, so the head's lease holds the whole run. Producers lock the same key
//! until they commit, so a key's order in the outbox is its commit order.
//!
//! [`Relay::run`] pipelines: while up to [`OutboxOptions::claims_in_flight`] batches' worth of
//! messages publish and settle, it claims the next (their keys are skipped, their heads being
//! leased), and it settles keys as their runs finish, whatever finished during the previous
//! settle going in one statement. While a batch publishes, its leases are renewed
//! every third of the lease in one statement; a key whose lease a renewal finds gone (another
//! relay took it over) publishes nothing more, and the settle, which first locks the heads still
//! leased by this relay, leaves it alone.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod admin;
#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
mod amqp;
#[cfg(any(feature = "sqs", feature = "kinesis"))]
mod aws;
mod error;
mod inbox;
#[cfg(feature = "kinesis")]
#[cfg_attr(docsrs, doc(cfg(feature = "kinesis")))]
mod kinesis;
mod message;
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
mod nats;
mod options;
mod outbox;
#[cfg(feature = "pubsub")]
#[cfg_attr(docsrs, doc(cfg(feature = "pubsub")))]
mod pubsub;
mod relay;
mod sink;
#[cfg(feature = "sqs")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqs")))]
mod sqs;
mod tables;

pub use admin::{DeadMessage, DestinationStatus, OutboxAdmin, OutboxStatus};
#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub use amqp::{AMQP_PARTITION_KEY_HEADER, AmqpSink};
/// The NATS client the [`NatsSink`] runs on.
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub use async_nats;
/// The Kinesis client the [`KinesisSink`] runs on.
#[cfg(feature = "kinesis")]
#[cfg_attr(docsrs, doc(cfg(feature = "kinesis")))]
pub use aws_sdk_kinesis;
/// The SQS client the [`SqsSink`] runs on.
#[cfg(feature = "sqs")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqs")))]
pub use aws_sdk_sqs;
pub use error::{FailureClass, OutboxError, SinkError};
/// The Google Cloud client core (retry policies, the client builder's error) of the
/// [`PubSubSink`].
#[cfg(feature = "pubsub")]
#[cfg_attr(docsrs, doc(cfg(feature = "pubsub")))]
pub use google_cloud_gax;
/// The Google Cloud Pub/Sub client the [`PubSubSink`] runs on.
#[cfg(feature = "pubsub")]
#[cfg_attr(docsrs, doc(cfg(feature = "pubsub")))]
pub use google_cloud_pubsub;
pub use inbox::Inbox;
#[cfg(feature = "kinesis")]
#[cfg_attr(docsrs, doc(cfg(feature = "kinesis")))]
pub use kinesis::KinesisSink;
/// The AMQP client the [`AmqpSink`] runs on.
#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub use lapin;
pub use message::{NewMessage, OutboxMessage};
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub use nats::{NatsSink, PARTITION_KEY_HEADER};
pub use options::{DestinationBackoff, OutboxOptions, OutboxTables, RetryPolicy, Wakeup};
pub use outbox::Outbox;
#[cfg(feature = "pubsub")]
#[cfg_attr(docsrs, doc(cfg(feature = "pubsub")))]
pub use pubsub::{
    PUBSUB_CONTENT_TYPE_ATTRIBUTE, PUBSUB_EMULATOR_DEFAULT_HOST, PUBSUB_MESSAGE_ID_ATTRIBUTE,
    PubSubSink,
};
pub use relay::{CycleReport, Relay};
pub use sink::{InMemorySink, PgTableSink, Sink};
#[cfg(feature = "sqs")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqs")))]
pub use sqs::{
    SQS_BODY_ENCODING_ATTRIBUTE, SQS_CONTENT_TYPE_ATTRIBUTE, SQS_MESSAGE_ID_ATTRIBUTE,
    SQS_PARTITION_KEY_ATTRIBUTE, SqsSink,
};
pub use tables::{
    OUTBOX_DESTINATIONS_MIGRATION, OUTBOX_MIGRATION, outbox_migrator, with_outbox_migration,
};
