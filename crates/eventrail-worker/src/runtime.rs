//! One worker instance: registration, heartbeat, leadership, assignments, consumer loops.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use eventrail_store_postgres::PgEventStore;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};
use uuid::Uuid;

use crate::assign::{LiveWorker, assign};
use crate::consumer::DynConsumer;
use crate::consumer_loop::{ConsumerContext, run_consumer};
use crate::dispatcher::run_dispatcher;
use crate::error::db;
use crate::tables::Tables;
use crate::{Consumer, LeaderMode, WorkerError, WorkerOptions};

/// Advisory lock class of a worker's identity (key: hash of its id).
pub(crate) const IDENTITY_LOCK: i32 = 1_701_147_140;
/// Advisory lock class of leadership (key: hash of the checkpoint table's name).
pub(crate) const LEADER_LOCK: i32 = 1_701_147_141;
/// Channel on which batch commits announce checkpoints (`consumer position`).
pub const CHECKPOINT_CHANNEL: &str = "eventrail_checkpoints";

/// Builds a [`Worker`].
#[must_use]
pub struct WorkerBuilder {
    store: PgEventStore,
    connect: tokio_postgres::Config,
    options: WorkerOptions,
    consumers: Vec<Arc<dyn DynConsumer>>,
}

/// The consumers' names, for `Debug`.
fn consumer_names(consumers: &[Arc<dyn DynConsumer>]) -> Vec<&str> {
    consumers.iter().map(|c| c.name()).collect()
}

impl fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("options", &self.options)
            .field("consumers", &consumer_names(&self.consumers))
            .finish_non_exhaustive()
    }
}

impl WorkerBuilder {
    /// Sets the options.
    pub fn options(mut self, options: WorkerOptions) -> Self {
        self.options = options;
        self
    }

    /// Adds a consumer.
    pub fn consumer(mut self, consumer: impl Consumer) -> Self {
        self.consumers.push(Arc::new(consumer));
        self
    }

    /// Checks names and builds the worker.
    ///
    /// # Errors
    /// [`WorkerError::InvalidConsumer`] for an empty or repeated consumer name,
    /// [`WorkerError::Config`] for a refused table or channel name.
    pub fn build(self) -> Result<Worker, WorkerError> {
        let mut seen = std::collections::HashSet::new();
        for c in &self.consumers {
            let name = c.name();
            if name.trim().is_empty() {
                return Err(WorkerError::InvalidConsumer {
                    name: name.to_owned(),
                    reason: "it is empty",
                });
            }
            if !seen.insert(name.to_owned()) {
                return Err(WorkerError::InvalidConsumer {
                    name: name.to_owned(),
                    reason: "it is used twice",
                });
            }
        }
        eventrail_store_postgres::validate_identifier(
            "notify channel",
            &self.options.notify_channel,
        )?;
        let tables = Tables::new(&self.options.tables, self.store.options().schema_name())?;
        Ok(Worker {
            id: Uuid::now_v7(),
            store: self.store,
            connect: self.connect,
            options: Arc::new(self.options),
            tables: Arc::new(tables),
            consumers: self.consumers,
        })
    }
}

/// A worker instance: runs the consumers the leader assigns to it.
///
/// ```no_run
/// # async fn f(store: eventrail_store_postgres::PgEventStore, config: tokio_postgres::Config, c: impl eventrail_worker::Consumer) -> Result<(), eventrail_worker::WorkerError> {
/// use tokio_util::sync::CancellationToken;
/// let worker = eventrail_worker::Worker::builder(store, config).consumer(c).build()?;
/// let shutdown = CancellationToken::new();
/// worker.run(shutdown.clone()).await?; // until `shutdown.cancel()`
/// # Ok(()) }
/// ```
pub struct Worker {
    id: Uuid,
    store: PgEventStore,
    connect: tokio_postgres::Config,
    options: Arc<WorkerOptions>,
    tables: Arc<Tables>,
    consumers: Vec<Arc<dyn DynConsumer>>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.id)
            .field("name", &self.options.name)
            .field("consumers", &consumer_names(&self.consumers))
            .finish_non_exhaustive()
    }
}

/// State shared by the worker's tasks.
pub(crate) struct Shared {
    pub(crate) id: Uuid,
    pub(crate) store: PgEventStore,
    pub(crate) connect: tokio_postgres::Config,
    pub(crate) options: Arc<WorkerOptions>,
    pub(crate) tables: Arc<Tables>,
    pub(crate) head: watch::Sender<u64>,
}

