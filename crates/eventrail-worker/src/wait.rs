//! Read-your-writes: wait until a consumer's checkpoint reaches an append's position.

use std::time::Duration;

use futures::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::error::db;
use crate::tables::Tables;
use crate::{TableNames, WorkerError};

/// Waits until `consumer` has checkpointed `position` (for example `AppendOutcome::last_position`),
/// woken by the notification each batch commit sends, not by polling. Works whichever worker
/// runs the consumer.
///
/// Returns the checkpoint reached.
///
/// # Errors
/// [`WorkerError::Timeout`], [`WorkerError::ConsumerParked`] when the consumer is parked,
/// [`WorkerError::UnknownConsumer`] when no worker registered the consumer before the timeout,
/// [`WorkerError::Database`].
pub async fn wait_for(
    connect: &tokio_postgres::Config,
    schema: &str,
    tables: &TableNames,
    consumer: &str,
    position: u64,
    timeout: Duration,
) -> Result<u64, WorkerError> {
    let tables = Tables::new(tables, schema)?;
    let (client, mut connection) = connect.connect(NoTls).await.map_err(db)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message
                && tx.send(n.payload().to_owned()).is_err()
            {
                return;
            }
        }
    });
    let mut registered = false;
    let result = tokio::time::timeout(timeout, async {
        // LISTEN first, then read: a commit between the two is not missed.
        client.batch_execute(&format!("LISTEN {}", tables.checkpoint_channel)).await.map_err(db)?;
        let query = format!(
            "SELECT position, parked_at IS NOT NULL, coalesce(last_error, '') FROM {} WHERE consumer = $1",
            tables.checkpoints
        );
        loop {
            // A consumer not registered yet counts as "not there yet": its worker announces it
            // when it registers.
            if let Some(row) = client.query_opt(&query, &[&consumer]).await.map_err(db)? {
                registered = true;
                let reached = u64::try_from(row.get::<_, i64>(0)).unwrap_or_default();
                if reached >= position {
                    return Ok(reached);
                }
                if row.get::<_, bool>(1) {
                    return Err(WorkerError::ConsumerParked { consumer: consumer.to_owned(), error: row.get(2) });
                }
            }
            // Wait for a checkpoint of this consumer (or any, when the payload is unexpected).
            loop {
                let Some(payload) = rx.recv().await else {
                    return Err(db("the LISTEN connection closed"));
                };
                match payload.rsplit_once(' ') {
                    Some((name, at)) if name == consumer => {
                        if at.parse::<u64>().is_ok_and(|p| p >= position) {
                            return Ok(at.parse().unwrap_or(position));
                        }
                        break;
                    }
                    Some(_) => {}
                    None => break,
                }
            }
        }
    })
    .await;
    driver.abort();
    result.unwrap_or_else(|_| {
        Err(WorkerError::Timeout {
            consumer: consumer.to_owned(),
            position,
        })
    })
}
