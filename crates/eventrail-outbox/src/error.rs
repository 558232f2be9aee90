use eventrail_core::{BoxError, StoreError};
use eventrail_store_postgres::ConfigError;
use uuid::Uuid;

/// Errors of enqueueing, relaying and administering the outbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// A table, schema or channel name was refused: pick another.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A message is malformed (an empty destination or partition key): fix the producer.
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// A message with this id is already in the outbox: the producer sent it twice. The
    /// caller's transaction is aborted; roll it back.
    #[error("message id already in the outbox")]
    DuplicateMessageId {
        /// The id, when it could be named.
        message_id: Option<Uuid>,
    },
    /// Appending the events failed (see [`StoreError`]); nothing was enqueued.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The database or the connection failed: retry later.
    #[error("outbox database operation failed")]
    Database(#[source] BoxError),
}

pub(crate) fn db(error: impl Into<BoxError>) -> OutboxError {
    OutboxError::Database(error.into())
}

/// A sink could not deliver a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The broker may accept the message later (unreachable, timed out, negatively
    /// acknowledged): the relay retries with backoff until the attempts run out.
    #[error("transient publish failure")]
    Transient(#[source] BoxError),
    /// The broker will never accept the message (it is too large, its destination cannot exist):
    /// the relay marks it dead at once and parks its partition key.
    #[error("permanent publish failure")]
    Permanent(#[source] BoxError),
}

impl SinkError {
    /// A failure worth retrying.
    pub fn transient(error: impl Into<BoxError>) -> Self {
        Self::Transient(error.into())
    }

    /// A failure not worth retrying.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Self::Permanent(error.into())
    }

    /// Whether retrying is pointless.
    #[must_use]
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Permanent(_))
    }
}

pub(crate) use eventrail_core::error_chain as chain;