struct Running {
    epoch: i64,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Worker {
    /// A builder for a worker on `store`; `connect` opens its dedicated connections (session
    /// locks, LISTEN), which a pool cannot provide.
    pub fn builder(store: PgEventStore, connect: tokio_postgres::Config) -> WorkerBuilder {
        WorkerBuilder {
            store,
            connect,
            options: WorkerOptions::default(),
            consumers: Vec::new(),
        }
    }

    /// This instance's id (a UUID v7, new on every start).
    #[must_use]
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Runs until `shutdown` is cancelled (then finishes or rolls back the batches in flight and
    /// releases its assignments and leadership at once) or a fatal error.
    ///
    /// # Errors
    /// [`WorkerError::Deregistered`], [`WorkerError::SessionLost`], [`WorkerError::Database`].
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let span = info_span!("worker", id = %self.id, name = %self.options.name);
        self.run_inner(shutdown).instrument(span).await
    }

    async fn run_inner(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let names: Vec<String> = self.consumers.iter().map(|c| c.name().to_owned()).collect();
        let t = &self.tables;
        {
            let client = self.store.pool().get().await.map_err(db)?;
            // Best effort: only registrations far older than the liveness timeout.
            let stale = format!(
                "{} seconds",
                self.options.heartbeat_timeout.as_secs_f64() * 10.0
            );
            if let Err(e) = client
                .execute(
                    &format!(
                        "DELETE FROM {} WHERE heartbeat_at < now() - $1::text::interval",
                        t.nodes
                    ),
                    &[&stale],
                )
                .await
            {
                warn!(error = %crate::error::chain(&e), "could not clean up stale workers");
            }
            client
                .execute(
                    &format!(
                        "INSERT INTO {} (worker_id, name, consumers) VALUES ($1, $2, $3)",
                        t.nodes
                    ),
                    &[&self.id, &self.options.name, &names],
                )
                .await
                .map_err(db)?;
            client
                .execute(
                    &format!(
                        "WITH added AS (INSERT INTO {} (consumer) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING RETURNING consumer)
                         SELECT pg_notify($2, consumer || ' 0') FROM added",
                        t.checkpoints
                    ),
                    &[&names, &CHECKPOINT_CHANNEL],
                )
                .await
                .map_err(db)?;
            for table in [&t.assignments] {
                client
                    .execute(
                        &format!("INSERT INTO {table} (consumer) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING"),
                        &[&names],
                    )
                    .await
                    .map_err(db)?;
            }
        }
        let (session, mut session_dead) = connect_session(&self.connect).await?;
        session
            .execute(
                "SELECT pg_advisory_lock($1, hashtext($2::text))",
                &[&IDENTITY_LOCK, &self.id.to_string()],
            )
            .await
            .map_err(db)?;
        info!(consumers = ?names, "worker registered");

        let (head, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            id: self.id,
            store: self.store.clone(),
            connect: self.connect.clone(),
            options: self.options.clone(),
            tables: self.tables.clone(),
            head,
        });
        let stop = shutdown.child_token();
        let dispatcher = tokio::spawn(run_dispatcher(shared.clone(), stop.clone()));
        let consumers: HashMap<String, Arc<dyn DynConsumer>> = self
            .consumers
            .iter()
            .map(|c| (c.name().to_owned(), c.clone()))
            .collect();
        let running: Arc<Mutex<HashMap<String, Running>>> = Arc::default();
        let mut leader = false;
        let mut tick = tokio::time::interval(
            self.options
                .heartbeat_interval
                .min(self.options.rebalance_interval),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heartbeat = tokio::time::Instant::now() - self.options.heartbeat_interval;
        let outcome = loop {
            tokio::select! {
                () = stop.cancelled() => break Ok(()),
                dead = &mut session_dead => break Err(WorkerError::SessionLost(dead.unwrap_or_else(|_| "connection closed".into()))),
                _ = tick.tick() => {}
            }
            if last_heartbeat.elapsed() >= self.options.heartbeat_interval {
                last_heartbeat = tokio::time::Instant::now();
                match heartbeat(&shared).await {
                    Ok(true) => {}
                    Ok(false) => break Err(WorkerError::Deregistered(self.id)),
                    Err(e) => warn!(error = %crate::error::chain(&e), "heartbeat failed"),
                }
            }
            match take_leadership(&shared, &session, leader).await {
                Ok(now_leader) => {
                    if now_leader != leader {
                        info!(leader = now_leader, "leadership changed");
                        metrics::gauge!("eventrail_worker_leader").set(if now_leader {
                            1.0
                        } else {
                            0.0
                        });
                    }
                    leader = now_leader;
                }
                Err(e) => warn!(error = %crate::error::chain(&e), "leader election failed"),
            }
            if leader && let Err(e) = rebalance(&shared).await {
                warn!(error = %crate::error::chain(&e), "rebalance failed");
            }
            if let Err(e) = follow_assignments(&shared, &consumers, &running, &stop).await {
                warn!(error = %crate::error::chain(&e), "reading assignments failed");
            }
        };

        // Graceful: stop the consumer loops (each finishes or rolls back its batch), then hand
        // everything back at once.
        stop.cancel();
        let tasks: Vec<Running> = running.lock().await.drain().map(|(_, r)| r).collect();
        for r in tasks {
            r.cancel.cancel();
            let _ = r.task.await;
        }
        let _ = dispatcher.await;
        if let Err(e) = release(&shared, &session, leader).await {
            warn!(error = %crate::error::chain(&e), "releasing assignments failed; others take over after the heartbeat timeout");
        }
        info!("worker stopped");
        outcome
    }
}

/// SQL that is true while a session holds `class`'s advisory lock on `key_sql` (an SQL text
/// expression), in this database. `extra` further restricts the lock row `l`.
pub(crate) fn advisory_lock_held(class: i32, key_sql: &str, extra: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND l.classid = {class}::oid AND l.objid = hashtext({key_sql})::oid AND l.objsubid = 2 {extra})"
    )
}

