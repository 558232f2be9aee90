//! Enqueueing in the caller's MySQL transaction.

use std::sync::Arc;

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Transaction, Value};
use tracing::instrument;
use uuid::Uuid;

use super::error::{DUPLICATE_KEY, db, server_code};
use super::tables::{MAX_TEXT, MySqlTables, bucket};
use crate::message::headers_json;
use crate::{NewMessage, OutboxError, OutboxOptions};

/// Rows per INSERT statement (6 parameters each, well under MySQL's 65,535).
const INSERT_CHUNK: usize = 1000;

/// The producer side on MySQL/MariaDB: enqueues messages inside the caller's transaction, so
/// they exist exactly when the business writes they belong to commit. The same semantics as
/// [`Outbox`](crate::Outbox) on PostgreSQL; the relay is [`MySqlRelay`](crate::MySqlRelay).
///
/// ```no_run
/// # async fn f(pool: mysql_async::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// use eventrail_outbox::{MySqlOutbox, NewMessage, OutboxOptions};
/// use mysql_async::prelude::Queryable;
/// let outbox = MySqlOutbox::new(&OutboxOptions::new())?;
/// outbox.migrate(&pool).await?; // once, at deployment: idempotent
/// let mut conn = pool.get_conn().await?;
/// let mut tx = conn.start_transaction(mysql_async::TxOpts::default()).await?;
/// tx.query_drop("UPDATE orders SET state = 'paid' WHERE id = 42").await?;
/// outbox.enqueue(&mut tx, NewMessage::json("orders.paid", "order-42", &serde_json::json!({"id": 42}))).await?;
/// tx.commit().await?; // the message exists only if the update committed
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MySqlOutbox {
    tables: Arc<MySqlTables>,
}

impl MySqlOutbox {
    /// An outbox with the options' table names. On MySQL, an unqualified name is a table of the
    /// connection's database and `database.table` one of another database; the options'
    /// schema and notify channel are not used (MySQL has no LISTEN: relays poll). The key
    /// locks live in `<outbox>_key_locks`, the schema version in `<outbox>_migrations`.
    ///
    /// # Errors
    /// [`OutboxError::Config`] for a refused table name.
    pub fn new(options: &OutboxOptions) -> Result<Self, OutboxError> {
        Ok(Self {
            tables: Arc::new(MySqlTables::new(&options.tables)?),
        })
    }

    /// Creates the outbox's tables when they are missing (idempotent; concurrent calls wait
    /// for each other), and records the schema version.
    ///
    /// # Errors
    /// [`OutboxError::Migration`] when the database holds a newer outbox schema than this
    /// library knows (or another migration held the lock for a minute),
    /// [`OutboxError::Database`] otherwise.
    pub async fn migrate(&self, pool: &mysql_async::Pool) -> Result<(), OutboxError> {
        let mut conn = pool.get_conn().await.map_err(db)?;
        self.tables.migrate(&mut conn).await
    }

    /// The migration's SQL with this outbox's names, to apply with other tools.
    #[must_use]
    pub fn migration_sql(&self) -> String {
        self.tables.migration_sql()
    }

    /// Enqueues one message in `tx` and returns its id.
    ///
    /// # Errors
    /// As [`MySqlOutbox::enqueue_batch`].
    pub async fn enqueue(
        &self,
        tx: &mut Transaction<'_>,
        message: NewMessage,
    ) -> Result<Uuid, OutboxError> {
        let ids = self.enqueue_batch(tx, vec![message]).await?;
        ids.into_iter()
            .next()
            .ok_or_else(|| db("the insert returned no id"))
    }

    /// Enqueues messages in `tx`, in order, and returns their ids.
    ///
    /// Producers of one partition key are serialized until they commit (each locks its keys'
    /// rows in `<outbox>_key_locks`, one of 65,536 buckets per key, in ascending order, before
    /// it inserts), so the outbox order of a key is its commit order. Relays find the messages
    /// by polling.
    ///
    /// # Errors
    /// [`OutboxError::InvalidMessage`] before any query (an empty or over-long partition key,
    /// destination or content type: MySQL keeps at most 255 characters);
    /// [`OutboxError::DuplicateMessageId`] when an id is already in the outbox, and
    /// [`OutboxError::Database`] otherwise. MySQL undoes only the failed statement: roll `tx`
    /// back, since the key locks were taken.
    #[instrument(skip_all, fields(messages = messages.len()))]
    pub async fn enqueue_batch(
        &self,
        tx: &mut Transaction<'_>,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<Uuid>, OutboxError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        for m in &messages {
            m.validate()?;
            for (what, value) in [
                ("partition key", &m.partition_key),
                ("destination", &m.destination),
                ("content type", &m.content_type),
            ] {
                if value.chars().count() > MAX_TEXT {
                    return Err(OutboxError::InvalidMessage(format!(
                        "{what} longer than {MAX_TEXT} characters"
                    )));
                }
            }
        }
        let mut buckets: Vec<u32> = messages.iter().map(|m| bucket(&m.partition_key)).collect();
        buckets.sort_unstable();
        buckets.dedup();
        tx.query_drop(self.tables.lock_buckets(&buckets))
            .await
            .map_err(db)?;
        let ids: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
        for chunk in messages.chunks(INSERT_CHUNK) {
            let rows = vec!["(?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))"; chunk.len()];
            let sql = format!(
                "INSERT INTO {} (message_id, partition_key, destination, headers, payload, content_type, created_at, next_attempt_at) VALUES {}",
                self.tables.outbox,
                rows.join(", ")
            );
            let mut params = Vec::with_capacity(chunk.len() * 6);
            for m in chunk {
                params.extend([
                    Value::from(m.id.as_bytes().to_vec()),
                    Value::from(m.partition_key.as_str()),
                    Value::from(m.destination.as_str()),
                    Value::from(headers_json(&m.headers).to_string()),
                    Value::from(m.payload.as_slice()),
                    Value::from(m.content_type.as_str()),
                ]);
            }
            // The message id's unique key is the only one an insert can violate (the
            // sequence is generated).
            match tx.exec_drop(sql, Params::Positional(params)).await {
                Ok(()) => {}
                Err(e) if server_code(&e) == Some(DUPLICATE_KEY) => {
                    return Err(OutboxError::DuplicateMessageId {
                        message_id: (ids.len() == 1).then(|| ids[0]),
                    });
                }
                Err(e) => return Err(db(e)),
            }
        }
        Ok(ids)
    }
}
