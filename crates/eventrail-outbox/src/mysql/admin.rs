//! Operator commands on a MySQL/MariaDB outbox: status and dead letters, as
//! [`OutboxAdmin`](crate::OutboxAdmin) offers them on PostgreSQL.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Pool, Row, Value};
use uuid::Uuid;

use super::error::db;
use super::tables::MySqlTables;
use crate::{
    DeadMessage, DestinationStatus, FailureClass, OutboxError, OutboxOptions, OutboxStatus,
};

/// Status and dead letters of a MySQL/MariaDB outbox, for operators.
#[derive(Debug, Clone)]
pub struct MySqlOutboxAdmin {
    pool: Pool,
    tables: Arc<MySqlTables>,
}

/// Microseconds since the epoch as a time.
fn time(micros: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or_default())
}

/// A DATETIME(6) column as microseconds since the epoch (UTC, whatever the session's zone).
fn micros_of(column: &str) -> String {
    format!("TIMESTAMPDIFF(MICROSECOND, '1970-01-01', {column})")
}

fn take<T: mysql_async::prelude::FromValue>(row: &mut Row, i: usize) -> Result<T, OutboxError> {
    match row.take_opt::<T, usize>(i) {
        Some(Ok(value)) => Ok(value),
        Some(Err(e)) => Err(db(e)),
        None => Err(db(format!("no column {i}"))),
    }
}

/// The pending count, the leased count, the oldest pending age in seconds, the sent count.
type Totals = (Option<i64>, Option<i64>, Option<f64>, Option<i64>);

fn count(value: Option<i64>) -> u64 {
    value.unwrap_or_default().unsigned_abs()
}

impl MySqlOutboxAdmin {
    /// Administers the outbox in `pool`'s database (tables named as for
    /// [`MySqlOutbox::new`](crate::MySqlOutbox::new)).
    ///
    /// # Errors
    /// [`OutboxError::Config`] for a refused table name.
    pub fn new(pool: Pool, options: &OutboxOptions) -> Result<Self, OutboxError> {
        Ok(Self {
            pool,
            tables: Arc::new(MySqlTables::new(&options.tables)?),
        })
    }

    /// Counts by state, the oldest pending age, the dead letters per destination, the messages
    /// blocked behind dead ones, and the destinations backed off; as
    /// [`OutboxAdmin::status`](crate::OutboxAdmin::status).
    ///
    /// # Errors
    /// [`OutboxError::Database`].
    pub async fn status(&self) -> Result<OutboxStatus, OutboxError> {
        let (t, d) = (&self.tables.outbox, &self.tables.destinations);
        let now = "UTC_TIMESTAMP(6)";
        let mut conn = self.pool.get_conn().await.map_err(db)?;
        let totals: Option<Totals> = conn
            .query_first(format!(
                "SELECT SUM(state = 'pending'),
                        SUM(state = 'pending' AND lease_expires_at > {now}),
                        TIMESTAMPDIFF(MICROSECOND, MIN(IF(state = 'pending', created_at, NULL)), {now}) / 1e6,
                        SUM(state = 'sent')
                 FROM {t}"
            ))
            .await
            .map_err(db)?;
        let (pending, in_flight, oldest, sent) = totals.unwrap_or_default();
        // A key is blocked when a dead message of it precedes pending ones.
        let blocked: Option<(i64, i64)> = conn
            .query_first(format!(
                "SELECT COUNT(*), COUNT(DISTINCT p.partition_key)
                 FROM {t} AS p
                 WHERE p.state = 'pending' AND EXISTS (
                     SELECT 1 FROM {t} AS x
                     WHERE x.state = 'dead' AND x.partition_key = p.partition_key AND x.sequence < p.sequence
                 )"
            ))
            .await
            .map_err(db)?;
        let (blocked, blocked_keys) = blocked.unwrap_or_default();
        let dead: Vec<(String, i64)> = conn
            .query(format!(
                "SELECT destination, COUNT(*) FROM {t} WHERE state = 'dead' GROUP BY destination ORDER BY destination"
            ))
            .await
            .map_err(db)?;
        let rows: Vec<Row> = conn
            .query(format!(
                "SELECT x.destination, x.reason, {}, x.failures, {}, x.last_error,
                        (SELECT COUNT(*) FROM {t} AS o WHERE o.state = 'pending' AND o.destination = x.destination)
                 FROM {d} AS x ORDER BY x.destination",
                micros_of("x.since"),
                micros_of("x.next_attempt_at"),
            ))
            .await
            .map_err(db)?;
        let mut backed_off = Vec::with_capacity(rows.len());
        for mut r in rows {
            let reason: String = take(&mut r, 1)?;
            backed_off.push(DestinationStatus {
                destination: take(&mut r, 0)?,
                class: FailureClass::from_name(&reason)
                    .unwrap_or(FailureClass::DestinationUnavailable),
                since: time(take(&mut r, 2)?),
                failures: u32::try_from(take::<i64>(&mut r, 3)?).unwrap_or_default(),
                next_attempt_at: time(take(&mut r, 4)?),
                last_error: take(&mut r, 5)?,
                pending: take::<i64>(&mut r, 6)?.unsigned_abs(),
            });
        }
        Ok(OutboxStatus {
            pending: count(pending),
            blocked: blocked.unsigned_abs(),
            blocked_keys: blocked_keys.unsigned_abs(),
            in_flight: count(in_flight),
            oldest_pending_age_seconds: oldest.unwrap_or_default(),
            sent: count(sent),
            dead_by_destination: dead
                .into_iter()
                .map(|(destination, n)| (destination, n.unsigned_abs()))
                .collect(),
            backed_off,
        })
    }

