//! Logs partitioned by position range (optional migration 10): which layout the store's schema
//! has, learnt once on first use, and partitions attached ahead of the sequence.
//!
//! On a partitioned log the store reads a stream's version from `streams` (one row) instead of a
//! `max()` over the events, which would descend one index per partition. Correctness does not
//! depend on it: the log's insert trigger refuses versions that do not follow the stream's, so a
//! store that has not learnt the layout yet (or a log converted under a running store) is only
//! slower. After each append the store attaches the next partition once the sequence comes
//! within half a partition of the newest one; an append that still finds no partition for its
//! position (a burst faster than that) attaches it and is tried again. These statements go the
//! store's way ([`Statements`](crate::Statements)), so they work behind PgBouncer too.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use eventrail_core::StoreError;
use postgres_types::Type;
use tracing::{info, warn};

use super::{PgEventStore, backend};

/// What the store knows of its schema's layout.
#[derive(Debug, Default)]
pub(super) struct Partitions {
    /// 0: not learnt yet; 1: one table; 2: partitioned.
    layout: AtomicU8,
    /// Positions per partition (partitioned only).
    size: AtomicU64,
    /// The exclusive upper bound of the newest partition this store knows of.
    bound: AtomicU64,
    /// A task attaching partitions is running.
    adding: AtomicBool,
}

/// The events table's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    /// One table (migrations 1–9).
    Table,
    /// Partitioned by position range (migration 10).
    Partitioned,
}

const TABLE: u8 = 1;
const PARTITIONED: u8 = 2;

impl PgEventStore {
    /// The layout, if this store has learnt it.
    fn cached_layout(&self) -> Option<Layout> {
        match self.inner.partitions.layout.load(Ordering::Relaxed) {
            TABLE => Some(Layout::Table),
            PARTITIONED => Some(Layout::Partitioned),
            _ => None,
        }
    }

    /// The layout of the events table, asked once on `client` (not remembered while the table
    /// is missing).
    pub(super) async fn layout(
        &self,
        client: &deadpool_postgres::Object,
    ) -> Result<Layout, StoreError> {
        if let Some(layout) = self.cached_layout() {
            return Ok(layout);
        }
        let (sql, statements) = (&self.inner.sql, self.statements());
        let partitioned: Option<bool> = statements
            .query_one(&**client, &sql.layout, &[])
            .await
            .map_err(backend)?
            .try_get(0)
            .map_err(backend)?;
        let known = &self.inner.partitions;
        match partitioned {
            None => Ok(Layout::Table),
            Some(false) => {
                known.layout.store(TABLE, Ordering::Relaxed);
                Ok(Layout::Table)
            }
            Some(true) => {
                let row = statements
                    .query_one(&**client, &sql.partitioning, &[])
                    .await
                    .map_err(backend)?;
                let size: i64 = row.try_get(0).map_err(backend)?;
                let bound: i64 = row.try_get(1).map_err(backend)?;
                known.size.store(size.unsigned_abs(), Ordering::Relaxed);
                known
                    .bound
                    .fetch_max(bound.unsigned_abs(), Ordering::Relaxed);
                known.layout.store(PARTITIONED, Ordering::Relaxed);
                Ok(Layout::Partitioned)
            }
        }
    }

    /// The layout, learnt on a connection of its own if not known yet.
    pub(super) async fn learned_layout(&self) -> Result<Layout, StoreError> {
        match self.cached_layout() {
            Some(layout) => Ok(layout),
            None => self.layout(&self.client().await?).await,
        }
    }

    /// The layout if learnt, else the one table (for lookups on error paths).
    pub(super) fn known_layout(&self) -> Layout {
        self.cached_layout().unwrap_or(Layout::Table)
    }

    /// Attaches partitions until there is room past the sequence for one more partition's worth
    /// of positions, or for `room` positions if more, and returns the exclusive upper bound of
    /// the newest partition. The store does this on its own as the log grows; call it before a
    /// large import. Nothing to do (and `None`) when the log is one table.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the database fails.
    pub async fn add_partitions(&self, room: u64) -> Result<Option<u64>, StoreError> {
        let room = i64::try_from(room).unwrap_or(i64::MAX);
        let mut client = self.client().await?;
        if self.layout(&client).await? == Layout::Table {
            return Ok(None);
        }
        // READ COMMITTED whatever the database default: the function locks the bookkeeping row,
        // and above READ COMMITTED a concurrent attach that committed while it waited is a
        // serialization failure instead of the bound to start from.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
            .start()
            .await
            .map_err(backend)?;
        let bound: i64 = self
            .statements()
            .query_one(&tx, &self.inner.sql.add_partitions, &[(&room, Type::INT8)])
            .await
            .map_err(backend)?
            .try_get(0)
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        let bound = bound.unsigned_abs();
        let before = self
            .inner
            .partitions
            .bound
            .fetch_max(bound, Ordering::Relaxed);
        if bound > before {
            info!(upper_bound = bound, "attached event partitions");
        }
        Ok(Some(bound))
    }

    /// After an append that took positions up to `last`: attaches the next partition in the
    /// background once `last` is within half a partition of the newest one.
    pub(super) fn partitions_after(&self, last: u64) {
        let known = &self.inner.partitions;
        if known.layout.load(Ordering::Relaxed) != PARTITIONED {
            return;
        }
        let room = known.size.load(Ordering::Relaxed) / 2;
        if last.saturating_add(room) < known.bound.load(Ordering::Relaxed)
            || known.adding.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            if let Err(e) = store.add_partitions(0).await {
                warn!(error = %eventrail_core::error_chain(&e), "could not attach event partitions; the next append tries again");
            }
            store
                .inner
                .partitions
                .adding
                .store(false, Ordering::Release);
        });
    }

    /// An append in a caller's transaction found no partition for its positions: that
    /// transaction is aborted, so attach the partitions now (on another connection: attaching
    /// does not wait for open appends) and report the error as retryable.
    pub(super) async fn missing_partition_in_caller_tx(
        &self,
        error: StoreError,
        room: u64,
    ) -> StoreError {
        if let Err(e) = self.add_partitions(room).await {
            warn!(error = %eventrail_core::error_chain(&e), "could not attach event partitions");
            return error;
        }
        match error {
            StoreError::Backend(source) => match source.downcast::<eventrail_core::DatabaseError>()
            {
                Ok(db) => StoreError::Backend(Box::new(db.with_retryable(true))),
                Err(other) => StoreError::Backend(other),
            },
            other => other,
        }
    }
}

/// Whether an append failed because no partition holds its position (PostgreSQL reports it as a
/// check violation without a constraint).
pub(super) fn is_missing_partition(error: &StoreError) -> bool {
    eventrail_core::find_database_error(error)
        .is_some_and(|db| db.code() == Some("23514") && db.constraint().is_none())
}
