use std::sync::Arc;

use tokio_postgres::Transaction;
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::error::db;
use crate::tables::Tables;
use crate::{OutboxError, OutboxOptions};

/// The consumer side: exactly-once effect over an at-least-once broker. Record a message's id
/// in the transaction that applies its effect; a redelivery finds the id and is skipped.
///
/// ```no_run
/// # async fn f(pool: deadpool_postgres::Pool, id: uuid::Uuid) -> Result<(), Box<dyn std::error::Error>> {
/// let inbox = eventrail_outbox::Inbox::new(&eventrail_outbox::OutboxOptions::new())?;
/// let mut client = pool.get().await?;
/// let tx = client.transaction().await?;
/// if inbox.record(&tx, "billing", id).await? {
///     tx.execute("UPDATE accounts SET balance = balance + 10 WHERE id = 1", &[]).await?;
/// }
/// tx.commit().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Inbox {
    insert: Arc<str>,
}

impl Inbox {
    /// An inbox in the options' inbox table.
    ///
    /// # Errors
    /// [`OutboxError::Config`] for a refused schema or table name.
    pub fn new(options: &OutboxOptions) -> Result<Self, OutboxError> {
        let tables = Tables::new(options)?;
        Ok(Self {
            insert: format!(
                "INSERT INTO {} (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true",
                tables.inbox
            )
            .into(),
        })
    }

    /// Records that `consumer` processes `message_id` in `tx`. Returns `true` the first time
    /// (apply the effect in `tx`), `false` for a message already processed (skip it). A
    /// concurrent transaction recording the same id waits for this one to end.
    ///
    /// # Errors
    /// [`OutboxError::Database`]; `tx` is then aborted: roll it back.
    pub async fn record(
        &self,
        tx: &Transaction<'_>,
        consumer: &str,
        message_id: Uuid,
    ) -> Result<bool, OutboxError> {
        let rows = tx
            .query_typed(
                &self.insert,
                &[(&consumer, Type::TEXT), (&message_id, Type::UUID)],
            )
            .await
            .map_err(db)?;
        Ok(!rows.is_empty())
    }
}
