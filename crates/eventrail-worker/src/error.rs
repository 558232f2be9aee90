use eventrail_core::{BoxError, StoreError};
use eventrail_store_postgres::{ConfigError, ConnectError};

/// Errors of the worker runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// A consumer name is empty or used twice: fix the consumer list.
    #[error("invalid consumer name {name:?}: {reason}")]
    InvalidConsumer {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A table, schema or channel name was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The worker's registration row disappeared (an operator removed it, or it was cleaned up
    /// as stale): the worker stopped instead of running unseen. Restart it.
    #[error("worker {0} is no longer registered")]
    Deregistered(uuid::Uuid),
    /// The worker's own session connection (holding its identity and leadership locks) was lost.
    /// [`Worker::run`](crate::Worker::run) no longer returns it: it reconnects with backoff and
    /// registers again. Kept for callers that match on it.
    #[error("the worker's session connection was lost")]
    SessionLost(#[source] BoxError),
    /// The consumer is parked after repeated failures: see its error, fix, then resume it.
    #[error("consumer {consumer} is parked: {error}")]
    ConsumerParked {
        /// The consumer.
        consumer: String,
        /// Its last error.
        error: String,
    },
    /// `skip` was refused: the consumer is not parked at an event whose checkpoint is right
    /// before it. See `eventrail status`; resume it instead if nothing is to be skipped.
    #[error("consumer {consumer} has no parked event to skip: {reason}")]
    NotParked {
        /// The consumer.
        consumer: String,
        /// Why.
        reason: &'static str,
    },
    /// No such consumer is registered.
    #[error("unknown consumer {0:?}")]
    UnknownConsumer(String),
    /// Waiting for a checkpoint took longer than allowed.
    #[error("timed out waiting for consumer {consumer} to reach position {position}")]
    Timeout {
        /// The consumer.
        consumer: String,
        /// The awaited position.
        position: u64,
    },
    /// The event store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A connection could not be opened (timed out, TLS refused, refused by the server) or its
    /// settings are wrong: see [`ConnectError`] and its `is_retryable`.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A position PostgreSQL cannot hold (above `i64::MAX`).
    #[error("position {position} is out of range")]
    InvalidPosition {
        /// The refused position.
        position: u64,
    },
    /// A rewind to a position beyond the head of the log: the consumer would pass events that
    /// are not appended yet. Force it (`--force`, [`WorkerAdmin::rewind_beyond_head`]) if meant.
    ///
    /// [`WorkerAdmin::rewind_beyond_head`]: crate::WorkerAdmin::rewind_beyond_head
    #[error(
        "position {position} is beyond the head of the log ({head}): use --force to rewind there anyway"
    )]
    BeyondHead {
        /// The refused position.
        position: u64,
        /// The head of the log.
        head: u64,
    },
    /// The leader election settings can never work (no endpoint, a key prefix that is not an
    /// absolute path): fix the [`LeaderMode`](crate::LeaderMode).
    #[error("invalid leader election settings: {reason}")]
    InvalidElection {
        /// Why.
        reason: &'static str,
    },
    /// The coordination service (etcd, ZooKeeper) failed or could not be reached; the worker
    /// keeps retrying and leads only once it answers again.
    #[error("leader election on {service} failed")]
    Election {
        /// `etcd` or `zookeeper`.
        service: &'static str,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// The database or the connection failed.
    #[error("worker database operation failed")]
    Database(#[source] BoxError),
}

pub(crate) fn db(error: impl Into<BoxError>) -> WorkerError {
    WorkerError::Database(eventrail_store_postgres::classify(error.into()))
}

impl WorkerError {
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

    /// Whether trying again later may succeed (a lost connection, a serialization failure, a
    /// server restarting), as opposed to a mistake that must be fixed first.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store(e) => e.is_retryable(),
            Self::Connect(e) => e.is_retryable(),
            Self::SessionLost(_) | Self::Timeout { .. } | Self::Election { .. } => true,
            Self::Database(_) => self
                .database_error()
                .is_none_or(eventrail_core::DatabaseError::is_retryable),
            _ => false,
        }
    }
}

pub(crate) use eventrail_core::error_chain as chain;
