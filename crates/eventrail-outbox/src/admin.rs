use std::sync::Arc;
use std::time::SystemTime;

use deadpool_postgres::Pool;
use uuid::Uuid;

use crate::error::db;
use crate::tables::Tables;
use crate::{OutboxError, OutboxOptions};

/// The outbox at a glance.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OutboxStatus {
    /// Messages waiting to be sent (leased ones included).
    pub pending: u64,
    /// Partition keys currently held by a relay (a relay leases a key's oldest unsent message,
    /// and that lease holds the messages it claimed behind it).
    pub in_flight: u64,
    /// Age of the oldest pending message, in seconds (0 when none).
    pub oldest_pending_age_seconds: f64,
    /// Sent messages not cleaned up yet.
    pub sent: u64,
    /// Dead messages per destination.
    pub dead_by_destination: Vec<(String, u64)>,
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

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or_default()
}

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

    /// Counts by state, the oldest pending age and the dead letters per destination.
    ///
    /// # Errors
    /// [`OutboxError::Database`].
    pub async fn status(&self) -> Result<OutboxStatus, OutboxError> {
        let t = &self.tables.outbox;
        let client = self.pool.get().await.map_err(db)?;
        let row = client
            .query_one(
                &format!(
                    "SELECT count(*) FILTER (WHERE state = 'pending'),
                            count(*) FILTER (WHERE state = 'pending' AND lease_expires_at > now()),
                            coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE state = 'pending'))::float8, 0),
                            count(*) FILTER (WHERE state = 'sent')
                     FROM {t}"
                ),
                &[],
            )
            .await
            .map_err(db)?;
        let dead = client
            .query(
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
        })
    }

    /// Dead messages, oldest first.
    ///
    /// # Errors
    /// [`OutboxError::Database`].
    pub async fn dead(&self, limit: i64) -> Result<Vec<DeadMessage>, OutboxError> {
        let client = self.pool.get().await.map_err(db)?;
        let rows = client
            .query(
                &format!(
                    "SELECT message_id, sequence, partition_key, destination, attempts, last_error, created_at
                     FROM {} WHERE state = 'dead' ORDER BY sequence LIMIT $1",
                    self.tables.outbox
                ),
                &[&limit],
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
            .execute(
                &format!(
                    "UPDATE {} SET state = 'pending', attempts = 0, next_attempt_at = now()
                     WHERE state = 'dead' AND ($1::uuid[] IS NULL OR message_id = ANY($1))",
                    self.tables.outbox
                ),
                &[&ids],
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
            .execute(
                &format!(
                    "DELETE FROM {} WHERE state = 'dead' AND ($1::uuid[] IS NULL OR message_id = ANY($1))",
                    self.tables.outbox
                ),
                &[&ids],
            )
            .await
            .map_err(db)
    }
}
