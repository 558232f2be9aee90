//! Reads that never pass a position that may still commit: the gap-safe subscription read
//! ([`PgEventStore::probe_frontier`], [`PgEventStore::read_safe`], [`PgEventStore::read_range_in`]),
//! the appender and blocking-session lookups that name what holds a hole open, and the complete
//! scope read behind `EventStore::read_scope_complete` (waits out the appends in flight).

use std::time::SystemTime;

use eventrail_core::{PositionScope, RecordedEvent, StoreError};
use postgres_types::Type;
use tokio_postgres::GenericClient;
use tracing::{debug, instrument};

use super::{PgEventStore, backend, limit, read_committed};
use crate::frontier::{
    BlockingSession, Frontier, GapWatch, HoleEvidence, SafeRead, Snapshot, advance, widen_xid,
};
use crate::keys::{SCOPE_ALL_LOCK, SCOPE_CATEGORY_LOCK};
use crate::rows::{recorded_event, recorded_events, to_i64, to_u64};
use futures::TryStreamExt;

impl PgEventStore {
    /// Probes how far a subscriber at `after` may read without passing a position that may still
    /// commit, looking at most `max_positions` positions ahead. Reads positions only (an
    /// index-only scan), outside any transaction of the caller.
    ///
    /// A hole seen for the first time is recorded in `watch` with its evidence, then checked once
    /// more at once (a rolled-back hole is usually proven on the spot).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    #[instrument(skip(self, watch), level = "debug")]
    pub async fn probe_frontier(
        &self,
        watch: &mut GapWatch,
        after: u64,
        max_positions: usize,
    ) -> Result<Frontier, StoreError> {
        let client = self.client().await?;
        let limit = i64::try_from(max_positions.max(1)).unwrap_or(i64::MAX);
        let after_i64 = to_i64(after, "position")?;
        let mut observed_new = false;
        loop {
            let row = self
                .statements()
                .query_one(
                    &*client,
                    &self.inner.sql.probe,
                    &[(&after_i64, Type::INT8), (&limit, Type::INT8)],
                )
                .await
                .map_err(backend)?;
            let now: Snapshot = row.try_get::<_, &str>(0).map_err(backend)?.parse()?;
            let positions: Vec<u64> = row
                .try_get::<_, Vec<i64>>(1)
                .map_err(backend)?
                .into_iter()
                .map(to_u64)
                .collect();
            let step = advance(
                after,
                &positions,
                &now,
                watch,
                positions.len() >= max_positions.max(1),
            );
            match step.new_holes.first() {
                Some(&(from, _)) if !observed_new => {
                    // Read after `now` was taken (a later statement): see `HoleEvidence`.
                    let appenders = self.appenders(&**client).await?;
                    let evidence = HoleEvidence {
                        observed: now,
                        appenders,
                        first_seen: SystemTime::now(),
                    };
                    debug!(
                        from,
                        holes = step.new_holes.len(),
                        ?evidence,
                        "observed holes"
                    );
                    for &(from, to) in &step.new_holes {
                        watch.record(from, to, evidence.clone());
                    }
                    observed_new = true;
                }
                _ => {
                    let mut frontier = step.frontier;
                    frontier.wal_insert = row.try_get(2).map_err(backend)?;
                    watch.prune(frontier.safe);
                    if !frontier.skipped.is_empty() {
                        metrics::counter!("eventrail_gap_skips_total")
                            .increment(frontier.skipped.len() as u64);
                    }
                    if let Some(stall) = &frontier.stall {
                        let age = stall.since.elapsed().unwrap_or_default().as_secs_f64();
                        metrics::gauge!("eventrail_frontier_stall_seconds").set(age);
                        debug!(from = stall.from, holders = ?stall.holders, age, "frontier waits on a hole");
                    } else {
                        metrics::gauge!("eventrail_frontier_stall_seconds").set(0.0);
                    }
                    return Ok(frontier);
                }
            }
        }
    }

