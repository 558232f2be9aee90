use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use deadpool_postgres::Pool;
use eventrail_store_postgres::validate_identifier;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use crate::message::headers_json;
use crate::{OutboxError, OutboxMessage, SinkError};

/// Where a relay delivers messages: a broker client.
///
/// `publish` returns only once the broker acknowledged the message (then the relay may mark it
/// sent). It should pass [`OutboxMessage::id`] as the broker's dedup/message id and
/// [`OutboxMessage::partition_key`] as its ordering key where the broker has one. The relay
/// calls it for one message of a partition key at a time, and for many keys concurrently.
pub trait Sink: Send + Sync + 'static {
    /// Delivers one message and waits for the broker's acknowledgement.
    ///
    /// # Errors
    /// [`SinkError::Transient`] to retry the message later (counting the attempt),
    /// [`SinkError::Permanent`] to dead-letter it at once, [`SinkError::Unavailable`] or
    /// [`SinkError::Missing`] to back the whole destination off (not counting the attempt).
    /// Classify by whom the failure is about: the message, or the destination.
    fn publish(
        &self,
        message: &OutboxMessage,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
}

impl<S: Sink> Sink for Arc<S> {
    fn publish(
        &self,
        message: &OutboxMessage,
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        (**self).publish(message)
    }
}

/// A sink that keeps every delivery in memory (duplicates included), for tests and for
/// measuring the database side of the relay alone. Clones share the deliveries. It never fails,
/// so it has no failure to classify.
#[derive(Clone, Default)]
pub struct InMemorySink {
    delivered: Arc<Mutex<Vec<OutboxMessage>>>,
}

impl fmt::Debug for InMemorySink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemorySink")
            .field("delivered", &self.len())
            .finish()
    }
}

impl InMemorySink {
    /// An empty sink.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Every delivery so far, in delivery order.
    #[must_use]
    pub fn messages(&self) -> Vec<OutboxMessage> {
        self.delivered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many deliveries so far.
    #[must_use]
    pub fn len(&self) -> usize {
        self.delivered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether nothing was delivered yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Sink for InMemorySink {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        self.delivered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(message.clone());
        Ok(())
    }
}

/// A sink that inserts each message into a PostgreSQL table (possibly in another database),
/// keyed by message id: a redelivery is absorbed by the primary key. The commit is the ack.
///
/// Failures are classified by SQLSTATE: a connection that cannot be had or is lost makes the
/// destination unavailable, a missing table or schema makes it missing, bad data (classes 22
/// and 23) is permanent for the message.
#[derive(Clone)]
pub struct PgTableSink {
    pool: Pool,
    table: String,
    insert: String,
}

impl fmt::Debug for PgTableSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTableSink")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl PgTableSink {
    /// A sink into `table` (`name` or `schema.name`, unqualified names in the search path).
    ///
    /// # Errors
    /// [`OutboxError::Config`] for a name that is not a plain identifier.
    pub fn new(pool: Pool, table: &str) -> Result<Self, OutboxError> {
        let table = match table.split_once('.') {
            Some((schema, name)) => format!(
                "{}.{}",
                validate_identifier("schema", schema)?,
                validate_identifier("sink table", name)?
            ),
            None => validate_identifier("sink table", table)?,
        };
        let insert = format!(
            "INSERT INTO {table} (message_id, sequence, partition_key, destination, headers, payload, content_type)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (message_id) DO NOTHING"
        );
        Ok(Self {
            pool,
            table,
            insert,
        })
    }

    /// Creates the table when it does not exist.
    ///
    /// # Errors
    /// [`OutboxError::Database`].
    pub async fn create_table(&self) -> Result<(), OutboxError> {
        let client = self.pool.get().await.map_err(crate::error::db)?;
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {} (
                     message_id    uuid        PRIMARY KEY,
                     sequence      bigint      NOT NULL,
                     partition_key text        NOT NULL,
                     destination   text        NOT NULL,
                     headers       jsonb       NOT NULL,
                     payload       bytea       NOT NULL,
                     content_type  text        NOT NULL,
                     received_at   timestamptz NOT NULL DEFAULT now()
                 )",
                self.table
            ))
            .await
            .map_err(crate::error::db)
    }
}

impl Sink for PgTableSink {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        // No connection from the pool: the database is unreachable (or the pool exhausted).
        let client = self.pool.get().await.map_err(SinkError::unavailable)?;
        client
            .execute_typed(
                &self.insert,
                &[
                    (&message.id, Type::UUID),
                    (&message.sequence, Type::INT8),
                    (&message.partition_key, Type::TEXT),
                    (&message.destination, Type::TEXT),
                    (&headers_json(&message.headers), Type::JSONB),
                    (&message.payload, Type::BYTEA),
                    (&message.content_type, Type::TEXT),
                ],
            )
            .await
            .map_err(classify)?;
        Ok(())
    }
}

/// By SQLSTATE: bad data and integrity errors (classes 22 and 23, a duplicate id aside) are
/// the message's and fail again; a missing table or schema (which an operator may create) makes
/// the destination missing; a lost or refused connection (no SQLSTATE, class 08, a server
/// shutting down or starting, out of resources, privileges refused) makes it unavailable; the
/// rest (serialization failures, lock timeouts…) counts against the message.
fn classify(error: tokio_postgres::Error) -> SinkError {
    let Some(code) = error.code() else {
        return SinkError::unavailable(error); // the connection, not the database, failed
    };
    let class = &code.code()[..2];
    if (class == "22" || class == "23") && code != &SqlState::UNIQUE_VIOLATION {
        SinkError::permanent(error)
    } else if code == &SqlState::UNDEFINED_TABLE || code == &SqlState::INVALID_SCHEMA_NAME {
        SinkError::missing(error)
    } else if class == "08"
        || class == "53"
        || class == "57"
        || code == &SqlState::INSUFFICIENT_PRIVILEGE
    {
        SinkError::unavailable(error)
    } else {
        SinkError::transient(error)
    }
}