    /// Dead messages, oldest first.
    ///
    /// # Errors
    /// [`OutboxError::Database`].
    pub async fn dead(&self, limit: i64) -> Result<Vec<DeadMessage>, OutboxError> {
        let mut conn = self.pool.get_conn().await.map_err(db)?;
        let rows: Vec<Row> = conn
            .exec(
                format!(
                    "SELECT message_id, sequence, partition_key, destination, attempts, last_error, {}
                     FROM {} WHERE state = 'dead' ORDER BY sequence LIMIT ?",
                    micros_of("created_at"),
                    self.tables.outbox
                ),
                (limit.max(0),),
            )
            .await
            .map_err(db)?;
        rows.into_iter()
            .map(|mut r| {
                let id: Vec<u8> = take(&mut r, 0)?;
                Ok(DeadMessage {
                    id: Uuid::from_slice(&id).map_err(db)?,
                    sequence: take(&mut r, 1)?,
                    partition_key: take(&mut r, 2)?,
                    destination: take(&mut r, 3)?,
                    attempts: u32::try_from(take::<i64>(&mut r, 4)?).unwrap_or_default(),
                    last_error: take(&mut r, 5)?,
                    created_at: time(take(&mut r, 6)?),
                })
            })
            .collect()
    }

    /// Makes dead messages pending again with fresh attempts (all of them when `ids` is
    /// `None`); their keys resume. Returns how many.
    ///
    /// # Errors
    /// [`OutboxError::Database`].
    pub async fn requeue(&self, ids: Option<&[Uuid]>) -> Result<u64, OutboxError> {
        self.dead_rows(
            "UPDATE {outbox} AS o{join} SET o.state = 'pending', o.attempts = 0, o.next_attempt_at = UTC_TIMESTAMP(6) WHERE o.state = 'dead'",
            ids,
        )
        .await
    }

    /// Deletes dead messages (all of them when `ids` is `None`); the later messages of their
    /// keys then flow. Returns how many.
    ///
    /// # Errors
    /// [`OutboxError::Database`].
    pub async fn purge(&self, ids: Option<&[Uuid]>) -> Result<u64, OutboxError> {
        self.dead_rows(
            "DELETE o FROM {outbox} AS o{join} WHERE o.state = 'dead'",
            ids,
        )
        .await
    }

    /// Runs `template` on the dead rows with these ids (joined to a JSON list, so that each
    /// row is looked up by its id), or on every dead row.
    async fn dead_rows(&self, template: &str, ids: Option<&[Uuid]>) -> Result<u64, OutboxError> {
        let join = if ids.is_some() {
            " JOIN JSON_TABLE(?, '$[*]' COLUMNS (v CHAR(32) PATH '$')) AS j ON o.message_id = UNHEX(j.v)"
        } else {
            ""
        };
        let sql = template
            .replace("{outbox}", &self.tables.outbox)
            .replace("{join}", join);
        let params = match ids {
            Some(ids) => {
                let hex: Vec<String> = ids.iter().map(|id| id.simple().to_string()).collect();
                Params::Positional(vec![Value::from(serde_json::Value::from(hex).to_string())])
            }
            None => Params::Empty,
        };
        let mut conn = self.pool.get_conn().await.map_err(db)?;
        conn.exec_drop(sql, params).await.map_err(db)?;
        Ok(conn.affected_rows())
    }
}
