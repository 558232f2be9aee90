use std::sync::Arc;

use eventrail_core::{AppendOutcome, AppendRequest};
use eventrail_store_postgres::PgEventStore;
use tokio_postgres::Transaction;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tracing::instrument;
use uuid::Uuid;

use crate::error::db;
use crate::message::headers_json;
use crate::tables::Tables;
use crate::{NewMessage, OutboxError, OutboxOptions};

/// The producer side: enqueues messages inside the caller's transaction, so they exist exactly
/// when the business writes (and events) they belong to commit.
///
/// ```no_run
/// # async fn f(pool: deadpool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// use eventrail_outbox::{NewMessage, Outbox, OutboxOptions};
/// let outbox = Outbox::new(&OutboxOptions::new())?;
/// let mut client = pool.get().await?;
/// let tx = client.transaction().await?;
/// tx.execute("UPDATE orders SET state = 'paid' WHERE id = 42", &[]).await?;
/// outbox.enqueue(&tx, NewMessage::json("orders.paid", "order-42", &serde_json::json!({"id": 42}))).await?;
/// tx.commit().await?; // the message exists only if the update committed
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Outbox {
    tables: Arc<Tables>,
}

impl Outbox {
    /// An outbox with these table names and notify channel.
    ///
    /// # Errors
    /// [`OutboxError::Config`] for a refused schema, table or channel name.
    pub fn new(options: &OutboxOptions) -> Result<Self, OutboxError> {
        Ok(Self {
            tables: Arc::new(Tables::new(options)?),
        })
    }

    /// Enqueues one message in `tx` and returns its id.
    ///
    /// # Errors
    /// As [`Outbox::enqueue_batch`].
    pub async fn enqueue(
        &self,
        tx: &Transaction<'_>,
        message: NewMessage,
    ) -> Result<Uuid, OutboxError> {
        let ids = self.enqueue_batch(tx, vec![message]).await?;
        ids.into_iter()
            .next()
            .ok_or_else(|| db("the insert returned no id"))
    }

    /// Enqueues messages in `tx`, in order, and returns their ids. One round trip.
    ///
    /// Producers of one partition key are serialized until they commit (a transaction-level
    /// advisory lock per key), so the outbox order of a key is its commit order. The relay is
    /// woken by a NOTIFY hint sent with the commit.
    ///
    /// # Errors
    /// [`OutboxError::InvalidMessage`] before any query; [`OutboxError::DuplicateMessageId`]
    /// when an id is already in the outbox, and [`OutboxError::Database`] otherwise, after which
    /// `tx` is aborted: roll it back.
    #[instrument(skip_all, fields(messages = messages.len()))]
    pub async fn enqueue_batch(
        &self,
        tx: &Transaction<'_>,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<Uuid>, OutboxError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        for m in &messages {
            m.validate()?;
        }
        let ids: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
        let keys: Vec<&str> = messages.iter().map(|m| m.partition_key.as_str()).collect();
        let destinations: Vec<&str> = messages.iter().map(|m| m.destination.as_str()).collect();
        let headers: Vec<serde_json::Value> =
            messages.iter().map(|m| headers_json(&m.headers)).collect();
        let payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload.as_slice()).collect();
        let content_types: Vec<&str> = messages.iter().map(|m| m.content_type.as_str()).collect();
        let t = &self.tables;
        let lock_params: [(&(dyn ToSql + Sync), Type); 1] = [(&keys, Type::TEXT_ARRAY)];
        let insert_params: [(&(dyn ToSql + Sync), Type); 6] = [
            (&ids, Type::UUID_ARRAY),
            (&keys, Type::TEXT_ARRAY),
            (&destinations, Type::TEXT_ARRAY),
            (&headers, Type::JSONB_ARRAY),
            (&payloads, Type::BYTEA_ARRAY),
            (&content_types, Type::TEXT_ARRAY),
        ];
        let notify_params: [(&(dyn ToSql + Sync), Type); 1] = [(&t.channel, Type::TEXT)];
        // Pipelined: lock, insert and hint go out together.
        let result = futures::try_join!(
            tx.query_typed(&t.lock_keys, &lock_params),
            tx.query_typed(&t.insert, &insert_params),
            tx.query_typed("SELECT pg_notify($1, '')", &notify_params),
        );
        match result {
            Ok((_, rows, _)) => Ok(rows.iter().map(|r| r.get(0)).collect()),
            Err(e) if self.is_duplicate(&e) => Err(OutboxError::DuplicateMessageId {
                message_id: (ids.len() == 1).then(|| ids[0]),
            }),
            Err(e) => Err(db(e)),
        }
    }

    fn is_duplicate(&self, error: &tokio_postgres::Error) -> bool {
        error.as_db_error().is_some_and(|e| {
            e.code() == &SqlState::UNIQUE_VIOLATION
                && e.table() == Some(self.tables.outbox_bare.as_str())
        })
    }

    /// Appends events and enqueues messages in one transaction of its own: both commit, or
    /// neither does.
    ///
    /// # Errors
    /// [`OutboxError::Store`] when the append is refused (a wrong expected version, a veto),
    /// the errors of [`Outbox::enqueue_batch`], and [`OutboxError::Database`].
    #[instrument(skip_all, fields(stream = %request.stream, messages = messages.len()))]
    pub async fn append_and_enqueue(
        &self,
        store: &PgEventStore,
        request: AppendRequest,
        messages: Vec<NewMessage>,
    ) -> Result<(AppendOutcome, Vec<Uuid>), OutboxError> {
        let mut client = store.pool().get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        let outcome = store.append_in(&tx, request).await?;
        let ids = self.enqueue_batch(&tx, messages).await?;
        tx.commit().await.map_err(db)?;
        Ok((outcome, ids))
    }
}
