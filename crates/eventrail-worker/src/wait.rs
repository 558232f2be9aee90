//! Read-your-writes: wait until a consumer's checkpoint reaches an append's position.

use std::time::Duration;

use eventrail_store_postgres::{ListenEvent, PgConnectOptions, PgListener};
use tracing::warn;

use crate::error::db;
use crate::tables::Tables;
use crate::{TableNames, WorkerError};

/// The `application_name` of [`wait_for`]'s session.
const WAIT_COMPONENT: &str = "eventrail-wait-for";

/// [`wait_for`] with the schema and table names of a configuration.
///
/// # Errors
/// As [`wait_for`].
pub async fn wait_for_config(
    connect: impl Into<PgConnectOptions>,
    config: &eventrail_store_postgres::EventrailConfig,
    consumer: &str,
    position: u64,
    timeout: Duration,
) -> Result<u64, WorkerError> {
    wait_for(
        connect,
        config.schema(),
        config.worker_tables(),
        consumer,
        position,
        timeout,
    )
    .await
}

/// Waits until `consumer` has checkpointed `position` (for example `AppendOutcome::last_position`),
/// woken by the notification each batch commit sends, not by polling. Works whichever worker
/// runs the consumer.
///
/// `connect` is a [`PgConnectOptions`] (TLS, timeouts) or a `tokio_postgres::Config`; the
/// session is named `eventrail-wait-for` unless it sets an `application_name`. A LISTEN
/// connection lost while waiting is opened again and the checkpoint read again.
///
/// Returns the checkpoint reached.
///
/// # Errors
/// [`WorkerError::Timeout`], [`WorkerError::ConsumerParked`] when the consumer is parked,
/// [`WorkerError::Connect`] when the first connection fails (within its connect timeout),
/// [`WorkerError::Database`].
pub async fn wait_for(
    connect: impl Into<PgConnectOptions>,
    schema: &str,
    tables: &TableNames,
    consumer: &str,
    position: u64,
    timeout: Duration,
) -> Result<u64, WorkerError> {
    let tables = Tables::new(tables, schema)?;
    let mut listener = connect
        .into()
        .listener(WAIT_COMPONENT, &[&tables.checkpoint_channel])?;
    let query = format!(
        "SELECT position, parked_at IS NOT NULL, coalesce(last_error, '') FROM {} WHERE consumer = $1",
        tables.checkpoints
    );
    let result = tokio::time::timeout(timeout, async {
        let mut connected = false;
        loop {
            let event = match listener.recv().await {
                Ok(event) => event,
                Err(e) if !connected => return Err(WorkerError::Connect(e)),
                Err(e) => {
                    warn!(error = %crate::error::chain(&e), "wait_for: the LISTEN connection failed; reconnecting");
                    continue;
                }
            };
            let read = match event {
                // LISTEN first, then read: a commit between the two is not missed.
                ListenEvent::Listening { .. } => {
                    connected = true;
                    true
                }
                // A checkpoint of this consumer (or any, when the payload is unexpected).
                ListenEvent::Notification(n) => match n.payload().rsplit_once(' ') {
                    Some((name, at)) if name == consumer => {
                        if let Ok(at) = at.parse::<u64>()
                            && at >= position
                        {
                            return Ok(at);
                        }
                        true
                    }
                    Some(_) => false,
                    None => true,
                },
                _ => false,
            };
            if read && let Some(reached) = check(&listener, &query, consumer, position).await? {
                return Ok(reached);
            }
        }
    })
    .await;
    result.unwrap_or_else(|_| {
        Err(WorkerError::Timeout {
            consumer: consumer.to_owned(),
            position,
        })
    })
}

/// What the checkpoint row says: reached, parked, or not yet (a consumer not registered yet
/// counts as "not there yet": its worker announces it when it registers).
async fn check(
    listener: &PgListener,
    query: &str,
    consumer: &str,
    position: u64,
) -> Result<Option<u64>, WorkerError> {
    let Some(client) = listener.client() else {
        return Ok(None);
    };
    match client.query_opt(query, &[&consumer]).await {
        Ok(Some(row)) => {
            let reached = u64::try_from(row.get::<_, i64>(0)).unwrap_or_default();
            if reached >= position {
                return Ok(Some(reached));
            }
            if row.get::<_, bool>(1) {
                return Err(WorkerError::ConsumerParked {
                    consumer: consumer.to_owned(),
                    error: row.get(2),
                });
            }
            Ok(None)
        }
        Ok(None) => Ok(None),
        // Lost: the listener reconnects and the row is read again then.
        Err(e) if e.is_closed() => Ok(None),
        Err(e) => Err(db(e)),
    }
}
