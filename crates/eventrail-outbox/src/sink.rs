use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use deadpool_postgres::Pool;
use eventrail_store_postgres::validate_identifier;
use tokio_postgres::error::SqlState;

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
    /// [`SinkError::Transient`] to retry later, [`SinkError::Permanent`] to dead-letter at once.
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
/// measuring the database side of the relay alone. Clones share the deliveries.
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
        let client = self.pool.get().await.map_err(SinkError::transient)?;
        let statement = client
            .prepare_cached(&self.insert)
            .await
            .map_err(classify)?;
        client
            .execute(
                &statement,
                &[
                    &message.id,
                    &message.sequence,
                    &message.partition_key,
                    &message.destination,
                    &headers_json(&message.headers),
                    &message.payload,
                    &message.content_type,
                ],
            )
            .await
            .map_err(classify)?;
        Ok(())
    }
}

/// Bad data and integrity errors will fail again; everything else (connections, locks,
/// a missing table that may be created) is worth retrying.
fn classify(error: tokio_postgres::Error) -> SinkError {
    let permanent = error.code().is_some_and(|c| {
        let class = &c.code()[..2];
        (class == "22" || class == "23") && c != &SqlState::UNIQUE_VIOLATION
    });
    if permanent {
        SinkError::permanent(error)
    } else {
        SinkError::transient(error)
    }
}
