use eventrail_core::{BoxError, StoreError};
use eventrail_store_postgres::{ConfigError, ConnectError, MigrationError};
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
    /// A connection could not be opened or taken from the pool (timed out, TLS refused,
    /// refused by the server), or its settings are wrong: see [`ConnectError`].
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// Migrating the outbox's tables was refused (the database holds a newer schema than this
    /// library knows: upgrade it; or another migration held the lock): see [`MigrationError`].
    #[error(transparent)]
    Migration(#[from] MigrationError),
    /// The database or the connection failed: retry later.
    #[error("outbox database operation failed")]
    Database(#[source] BoxError),
}

pub(crate) fn db(error: impl Into<BoxError>) -> OutboxError {
    OutboxError::Database(eventrail_store_postgres::classify(error.into()))
}

impl OutboxError {
    /// The database error behind this one, if a database reported it.
    #[must_use]
    pub fn database_error(&self) -> Option<&eventrail_core::DatabaseError> {
        eventrail_core::find_database_error(self)
    }

    /// The SQLSTATE of the database error behind this one, if any.
    #[must_use]
    pub fn code(&self) -> Option<&str> {
        self.database_error()
            .and_then(eventrail_core::DatabaseError::code)
    }

    /// Whether trying again later may succeed (a lost connection, a serialization failure), as
    /// opposed to a mistake that must be fixed first.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store(e) => e.is_retryable(),
            Self::Connect(e) => e.is_retryable(),
            Self::Database(_) => self
                .database_error()
                .is_none_or(eventrail_core::DatabaseError::is_retryable),
            _ => false,
        }
    }
}

/// A sink could not deliver a message, classified by whom the failure is about: the message
/// (it counts against the message's attempts) or its destination (the relay backs the whole
/// destination off and the message keeps its attempts).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// This message may be accepted later (the broker negatively acknowledged it, a transient
    /// refusal of this publish): the relay retries it with backoff and the failure counts
    /// against its attempts, so that it goes dead when they run out.
    #[error("transient publish failure")]
    Transient(#[source] BoxError),
    /// The broker will never accept this message (it is too large, malformed, refused for its
    /// content): the relay marks it dead at once and parks its partition key.
    #[error("permanent publish failure")]
    Permanent(#[source] BoxError),
    /// The destination cannot be reached (connection refused or lost, timed out, the broker
    /// down or throttling): the relay backs the destination off as a whole, with exponential
    /// backoff, and the message keeps its attempts.
    #[error("destination unavailable")]
    Unavailable(#[source] BoxError),
    /// The destination does not exist (a stream, queue, exchange or topic an operator may still
    /// create): backed off as a whole like [`Unavailable`](Self::Unavailable), and shown as
    /// missing in [`OutboxAdmin::status`](crate::OutboxAdmin::status).
    #[error("destination missing")]
    Missing(#[source] BoxError),
}

/// The class of a [`SinkError`]: what the relay does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureClass {
    /// Retry the message later; counts against its attempts.
    MessageTransient,
    /// Dead-letter the message at once.
    MessagePermanent,
    /// Back the destination off; the message keeps its attempts.
    DestinationUnavailable,
    /// Back the destination off (it does not exist yet); the message keeps its attempts.
    DestinationMissing,
}

impl FailureClass {
    /// Whether the failure is about the destination rather than the message.
    #[must_use]
    pub fn is_destination(self) -> bool {
        matches!(
            self,
            Self::DestinationUnavailable | Self::DestinationMissing
        )
    }

    /// The name stored in the database and shown by operators' tools.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MessageTransient => "message-transient",
            Self::MessagePermanent => "message-permanent",
            Self::DestinationUnavailable => "unavailable",
            Self::DestinationMissing => "missing",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        [
            Self::MessageTransient,
            Self::MessagePermanent,
            Self::DestinationUnavailable,
            Self::DestinationMissing,
        ]
        .into_iter()
        .find(|c| c.as_str() == name)
    }
}

impl std::fmt::Display for FailureClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl SinkError {
    /// A failure of this message worth retrying (counts against its attempts).
    pub fn transient(error: impl Into<BoxError>) -> Self {
        Self::Transient(error.into())
    }

    /// A failure of this message not worth retrying.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Self::Permanent(error.into())
    }

    /// The destination cannot be reached now.
    pub fn unavailable(error: impl Into<BoxError>) -> Self {
        Self::Unavailable(error.into())
    }

    /// The destination does not exist (yet).
    pub fn missing(error: impl Into<BoxError>) -> Self {
        Self::Missing(error.into())
    }

    /// Whether retrying is pointless.
    #[must_use]
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Permanent(_))
    }

    /// What the relay does with this failure.
    #[must_use]
    pub fn class(&self) -> FailureClass {
        match self {
            Self::Transient(_) => FailureClass::MessageTransient,
            Self::Permanent(_) => FailureClass::MessagePermanent,
            Self::Unavailable(_) => FailureClass::DestinationUnavailable,
            Self::Missing(_) => FailureClass::DestinationMissing,
        }
    }
}

pub(crate) use eventrail_core::error_chain as chain;
