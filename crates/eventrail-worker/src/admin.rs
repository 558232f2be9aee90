//! Operator views and actions on the worker tables (what `eventrail status`, `consumer` and
//! `gaps` print and do).

use std::time::SystemTime;

use deadpool_postgres::Pool;
use tokio_postgres::types::Type;

use crate::error::db;
use crate::runtime::{IDENTITY_LOCK, LEADER_LOCK, advisory_lock_held, identity_lock_held};
use crate::tables::Tables;
use crate::{TableNames, WorkerError};

/// A registered worker.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct WorkerStatus {
    /// Its id.
    pub id: uuid::Uuid,
    /// Its name.
    pub name: String,
    /// Seconds since its last heartbeat.
    pub heartbeat_age_seconds: f64,
    /// Whether its session holds its identity lock (it is alive), in advisory-lock mode.
    pub session_alive: bool,
    /// Whether it is the leader.
    pub leader: bool,
    /// Whether its heartbeat is older than the heartbeat timeout: it is dead (or frozen) to the
    /// others, who move its consumers and, if it leads, depose it.
    pub stale: bool,
}

/// A consumer's assignment and progress.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ConsumerStatus {
    /// Its name.
    pub consumer: String,
    /// The worker running it.
    pub worker_id: Option<uuid::Uuid>,
    /// Its assignment epoch.
    pub epoch: i64,
    /// Its checkpoint.
    pub position: u64,
    /// Positions between the checkpoint and the log's head.
    pub lag_events: u64,
    /// Age of the oldest event after the checkpoint, in seconds (0 when caught up).
    pub lag_seconds: f64,
    /// Paused by an operator.
    pub paused: bool,
    /// The error it is parked with (with every cause), if parked.
    pub parked_error: Option<String>,
    /// The event it is parked at (its checkpoint is right before it), when it parked at one:
    /// a handler that kept failing on it, or a row the store cannot decode.
    pub parked_position: Option<u64>,
}

/// Everything `eventrail status` shows.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Status {
    /// Registered workers.
    pub workers: Vec<WorkerStatus>,
    /// Consumers.
    pub consumers: Vec<ConsumerStatus>,
}

/// An audited skip.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct GapRecord {
    /// The consumer that skipped.
    pub consumer: String,
    /// First position.
    pub from: u64,
    /// Last position.
    pub to: u64,
    /// `proven` (a hole proven permanent), `timeout` (the opt-in stall escape) or `poison` (an
    /// operator skipped the event a consumer was parked at).
    pub reason: String,
    /// The evidence: snapshot when first seen, candidate xids (appenders then), proving snapshot; for a poison
    /// skip, the error the consumer was parked with and who skipped it.
    pub evidence: String,
    /// When it was skipped.
    pub skipped_at: SystemTime,
}

/// Operator access to the worker tables of one schema.
#[derive(Debug, Clone)]
pub struct WorkerAdmin {
    pool: Pool,
    schema: String,
    tables: Tables,
    heartbeat_timeout: std::time::Duration,
}

use eventrail_store_postgres::from_sql_int as to_u64;

impl WorkerAdmin {
    /// Admin over `schema` with these table names.
    ///
    /// # Errors
    /// [`WorkerError::Config`] for refused names.
    pub fn new(pool: Pool, schema: &str, tables: &TableNames) -> Result<Self, WorkerError> {
        Ok(Self {
            pool,
            schema: eventrail_store_postgres::validate_identifier("schema", schema)?,
            tables: Tables::new(tables, schema)?,
            heartbeat_timeout: crate::WorkerOptions::default().heartbeat_timeout,
        })
    }

    /// Admin over the schema and worker tables of a configuration.
    ///
    /// # Errors
    /// [`WorkerError::Config`] for refused names.
    pub fn from_config(
        pool: Pool,
        config: &eventrail_store_postgres::EventrailConfig,
    ) -> Result<Self, WorkerError> {
        Self::new(pool, config.schema(), config.worker_tables())
    }

