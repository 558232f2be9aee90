//! The outbox relay, one concern per module:
//!
//! - `run`: the run loop, its wakeups (hints, settles, the poll interval) and single cycles;
//! - `claim`: claiming a batch of due messages under a lease;
//! - `deliver`: publishing a batch key by key and settling each key's outcome;
//! - `lease`: renewing a batch's leases while it publishes, and releasing them at shutdown;
//! - `upkeep`: cleanup of sent messages and the pending-messages gauges;
//! - `db`: the database access all of these go through ([`RelayDb`]), one implementation per
//!   database: `postgres` here, `crate::mysql` behind the `mysql` feature.
//!
//! This module holds the relay itself, its constructors and what a cycle reports. The loop,
//! the publishing and the lease bookkeeping live in [`Core`], generic over the database, so
//! that every database's relay has the same semantics.

use std::fmt;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use deadpool_postgres::Pool;
use eventrail_store_postgres::PgConnectOptions;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::tables::Tables;
use crate::{OutboxError, OutboxOptions, Sink};

mod claim;
mod db;
mod deliver;
mod lease;
mod postgres;
mod run;
mod upkeep;

pub(crate) use db::{
    ClaimRequest, ClaimScope, Claimed, ClaimedRow, RelayDb, SettleParams, Settled, Settlement,
};

/// What one relay cycle did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CycleReport {
    /// Messages claimed.
    pub claimed: usize,
    /// Messages the broker acknowledged and that are now marked sent.
    pub sent: usize,
    /// Messages that failed and will be retried.
    pub retried: usize,
    /// Messages that went dead.
    pub dead: usize,
    /// Messages handed back untried (after a failure of their key, or at shutdown).
    pub returned: usize,
    /// Messages handed back with their attempts because their destination was unavailable or
    /// missing (the destination is backed off).
    pub deferred: usize,
}

impl CycleReport {
    fn add(&mut self, other: Self) {
        self.claimed += other.claimed;
        self.sent += other.sent;
        self.retried += other.retried;
        self.dead += other.dead;
        self.returned += other.returned;
        self.deferred += other.deferred;
    }
}

/// The relay's machinery over one database: claims, publishing, leases, settles and upkeep.
pub(crate) struct Core<S, D> {
    pub(crate) id: Uuid,
    pub(crate) db: D,
    pub(crate) sink: S,
    pub(crate) options: Arc<OutboxOptions>,
    /// Permits for the partition keys publishing at once, shared by the batches in flight.
    keys_in_flight: Semaphore,
    /// Messages per key the last claim found: the next claim locks about `batch_size` divided
    /// by this many heads, rather than heads it would not take messages from.
    run_length: AtomicUsize,
    /// Messages claimed and not settled yet, over all batches.
    in_flight_messages: AtomicUsize,
    /// Signalled when a settle freed keys, so that `run` may claim again.
    keys_freed: Notify,
    /// Messages settled since `run` last claimed.
    settled_since_claim: AtomicUsize,
    /// Keys whose full runs were sent since they were last claimed: claimed by name next.
    follow: Mutex<Vec<String>>,
}

impl<S, D> Core<S, D> {
    pub(crate) fn new(db: D, sink: S, options: OutboxOptions) -> Self {
        Self {
            id: Uuid::now_v7(),
            db,
            sink,
            keys_in_flight: Semaphore::new(options.max_in_flight),
            run_length: AtomicUsize::new(1),
            in_flight_messages: AtomicUsize::new(0),
            keys_freed: Notify::new(),
            settled_since_claim: AtomicUsize::new(0),
            follow: Mutex::new(Vec::new()),
            options: Arc::new(options),
        }
    }
}

/// Delivers the outbox to a [`Sink`]: claims due messages under a lease, publishes them outside
/// any transaction, and marks them sent only once the broker acknowledged them.
///
/// Any number of relays may run on one outbox. The messages of one partition key are published
/// one at a time and in order, by one relay at a time; different keys publish concurrently.
///
/// Delivery is at least once. A message is published again (with the same id, which brokers use
/// to deduplicate) when a relay dies, or its lease expires, between the broker's ack and the
/// mark.
pub struct Relay<S> {
    core: Core<S, postgres::PgRelayDb>,
    connect: Option<PgConnectOptions>,
}

impl<S> fmt::Debug for Relay<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("id", &self.core.id)
            .field("options", &self.core.options)
            .finish_non_exhaustive()
    }
}