/// SQL that is true while the worker whose id is `worker_id_sql` holds its identity lock.
pub(crate) fn identity_lock_held(worker_id_sql: &str) -> String {
    advisory_lock_held(IDENTITY_LOCK, &format!("{worker_id_sql}::text"), "")
}

/// Opens the worker's own connection; the receiver resolves when the connection ends.
pub(crate) async fn connect_session(
    config: &tokio_postgres::Config,
) -> Result<
    (
        Client,
        tokio::sync::oneshot::Receiver<eventrail_core::BoxError>,
    ),
    WorkerError,
> {
    let (client, connection) = config.connect(NoTls).await.map_err(db)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let error: eventrail_core::BoxError = match connection.await {
            Ok(()) => "connection closed".into(),
            Err(e) => e.into(),
        };
        let _ = tx.send(error);
    });
    Ok((client, rx))
}

async fn heartbeat(shared: &Shared) -> Result<bool, WorkerError> {
    let client = shared.store.pool().get().await.map_err(db)?;
    let n = client
        .execute(
            &format!(
                "UPDATE {} SET heartbeat_at = now() WHERE worker_id = $1",
                shared.tables.nodes
            ),
            &[&shared.id],
        )
        .await
        .map_err(db)?;
    Ok(n == 1)
}

async fn take_leadership(
    shared: &Shared,
    session: &Client,
    leader: bool,
) -> Result<bool, WorkerError> {
    match shared.options.leader_mode {
        LeaderMode::AdvisoryLock => {
            if leader {
                return Ok(true); // the session lock is held until the session ends
            }
            let row = session
                .query_one(
                    "SELECT pg_try_advisory_lock($1, hashtext($2))",
                    &[&LEADER_LOCK, &shared.tables.checkpoints],
                )
                .await
                .map_err(db)?;
            Ok(row.get(0))
        }
        LeaderMode::Lease => {
            let ttl = format!("{} seconds", shared.options.heartbeat_timeout.as_secs_f64());
            let client = shared.store.pool().get().await.map_err(db)?;
            let n = client
                .execute(
                    &format!(
                        "UPDATE {} SET worker_id = $1, expires_at = now() + $2::text::interval
                         WHERE id = 1 AND (worker_id = $1 OR worker_id IS NULL OR expires_at < now())",
                        shared.tables.leader
                    ),
                    &[&shared.id, &ttl],
                )
                .await
                .map_err(db)?;
            Ok(n == 1)
        }
    }
}