    /// The gap-safe subscription read: events after `after` up to the safe frontier (at most
    /// `max_positions` positions ahead), filtered by categories and event types, with the skips
    /// and the stall of [`PgEventStore::probe_frontier`]. Checkpoint `frontier.safe`.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    pub async fn read_safe(
        &self,
        watch: &mut GapWatch,
        after: u64,
        max_positions: usize,
        categories: Option<&[String]>,
        event_types: Option<&[String]>,
    ) -> Result<SafeRead, StoreError> {
        let frontier = self.probe_frontier(watch, after, max_positions).await?;
        let events = self
            .read_range(after, frontier.safe, categories, event_types)
            .await?;
        Ok(SafeRead { events, frontier })
    }

    /// [`read_range_in`](Self::read_range_in) on a pooled connection of this store; nothing
    /// (and no connection taken) when `up_to <= after`. Only gap-safe when `up_to` came from
    /// [`PgEventStore::probe_frontier`].
    ///
    /// # Errors
    /// [`StoreError::Backend`], or the pool's typed connect error.
    pub async fn read_range(
        &self,
        after: u64,
        up_to: u64,
        categories: Option<&[String]>,
        event_types: Option<&[String]>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if up_to <= after {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        self.read_range_in(&**client, after, up_to, categories, event_types)
            .await
    }

    /// Events with `after < position <= up_to`, filtered, through any client or transaction (the
    /// worker reads inside its batch transaction). Only gap-safe when `up_to` came from
    /// [`PgEventStore::probe_frontier`].
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    pub async fn read_range_in(
        &self,
        client: &impl GenericClient,
        after: u64,
        up_to: u64,
        categories: Option<&[String]>,
        event_types: Option<&[String]>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let (after, up_to) = (to_i64(after, "position")?, to_i64(up_to, "position")?);
        // Typed parameters: one round trip and no prepare, on any client or transaction.
        let params: [(&(dyn postgres_types::ToSql + Sync), Type); 4] = [
            (&after, Type::INT8),
            (&up_to, Type::INT8),
            (&categories, Type::TEXT_ARRAY),
            (&event_types, Type::TEXT_ARRAY),
        ];
        let rows = client
            .query_typed_raw(&self.inner.sql.read_range, params)
            .await
            .map_err(backend)?;
        // Decoded as they arrive, so decoding overlaps the server sending the rest (catch-up
        // reads thousands of rows at a time).
        futures::pin_mut!(rows);
        let mut events = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(backend)? {
            events.push(recorded_event(&row)?);
        }
        Ok(events)
    }

    /// The transactions appending to this log now: those holding the appender lock, which every
    /// append takes after its xid and before any position, until it ends.
    async fn appenders(&self, client: &impl GenericClient) -> Result<Vec<u64>, StoreError> {
        let row = client
            .query_typed_one(&self.inner.sql.appenders, &[])
            .await
            .map_err(backend)?;
        let reference: Snapshot = row.try_get::<_, &str>(0).map_err(backend)?.parse()?;
        row.try_get::<_, Vec<String>>(1)
            .map_err(backend)?
            .iter()
            .map(|x| {
                x.parse::<u32>()
                    .map(|x| widen_xid(x, reference.xmax))
                    .map_err(|_| StoreError::backend(format!("unexpected transaction id {x:?}")))
            })
            .collect()
    }

    /// The sessions whose transactions hold a frontier stall ([`FrontierStall::holders`]).
    ///
    /// [`FrontierStall::holders`]: crate::FrontierStall::holders
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    pub async fn blocking_sessions(
        &self,
        xids: &[u64],
    ) -> Result<Vec<BlockingSession>, StoreError> {
        let short: Vec<String> = xids
            .iter()
            .map(|x| (x & u64::from(u32::MAX)).to_string())
            .collect();
        let client = self.client().await?;
        let rows = client
            .query_typed(
                "SELECT pid, backend_xid::text, xact_start, state, application_name, datname::text \
                 FROM pg_stat_activity WHERE backend_xid::text = ANY($1)",
                &[(&short, Type::TEXT_ARRAY)],
            )
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|r| {
                Ok(BlockingSession {
                    pid: r.try_get(0).map_err(backend)?,
                    xid: r
                        .try_get::<_, &str>(1)
                        .map_err(backend)?
                        .parse()
                        .map_err(backend)?,
                    transaction_start: r.try_get(2).map_err(backend)?,
                    state: r.try_get(3).map_err(backend)?,
                    application_name: r.try_get(4).map_err(backend)?,
                    database: r.try_get(5).map_err(backend)?,
                })
            })
            .collect()
    }

    pub(super) async fn read_scope_locked(
        &self,
        scope: &PositionScope,
        after: Option<u64>,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let after = to_i64(after.unwrap_or(0), "position")?;
        let mut client = self.client().await?;
        // READ COMMITTED whatever the database default: the read after the lock must take a new
        // snapshot, or it misses what the appends we waited for committed.
        let tx = read_committed(&mut client).await?;
        // Waiting for the scope's exclusive lock waits out every append in flight in that scope
        // (each holds it shared): what is read next is complete.
        let rows = match scope {
            PositionScope::Category(c) => {
                tx.execute_typed(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                    &[
                        (&SCOPE_CATEGORY_LOCK, Type::INT4),
                        (
                            &format!(
                                "{}{}",
                                crate::keys::lock_namespace(self.inner.options.schema_name()),
                                c.as_str()
                            ),
                            Type::TEXT,
                        ),
                    ],
                )
                .await
                .map_err(backend)?;
                tx.query_typed(
                    &self.inner.sql.read_scope_category,
                    &[
                        (&after, Type::INT8),
                        (&limit(max_count), Type::INT8),
                        (&c.as_str(), Type::TEXT),
                    ],
                )
                .await
                .map_err(backend)?
            }
            _ => {
                tx.execute_typed(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                    &[
                        (&SCOPE_ALL_LOCK, Type::INT4),
                        (
                            &crate::keys::lock_namespace(self.inner.options.schema_name()),
                            Type::TEXT,
                        ),
                    ],
                )
                .await
                .map_err(backend)?;
                tx.query_typed(
                    &self.inner.sql.read_scope_all,
                    &[(&after, Type::INT8), (&limit(max_count), Type::INT8)],
                )
                .await
                .map_err(backend)?
            }
        };
        tx.commit().await.map_err(backend)?;
        recorded_events(&rows)
    }
}