impl<S: Sink> Relay<S> {
    /// A relay of the outbox in `pool`'s database to `sink`.
    ///
    /// # Errors
    /// [`OutboxError::Config`] for a refused schema, table or channel name.
    pub fn new(pool: Pool, sink: S, options: OutboxOptions) -> Result<Self, OutboxError> {
        let db = postgres::PgRelayDb {
            tables: Arc::new(Tables::new(&options)?),
            statements: options.statements,
            pool,
        };
        Ok(Self {
            core: Core::new(db, sink, options),
            connect: None,
        })
    }

    /// A relay with a pool of its own on `connect` (TLS, timeouts, pool size), LISTENing for
    /// enqueue hints there too. Its sessions are named `eventrail-relay` in `pg_stat_activity`
    /// unless `connect` sets an `application_name`. Nothing connects yet. Behind PgBouncer in
    /// transaction pooling mode, use [`Relay::new`] with a pool through PgBouncer (and
    /// [`OutboxOptions::statements`]) and [`Relay::listen`] with direct settings instead: LISTEN
    /// needs a session.
    ///
    /// # Errors
    /// [`OutboxError::Config`] for a refused schema, table or channel name,
    /// [`OutboxError::Connect`] for TLS settings that cannot work (an unreadable CA file).
    pub fn connect(
        connect: &PgConnectOptions,
        sink: S,
        options: OutboxOptions,
    ) -> Result<Self, OutboxError> {
        let pool = connect.pool(RELAY_COMPONENT)?;
        Ok(Self::new(pool, sink, options)?.listen(connect))
    }

    /// LISTEN for enqueue hints on a dedicated connection with these settings (with
    /// [`Wakeup::Notify`](crate::Wakeup::Notify), the default): a [`PgConnectOptions`] or a `tokio_postgres::Config`.
    /// Without it the relay polls. These settings must reach PostgreSQL directly, not through
    /// PgBouncer in transaction pooling mode (the relay's pool may).
    #[must_use]
    pub fn listen(mut self, connect: impl Into<PgConnectOptions>) -> Self {
        self.connect = Some(connect.into());
        self
    }

    /// This relay's id (the lease owner of the messages it holds).
    #[must_use]
    pub fn id(&self) -> Uuid {
        self.core.id
    }

    /// The sink.
    pub fn sink(&self) -> &S {
        &self.core.sink
    }

    /// Relays until `shutdown` is cancelled, then stops claiming, lets in-flight publishes
    /// finish within the shutdown timeout, hands back the rest and releases its leases.
    ///
    /// Claims are pipelined: while up to
    /// [`claims_in_flight`](crate::OutboxOptions::claims_in_flight) batches' worth of messages publish
    /// and settle, the next claim runs (it skips their keys, whose heads are leased). Keys are
    /// settled as their runs finish, and each batch's leases are renewed until it is settled.
    ///
    /// Database failures are logged and retried every poll interval; they do not stop the relay.
    ///
    /// # Errors
    /// [`OutboxError::Database`] when the leases cannot be released at shutdown (they expire).
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), OutboxError> {
        let wake = Arc::new(Notify::new());
        let stop_listener = shutdown.child_token();
        let listener = match (&self.connect, self.core.options.wakeup) {
            (Some(connect), crate::Wakeup::Notify) => Some(tokio::spawn(run::listen(
                connect.clone(),
                self.core.db.tables.channel.clone(),
                self.core.options.poll_interval,
                Arc::clone(&wake),
                stop_listener.clone(),
            ))),
            _ => None,
        };
        let result = self.core.run(&shutdown, &wake).await;
        stop_listener.cancel();
        if let Some(listener) = listener {
            let _ = listener.await;
        }
        result
    }

    /// One cycle: claim a batch, publish it, settle it. Returns what happened; `claimed` is 0
    /// when nothing was due.
    ///
    /// # Errors
    /// [`OutboxError::Database`]: the claim failed (nothing was published), or the settle
    /// failed (the batch's leases expire and it is published again).
    pub async fn relay_once(&self) -> Result<CycleReport, OutboxError> {
        self.core.relay_once().await
    }

    /// Deletes sent messages older than the retention (measured on the database clock at each
    /// statement, so the cut-off slides), in statements of at most the cleanup batch size,
    /// until none is left, forgets the keys left without unsent messages, and forgets
    /// backed-off destinations that have no pending message left. Returns how many messages
    /// were deleted.
    ///
    /// # Errors
    /// [`OutboxError::Database`].
    pub async fn cleanup(&self) -> Result<u64, OutboxError> {
        let deleted = self.core.cleanup().await?;
        // `run` does this on the stats interval instead.
        self.core.forget_idle_keys().await?;
        Ok(deleted)
    }
}

/// The `application_name` of the relay's sessions.
const RELAY_COMPONENT: &str = "eventrail-relay";