/// The leader's step: recompute assignments over live workers and move what changed.
async fn rebalance(shared: &Shared) -> Result<(), WorkerError> {
    let t = &shared.tables;
    let mut client = shared.store.pool().get().await.map_err(db)?;
    let tx = client.transaction().await.map_err(db)?;
    let liveness = match shared.options.leader_mode {
        // A worker whose session died has lost its identity lock: it is dead at once.
        LeaderMode::AdvisoryLock => format!("AND {}", identity_lock_held("n.worker_id")),
        LeaderMode::Lease => String::new(),
    };
    let timeout = format!("{} seconds", shared.options.heartbeat_timeout.as_secs_f64());
    let live: Vec<LiveWorker> = tx
        .query(
            &format!("SELECT worker_id, consumers FROM {} n WHERE heartbeat_at > now() - $1::text::interval {liveness}", t.nodes),
            &[&timeout],
        )
        .await
        .map_err(db)?
        .iter()
        .map(|r| LiveWorker { id: r.get(0), consumers: r.get(1) })
        .collect();
    let current: HashMap<String, Option<Uuid>> = tx
        .query(
            &format!(
                "SELECT consumer, worker_id FROM {} FOR UPDATE",
                t.assignments
            ),
            &[],
        )
        .await
        .map_err(db)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let names: Vec<String> = current.keys().cloned().collect();
    let wanted = assign(&names, &live, &current);
    let mut moved = 0;
    for (consumer, worker) in &wanted {
        if current.get(consumer) != Some(worker) {
            tx.execute(
                &format!("UPDATE {} SET worker_id = $2, epoch = epoch + 1, assigned_at = now() WHERE consumer = $1", t.assignments),
                &[consumer, worker],
            )
            .await
            .map_err(db)?;
            moved += 1;
        }
    }
    tx.commit().await.map_err(db)?;
    if moved > 0 {
        info!(moved, live = live.len(), "rebalanced consumers");
        metrics::counter!("eventrail_worker_rebalanced_total").increment(moved);
    }
    Ok(())
}

/// Starts the consumers assigned here, stops those moved away or re-assigned with a new epoch.
async fn follow_assignments(
    shared: &Arc<Shared>,
    consumers: &HashMap<String, Arc<dyn DynConsumer>>,
    running: &Mutex<HashMap<String, Running>>,
    stop: &CancellationToken,
) -> Result<(), WorkerError> {
    let client = shared.store.pool().get().await.map_err(db)?;
    let mine: HashMap<String, i64> = client
        .query(
            &format!(
                "SELECT consumer, epoch FROM {} WHERE worker_id = $1",
                shared.tables.assignments
            ),
            &[&shared.id],
        )
        .await
        .map_err(db)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    drop(client);
    let mut running = running.lock().await;
    let finished: Vec<String> = running
        .iter()
        .filter(|(name, r)| r.task.is_finished() || mine.get(*name) != Some(&r.epoch))
        .map(|(name, _)| name.clone())
        .collect();
    for name in finished {
        if let Some(r) = running.remove(&name) {
            debug!(consumer = %name, "stopping consumer");
            r.cancel.cancel();
            let _ = r.task.await;
        }
    }
    for (name, epoch) in mine {
        if running.contains_key(&name) {
            continue;
        }
        let Some(consumer) = consumers.get(&name) else {
            continue;
        };
        let cancel = stop.child_token();
        let ctx = ConsumerContext {
            shared: shared.clone(),
            consumer: consumer.clone(),
            epoch,
            cancel: cancel.clone(),
        };
        let span = info_span!("consumer", consumer = %name, epoch);
        debug!(consumer = %name, epoch, "starting consumer");
        running.insert(
            name,
            Running {
                epoch,
                cancel,
                task: tokio::spawn(run_consumer(ctx).instrument(span)),
            },
        );
    }
    metrics::gauge!("eventrail_worker_consumers_running").set(running.len() as f64);
    Ok(())
}

async fn release(shared: &Shared, session: &Client, leader: bool) -> Result<(), WorkerError> {
    let client = shared.store.pool().get().await.map_err(db)?;
    let t = &shared.tables;
    client
        .execute(
            &format!("UPDATE {} SET worker_id = NULL, epoch = epoch + 1, assigned_at = now() WHERE worker_id = $1", t.assignments),
            &[&shared.id],
        )
        .await
        .map_err(db)?;
    client
        .execute(
            &format!("DELETE FROM {} WHERE worker_id = $1", t.nodes),
            &[&shared.id],
        )
        .await
        .map_err(db)?;
    if leader && shared.options.leader_mode == LeaderMode::Lease {
        client
            .execute(
                &format!(
                    "UPDATE {} SET worker_id = NULL, expires_at = '-infinity' WHERE worker_id = $1",
                    t.leader
                ),
                &[&shared.id],
            )
            .await
            .map_err(db)?;
    }
    // Ends the session: its identity and leadership locks go with it.
    session
        .execute("SELECT pg_advisory_unlock_all()", &[])
        .await
        .map_err(db)?;
    Ok(())
}

/// Sleeps for `d` unless cancelled first; returns whether it was cancelled.
pub(crate) async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = cancel.cancelled() => true,
        () = tokio::time::sleep(d) => false,
    }
}
