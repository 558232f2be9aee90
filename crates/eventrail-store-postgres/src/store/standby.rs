//! Gap-safe reads on a hot standby, so that subscribers' reads scale past one server.
//!
//! A standby cannot take part in the gap proof itself: it assigns no transaction ids and its
//! lock table holds none of the primary's advisory locks, so it cannot tell which in-flight
//! transactions are appending. The horizon therefore comes from the primary
//! ([`PgEventStore::probe_frontier`]), and only the events are read on the standby, once it has
//! replayed the primary's WAL up to a point read *after* the probe's snapshot was taken (by the
//! probe's own statement, [`Frontier::wal_insert`], or by a later one). Every event at or below
//! the frontier was visible in that snapshot, so its transaction had written its commit record
//! before: the record lies below that point and the standby, once there, shows all of them. A
//! lagging standby delays a read, it never shortens it.

use std::time::Duration;

use deadpool_postgres::Pool;
use eventrail_core::{RecordedEvent, StoreError};
use tracing::instrument;

use super::{PgEventStore, backend};
use crate::frontier::{Frontier, GapWatch, SafeRead};

/// A hot standby (streaming replica) of the store's database, for subscribers' reads.
///
/// Build one on a pool of connections to the standby and pass it to
/// [`PgEventStore::read_safe_on`] or a worker (`WorkerBuilder::standby`).
#[derive(Clone, Debug)]
pub struct Standby {
    pool: Pool,
    max_wait: Duration,
}

impl Standby {
    /// A standby reached through `pool`, waited for at most 30 s per read.
    #[must_use]
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            max_wait: Duration::from_secs(30),
        }
    }

    /// How long a read waits for the standby to replay what the primary has committed before it
    /// fails with a retryable error (never a shorter read).
    #[must_use]
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// Its pool.
    #[must_use]
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

/// The primary's WAL insert position now, as text (`pg_lsn`).
const PRIMARY_LSN: &str = "SELECT pg_current_wal_insert_lsn()::text";
/// Whether the standby has replayed up to `$1` (true on a server not in recovery: it has all of
/// its own WAL).
const REPLAYED: &str =
    "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, NOT pg_is_in_recovery())";

impl PgEventStore {
    /// Events with `after < position <= up_to`, filtered, read on `standby` once it has
    /// replayed everything the primary had committed when this call started. `up_to` must come
    /// from [`probe_frontier`](Self::probe_frontier) on this store (the primary), finished
    /// before this call.
    ///
    /// # Errors
    /// [`StoreError::Backend`] (retryable) when the standby has not replayed that far within its
    /// [`max_wait`](Standby::max_wait), or on a database failure.
    #[instrument(skip(self, standby, categories, event_types), level = "debug")]
    pub async fn read_range_on(
        &self,
        standby: &Standby,
        after: u64,
        up_to: u64,
        categories: Option<&[String]>,
        event_types: Option<&[String]>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if up_to <= after {
            return Ok(Vec::new());
        }
        let lsn: String = self
            .client()
            .await?
            .query_typed_one(PRIMARY_LSN, &[])
            .await
            .map_err(backend)?
            .get(0);
        self.read_replayed(standby, &lsn, after, up_to, categories, event_types)
            .await
    }

    /// Events with `after < position <= frontier.safe`, filtered, read on `standby` once it has
    /// replayed up to the WAL position the probe of `frontier` read on the primary
    /// ([`Frontier::wal_insert`]): [`read_range_on`](Self::read_range_on) without its own round
    /// trip to the primary. `frontier` must come from [`probe_frontier`](Self::probe_frontier) on
    /// this store; without a WAL position (a probe on a server in recovery) it asks the primary
    /// as `read_range_on` does.
    ///
    /// # Errors
    /// As [`read_range_on`](Self::read_range_on).
    pub async fn read_frontier_on(
        &self,
        standby: &Standby,
        frontier: &Frontier,
        after: u64,
        categories: Option<&[String]>,
        event_types: Option<&[String]>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        match &frontier.wal_insert {
            Some(lsn) if frontier.safe > after => {
                self.read_replayed(standby, lsn, after, frontier.safe, categories, event_types)
                    .await
            }
            _ => {
                self.read_range_on(standby, after, frontier.safe, categories, event_types)
                    .await
            }
        }
    }

    /// The range read on `standby` once it has replayed the primary's WAL up to `lsn`.
    async fn read_replayed(
        &self,
        standby: &Standby,
        lsn: &str,
        after: u64,
        up_to: u64,
        categories: Option<&[String]>,
        event_types: Option<&[String]>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let client = standby
            .pool
            .get()
            .await
            .map_err(|e| backend(crate::ConnectError::from_pool(e, &standby.pool)))?;
        let replayed = || async {
            client
                .query_typed_one(REPLAYED, &[(&lsn, postgres_types::Type::TEXT)])
                .await
                .map(|row| row.get::<_, bool>(0))
                .map_err(backend)
        };
        // The check and the read go out together (one round trip): the read's statement starts
        // after the check's, so when the check passes, the read saw at least that much replay.
        let (caught_up, read) = futures::join!(
            replayed(),
            self.read_range_in(&**client, after, up_to, categories, event_types)
        );
        if caught_up? {
            return read;
        }
        let deadline = tokio::time::Instant::now() + standby.max_wait;
        let mut pause = Duration::from_millis(1);
        while !replayed().await? {
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Backend(crate::classify(
                    format!(
                        "the standby has not replayed the primary's WAL up to {lsn} within {:?}",
                        standby.max_wait
                    )
                    .into(),
                )));
            }
            // Replay progress has no notification on a standby: poll, backing off to 20 ms.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        self.read_range_in(&**client, after, up_to, categories, event_types)
            .await
    }

    /// [`read_safe`](Self::read_safe) with the events read on `standby`: the frontier is probed
    /// on the primary (the gap proof needs its transaction ids and locks), the events are read
    /// on the standby once it has replayed that far (see [`read_range_on`](Self::read_range_on)).
    ///
    /// # Errors
    /// As [`read_range_on`](Self::read_range_on) and [`read_safe`](Self::read_safe).
    pub async fn read_safe_on(
        &self,
        standby: &Standby,
        watch: &mut GapWatch,
        after: u64,
        max_positions: usize,
        categories: Option<&[String]>,
        event_types: Option<&[String]>,
    ) -> Result<SafeRead, StoreError> {
        let frontier = self.probe_frontier(watch, after, max_positions).await?;
        let events = self
            .read_frontier_on(standby, &frontier, after, categories, event_types)
            .await?;
        Ok(SafeRead { events, frontier })
    }
}
