#![doc = include_str!("../../../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use eventrail_core::*;

/// The PostgreSQL event store: [`PgEventStore`](postgres::PgEventStore),
/// [`Migrator`](postgres::Migrator), the gap-safe subscription read.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres {
    /// The connection pool the store runs on.
    pub use deadpool_postgres;
    pub use eventrail_store_postgres::*;
    /// The PostgreSQL driver the store runs on.
    pub use tokio_postgres;
}

/// The worker runtime: [`Worker`](worker::Worker), [`Consumer`](worker::Consumer),
/// [`wait_for`](worker::wait_for), [`WorkerAdmin`](worker::WorkerAdmin).
#[cfg(feature = "worker")]
#[cfg_attr(docsrs, doc(cfg(feature = "worker")))]
pub mod worker {
    pub use eventrail_worker::*;
    /// Cancellation tokens that stop a worker gracefully.
    pub use tokio_util::sync::CancellationToken;
}

/// The transactional outbox: [`Outbox`](outbox::Outbox) to enqueue in your transaction,
/// [`Relay`](outbox::Relay) to deliver to a [`Sink`](outbox::Sink), [`Inbox`](outbox::Inbox),
/// [`OutboxAdmin`](outbox::OutboxAdmin). Broker sinks: features `nats`, `amqp`, `sqs`,
/// `kinesis`, `pubsub`.
#[cfg(feature = "outbox")]
#[cfg_attr(docsrs, doc(cfg(feature = "outbox")))]
pub mod outbox {
    pub use eventrail_outbox::*;
    /// Cancellation tokens that stop a relay gracefully.
    pub use tokio_util::sync::CancellationToken;
}

/// The Message DB client: [`MessageDb`](message_db::MessageDb), subscriptions, consumer groups.
#[cfg(feature = "message-db")]
#[cfg_attr(docsrs, doc(cfg(feature = "message-db")))]
pub mod message_db {
    pub use eventrail_message_db::*;
}