    /// The workers' heartbeat timeout (default: the workers' default, 5 s), to mark stale
    /// workers in [`status`](Self::status); give the one the workers run with.
    #[must_use]
    pub fn heartbeat_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.heartbeat_timeout = timeout;
        self
    }

    /// Workers, leader, assignments, checkpoints, lag, parked errors.
    ///
    /// # Errors
    /// [`WorkerError::Database`].
    pub async fn status(&self) -> Result<Status, WorkerError> {
        let t = &self.tables;
        let client = self.pool.get().await.map_err(db)?;
        let alive = identity_lock_held("n.worker_id");
        // The leader holds the leadership lock on the same session as its identity lock.
        let leader_lock = advisory_lock_held(
            LEADER_LOCK,
            "$1",
            &format!(
                "AND l.pid IN (SELECT i.pid FROM pg_locks i WHERE i.locktype = 'advisory' AND i.classid = {IDENTITY_LOCK}::oid AND i.objid = hashtext(n.worker_id::text)::oid AND i.objsubid = 2)"
            ),
        );
        let workers = client
            .query_typed(
                &format!(
                    "SELECT n.worker_id, n.name, extract(epoch FROM clock_timestamp() - n.heartbeat_at)::float8, {alive},
                            {leader_lock} OR EXISTS (SELECT 1 FROM {leader} w WHERE w.worker_id = n.worker_id AND w.expires_at > now())
                     FROM {nodes} n ORDER BY n.started_at",
                    leader = t.leader,
                    nodes = t.nodes
                ),
                &[(&t.checkpoints, Type::TEXT)],
            )
            .await
            .map_err(db)?
            .iter()
            .map(|r| WorkerStatus {
                id: r.get(0),
                name: r.get(1),
                heartbeat_age_seconds: r.get(2),
                session_alive: r.get(3),
                leader: r.get(4),
                stale: r.get::<_, f64>(2) > self.heartbeat_timeout.as_secs_f64(),
            })
            .collect();
        let events = format!("{}.events", self.schema);
        let consumers = client
            .query_typed(
                &format!(
                    "SELECT c.consumer, a.worker_id, coalesce(a.epoch, 0), c.position,
                            greatest(coalesce((SELECT max(global_position) FROM {events}), 0) - c.position, 0),
                            coalesce(extract(epoch FROM now() - (SELECT e.recorded_at FROM {events} e
                                WHERE e.global_position > c.position ORDER BY e.global_position LIMIT 1))::float8, 0),
                            c.paused, CASE WHEN c.parked_at IS NOT NULL THEN c.last_error END,
                            CASE WHEN c.parked_at IS NOT NULL THEN c.parked_position END
                     FROM {checkpoints} c LEFT JOIN {assignments} a USING (consumer) ORDER BY c.consumer",
                    checkpoints = t.checkpoints,
                    assignments = t.assignments
                ),
                &[],
            )
            .await
            .map_err(db)?
            .iter()
            .map(|r| ConsumerStatus {
                consumer: r.get(0),
                worker_id: r.get(1),
                epoch: r.get(2),
                position: to_u64(r.get(3)),
                lag_events: to_u64(r.get(4)),
                lag_seconds: r.get(5),
                paused: r.get(6),
                parked_error: r.get(7),
                parked_position: r.get::<_, Option<i64>>(8).map(to_u64),
            })
            .collect();
        Ok(Status { workers, consumers })
    }

    /// Applies `set` to the consumer's checkpoint row; `$1` is the consumer, `$2` the position
    /// when given.
    async fn update(
        &self,
        consumer: &str,
        set: &str,
        position: Option<i64>,
    ) -> Result<(), WorkerError> {
        let client = self.pool.get().await.map_err(db)?;
        let sql = format!(
            "UPDATE {} SET {set}, updated_at = now() WHERE consumer = $1",
            self.tables.checkpoints
        );
        let n = match &position {
            Some(position) => {
                client
                    .execute_typed(&sql, &[(&consumer, Type::TEXT), (position, Type::INT8)])
                    .await
            }
            None => client.execute_typed(&sql, &[(&consumer, Type::TEXT)]).await,
        }
        .map_err(db)?;
        if n == 0 {
            return Err(WorkerError::UnknownConsumer(consumer.to_owned()));
        }
        Ok(())
    }

    /// Moves a consumer's checkpoint back (or forward) to `position`: it handles the events after
    /// it again. The running batch, if any, finishes first (it holds the checkpoint row). A
    /// position beyond the head of the log is refused: the consumer would silently pass the
    /// events appended up to there (see [`WorkerAdmin::rewind_beyond_head`]).
    ///
    /// # Errors
    /// [`WorkerError::InvalidPosition`], [`WorkerError::BeyondHead`],
    /// [`WorkerError::UnknownConsumer`], [`WorkerError::Database`].
    pub async fn rewind(&self, consumer: &str, position: u64) -> Result<(), WorkerError> {
        let checked = Self::position(position)?;
        let client = self.pool.get().await.map_err(db)?;
        let head: i64 = client
            .query_typed_one(
                &format!(
                    "SELECT coalesce(max(global_position), 0) FROM {}.events",
                    self.schema
                ),
                &[],
            )
            .await
            .map_err(db)?
            .get(0);
        if checked > head {
            return Err(WorkerError::BeyondHead {
                position,
                head: u64::try_from(head).unwrap_or(0),
            });
        }
        self.update(consumer, "position = $2", Some(checked)).await
    }

    /// [`WorkerAdmin::rewind`] without the head check (`eventrail consumer rewind --force`): the
    /// consumer skips every event up to `position`, including ones not appended yet.
    ///
    /// # Errors
    /// [`WorkerError::InvalidPosition`], [`WorkerError::UnknownConsumer`],
    /// [`WorkerError::Database`].
    pub async fn rewind_beyond_head(
        &self,
        consumer: &str,
        position: u64,
    ) -> Result<(), WorkerError> {
        self.update(consumer, "position = $2", Some(Self::position(position)?))
            .await
    }

    fn position(position: u64) -> Result<i64, WorkerError> {
        i64::try_from(position).map_err(|_| WorkerError::InvalidPosition { position })
    }

    /// Rewinds to the start and clears failures.
    ///
    /// # Errors
    /// [`WorkerError::UnknownConsumer`], [`WorkerError::Database`].
    pub async fn reset(&self, consumer: &str) -> Result<(), WorkerError> {
        self.update(
            consumer,
            "position = 0, failures = 0, parked_at = NULL, parked_position = NULL, last_error = NULL",
            None,
        )
        .await
    }

    /// Pauses a consumer (its worker stops taking batches of it).
    ///
    /// # Errors
    /// [`WorkerError::UnknownConsumer`], [`WorkerError::Database`].
    pub async fn pause(&self, consumer: &str) -> Result<(), WorkerError> {
        self.update(consumer, "paused = true", None).await
    }

    /// Resumes a paused or parked consumer and clears its failures.
    ///
    /// # Errors
    /// [`WorkerError::UnknownConsumer`], [`WorkerError::Database`].
    pub async fn resume(&self, consumer: &str) -> Result<(), WorkerError> {
        self.update(
            consumer,
            "paused = false, failures = 0, parked_at = NULL, parked_position = NULL, last_error = NULL",
            None,
        )
        .await
    }

    /// Skips the event a parked consumer is parked at (a poison event its handler keeps failing
    /// on, or a row the store cannot decode) and resumes it after that event. The skip is
    /// audited in the gap skips with reason `poison`, the parked error and the database user.
    /// Returns the skipped position.
    ///
    /// Only exactly the parked event is skipped: a consumer that is not parked, parked without
    /// a position, or whose checkpoint moved since it parked (rewound) is refused.
    ///
    /// # Errors
    /// [`WorkerError::UnknownConsumer`], [`WorkerError::NotParked`], [`WorkerError::Database`].
    pub async fn skip(&self, consumer: &str) -> Result<u64, WorkerError> {
        let t = &self.tables;
        let mut client = self.pool.get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        // The row lock waits for a batch in flight and keeps the consumer still meanwhile.
        let row = tx
            .query_opt(
                &format!(
                    "SELECT position, parked_at IS NOT NULL, parked_position, last_error, parked_at
                     FROM {} WHERE consumer = $1 FOR UPDATE",
                    t.checkpoints
                ),
                &[&consumer],
            )
            .await
            .map_err(db)?
            .ok_or_else(|| WorkerError::UnknownConsumer(consumer.to_owned()))?;
        let (position, parked, at): (i64, bool, Option<i64>) = (row.get(0), row.get(1), row.get(2));
        let not_parked = |reason: &'static str| WorkerError::NotParked {
            consumer: consumer.to_owned(),
            reason,
        };
        let at = match (parked, at) {
            (false, _) => return Err(not_parked("it is not parked")),
            (true, None) => {
                return Err(not_parked(
                    "it is parked without an event to skip (resume it)",
                ));
            }
            (true, Some(at)) if at != position + 1 => {
                return Err(not_parked(
                    "its checkpoint moved since it parked (resume it)",
                ));
            }
            (true, Some(at)) => at,
        };
        let error: Option<String> = row.get(3);
        let parked_at: std::time::SystemTime = row.get(4);
        tx.execute(
            &format!(
                "INSERT INTO {} (consumer, from_position, to_position, reason, detail, skipped_by, first_seen_at)
                 VALUES ($1, $2, $2, 'poison', $3, current_user, $4)",
                t.gap_skips
            ),
            &[&consumer, &at, &error, &parked_at],
        )
        .await
        .map_err(db)?;
        tx.execute(
            &format!(
                "WITH skipped AS (
                     UPDATE {} SET position = $2, paused = false, failures = 0, parked_at = NULL,
                         parked_position = NULL, last_error = NULL, updated_at = now()
                     WHERE consumer = $1 RETURNING consumer, position
                 )
                 SELECT pg_notify($3, consumer || ' ' || position) FROM skipped",
                t.checkpoints
            ),
            &[&consumer, &at, &self.tables.checkpoint_channel],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(to_u64(at))
    }

    /// Audited skips, newest first, optionally of one consumer.
    ///
    /// # Errors
    /// [`WorkerError::Database`].
    pub async fn gaps(
        &self,
        consumer: Option<&str>,
        limit: i64,
    ) -> Result<Vec<GapRecord>, WorkerError> {
        let client = self.pool.get().await.map_err(db)?;
        Ok(client
            .query_typed(
                &format!(
                    "SELECT consumer, from_position, to_position, reason,
                            concat_ws(' ', 'observed=' || observed_snapshot, 'candidates=' || candidate_xids, 'proven=' || proven_snapshot,
                                      'by=' || skipped_by, 'error=' || detail),
                            skipped_at
                     FROM {} WHERE $1::text IS NULL OR consumer = $1 ORDER BY id DESC LIMIT $2",
                    self.tables.gap_skips
                ),
                &[(&consumer, Type::TEXT), (&limit, Type::INT8)],
            )
            .await
            .map_err(db)?
            .iter()
            .map(|r| GapRecord {
                consumer: r.get(0),
                from: to_u64(r.get(1)),
                to: to_u64(r.get(2)),
                reason: r.get(3),
                evidence: r.get(4),
                skipped_at: r.get(5),
            })
            .collect())
    }
}
