use std::sync::Arc;
use std::time::SystemTime;

use deadpool_postgres::Pool;
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::error::db;
use crate::tables::Tables;
use crate::{FailureClass, OutboxError, OutboxOptions};

/// The outbox at a glance.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OutboxStatus {
    /// Messages waiting to be sent (leased ones included, and those blocked behind a dead
    /// message).
    pub pending: u64,
    /// Pending messages that wait behind a dead message of their partition key: they move only
    /// once an operator requeues or purges it. `pending - blocked` is the ordinary backlog.
    pub blocked: u64,
    /// Partition keys parked by a dead message that have pending messages behind it.
    pub blocked_keys: u64,
    /// Partition keys currently held by a relay (a relay leases a key's oldest unsent message,
    /// and that lease holds the messages it claimed behind it).
    pub in_flight: u64,
    /// Age of the oldest pending message, in seconds (0 when none).
    pub oldest_pending_age_seconds: f64,
    /// Sent messages not cleaned up yet.
    pub sent: u64,
    /// Dead messages per destination.
    pub dead_by_destination: Vec<(String, u64)>,
    /// Destinations backed off because they were unavailable or missing, by destination.
    pub backed_off: Vec<DestinationStatus>,
}

/// A destination the relays back off as a whole: its messages keep their attempts until it
/// answers again.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DestinationStatus {
    /// The destination (as in [`NewMessage::destination`](crate::NewMessage::destination)).
    pub destination: String,
    /// [`FailureClass::DestinationUnavailable`] or [`FailureClass::DestinationMissing`].
    pub class: FailureClass,
    /// When this outage was first seen.
    pub since: SystemTime,
    /// Failed probes so far, the first failure included.
    pub failures: u32,
    /// When a relay publishes to it again (the probe); in the past when the backoff has ended
    /// and no relay has tried yet.
    pub next_attempt_at: SystemTime,
    /// The whole error chain of the last failure.
    pub last_error: String,
    /// Pending messages to it.
    pub pending: u64,
}

/// A dead message, for operators (no payload).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadMessage {
    /// Its id.
    pub id: Uuid,
    /// Its place in the outbox.
    pub sequence: i64,
    /// Its (parked) partition key.
    pub partition_key: String,
    /// Its destination.
    pub destination: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last failure.
    pub last_error: Option<String>,
    /// When it was enqueued.
    pub created_at: SystemTime,
}

/// Operator commands on the outbox: status, dead letters.
#[derive(Debug, Clone)]
pub struct OutboxAdmin {
    pool: Pool,
    tables: Arc<Tables>,
}

use eventrail_store_postgres::from_sql_int as to_u64;

impl OutboxAdmin {
    /// Administers the outbox in `pool`'s database.
    ///
    /// # Errors
    /// [`OutboxError::Config`] for a refused schema or table name.
    pub fn new(pool: Pool, options: &OutboxOptions) -> Result<Self, OutboxError> {
        Ok(Self {
            pool,
            tables: Arc::new(Tables::new(options)?),
        })
    }

    /// Administers the outbox of a configuration.
    ///
    /// # Errors
    /// [`OutboxError::Config`] for a refused schema or table name.
    pub fn from_config(
        pool: Pool,
        config: &eventrail_store_postgres::EventrailConfig,
    ) -> Result<Self, OutboxError> {
        Self::new(pool, &OutboxOptions::from_config(config))
    }

