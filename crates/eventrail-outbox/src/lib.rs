#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod admin;
#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
mod amqp;
#[cfg(any(feature = "sqs", feature = "kinesis"))]
mod aws;
mod error;
mod inbox;
#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
mod kafka;
#[cfg(feature = "kinesis")]
#[cfg_attr(docsrs, doc(cfg(feature = "kinesis")))]
mod kinesis;
mod message;
#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
mod mysql;
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
#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
pub use kafka::{
    KAFKA_CONTENT_TYPE_HEADER, KAFKA_MESSAGE_ID_HEADER, KafkaSink, KafkaSinkConfig, KafkaSinkError,
};
#[cfg(feature = "kinesis")]
#[cfg_attr(docsrs, doc(cfg(feature = "kinesis")))]
pub use kinesis::KinesisSink;
/// The AMQP client the [`AmqpSink`] runs on.
#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub use lapin;
pub use message::{NewMessage, OutboxMessage};
#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub use mysql::{MYSQL_OUTBOX_MIGRATION, MySqlOutbox, MySqlOutboxAdmin, MySqlRelay};
/// The MySQL/MariaDB driver the [`MySqlOutbox`] and [`MySqlRelay`] run on.
#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub use mysql_async;
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
/// The Kafka client (librdkafka) the [`KafkaSink`] runs on.
#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
pub use rdkafka;
pub use relay::{CycleReport, Relay};
pub use sink::{InMemorySink, PgTableSink, Sink};
#[cfg(feature = "sqs")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqs")))]
pub use sqs::{
    SQS_BODY_ENCODING_ATTRIBUTE, SQS_CONTENT_TYPE_ATTRIBUTE, SQS_MESSAGE_ID_ATTRIBUTE,
    SQS_PARTITION_KEY_ATTRIBUTE, SqsSink,
};
pub use tables::{
    OUTBOX_DESTINATIONS_MIGRATION, OUTBOX_KEYS_MIGRATION, OUTBOX_KEYS_PROGRESS_MIGRATION,
    OUTBOX_MIGRATION, outbox_migrator, with_outbox_migration,
};