    /// Counts by state, the oldest pending age, the dead letters per destination, the messages
    /// blocked behind dead ones, and the destinations backed off.
    ///
    /// # Errors
    /// [`OutboxError::Database`].
    pub async fn status(&self) -> Result<OutboxStatus, OutboxError> {
        let (t, unsent) = (&self.tables.outbox, &self.tables.unsent);
        let client = self.pool.get().await.map_err(db)?;
        let row = client
            .query_typed_one(
                &format!(
                    "SELECT count(*) FILTER (WHERE o.state = 'pending'),
                            count(*) FILTER (WHERE o.state = 'pending' AND o.lease_expires_at > now()),
                            coalesce(extract(epoch FROM now() - min(o.created_at) FILTER (WHERE o.state = 'pending'))::float8, 0),
                            (SELECT count(*) FROM {} WHERE {})
                     FROM {unsent}",
                    self.tables.all_messages,
                    crate::tables::SENT
                ),
                &[],
            )
            .await
            .map_err(db)?;
        // A key is blocked when a dead message of it precedes pending ones: the relay claims a
        // key only from its oldest unsent message, which is the dead one.
        let blocked = client
            .query_typed_one(
                &format!(
                    "SELECT count(*), count(DISTINCT o.partition_key)
                     FROM {unsent}
                     WHERE o.state = 'pending' AND EXISTS (
                         SELECT 1 FROM {t} AS d
                         WHERE d.state = 'dead' AND d.partition_key = o.partition_key
                           AND d.sequence < o.sequence
                     )"
                ),
                &[],
            )
            .await
            .map_err(db)?;
        let destinations = client
            .query_typed(
                &format!(
                    "SELECT d.destination, d.reason, d.since, d.failures, d.next_attempt_at, d.last_error,
                            (SELECT count(*) FROM {unsent} WHERE o.state = 'pending' AND o.destination = d.destination)
                     FROM {} AS d ORDER BY d.destination",
                    self.tables.destinations
                ),
                &[],
            )
            .await
            .map_err(db)?;
        let dead = client
            .query_typed(
                &format!(
                    "SELECT destination, count(*) FROM {t} WHERE state = 'dead' GROUP BY 1 ORDER BY 1"
                ),
                &[],
            )
            .await
            .map_err(db)?;
        Ok(OutboxStatus {
            pending: to_u64(row.get(0)),
            in_flight: to_u64(row.get(1)),
            oldest_pending_age_seconds: row.get(2),
            sent: to_u64(row.get(3)),
            dead_by_destination: dead.iter().map(|r| (r.get(0), to_u64(r.get(1)))).collect(),
            blocked: to_u64(blocked.get(0)),
            blocked_keys: to_u64(blocked.get(1)),
            backed_off: destinations
                .iter()
                .map(|r| DestinationStatus {
                    destination: r.get(0),
                    class: FailureClass::from_name(r.get(1))
                        .unwrap_or(FailureClass::DestinationUnavailable),
                    since: r.get(2),
                    failures: u32::try_from(r.get::<_, i32>(3)).unwrap_or_default(),
                    next_attempt_at: r.get(4),
                    last_error: r.get(5),
                    pending: to_u64(r.get(6)),
                })
                .collect(),
        })
    }

    /// Dead messages, oldest first.
    ///
    /// # Errors
    /// [`OutboxError::Database`].
    pub async fn dead(&self, limit: i64) -> Result<Vec<DeadMessage>, OutboxError> {
        let client = self.pool.get().await.map_err(db)?;
        let rows = client
            .query_typed(
                &format!(
                    "SELECT message_id, sequence, partition_key, destination, attempts, last_error, created_at
                     FROM {} WHERE state = 'dead' ORDER BY sequence LIMIT $1",
                    self.tables.outbox
                ),
                &[(&limit, Type::INT8)],
            )
            .await
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| DeadMessage {
                id: r.get(0),
                sequence: r.get(1),
                partition_key: r.get(2),
                destination: r.get(3),
                attempts: u32::try_from(r.get::<_, i32>(4)).unwrap_or_default(),
                last_error: r.get(5),
                created_at: r.get(6),
            })
            .collect())
    }

    /// Makes dead messages pending again with fresh attempts (all of them when `ids` is
    /// `None`); their keys resume. Returns how many.
    ///
    /// # Errors
    /// [`OutboxError::Database`].
    pub async fn requeue(&self, ids: Option<&[Uuid]>) -> Result<u64, OutboxError> {
        let client = self.pool.get().await.map_err(db)?;
        client
            .execute_typed(
                &format!(
                    "UPDATE {} SET state = 'pending', attempts = 0, next_attempt_at = now()
                     WHERE state = 'dead' AND ($1::uuid[] IS NULL OR message_id = ANY($1))",
                    self.tables.outbox
                ),
                &[(&ids, Type::UUID_ARRAY)],
            )
            .await
            .map_err(db)
    }

    /// Deletes dead messages (all of them when `ids` is `None`); the later messages of their
    /// keys then flow. Returns how many.
    ///
    /// # Errors
    /// [`OutboxError::Database`].
    pub async fn purge(&self, ids: Option<&[Uuid]>) -> Result<u64, OutboxError> {
        let client = self.pool.get().await.map_err(db)?;
        client
            .execute_typed(
                &format!(
                    "DELETE FROM {} WHERE state = 'dead' AND ($1::uuid[] IS NULL OR message_id = ANY($1))",
                    self.tables.outbox
                ),
                &[(&ids, Type::UUID_ARRAY)],
            )
            .await
            .map_err(db)
    }
}
