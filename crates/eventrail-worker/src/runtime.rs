//! One worker instance: registration, heartbeat, leadership, assignments, consumer loops.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use eventrail_core::BoxError;
use eventrail_store_postgres::{ConnectError, PgConnectOptions, PgEventStore, Standby};
use futures::future::BoxFuture;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_postgres::types::Type;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};
use uuid::Uuid;

use crate::assign::{LiveWorker, assign};
use crate::consumer::DynConsumer;
use crate::consumer_loop::{ConsumerContext, run_consumer};
use crate::dispatcher::run_dispatcher;
use crate::elector::{AnyElector, Check, Context, Grant};
use crate::error::db;
use crate::tables::Tables;
use crate::{Consumer, WorkerError, WorkerOptions};

/// Advisory lock class of a worker's identity (key: hash of its id).
pub(crate) const IDENTITY_LOCK: i32 = eventrail_store_postgres::keys::WORKER_IDENTITY_LOCK;
/// Advisory lock class of leadership (key: hash of the checkpoint table's name).
pub(crate) const LEADER_LOCK: i32 = eventrail_store_postgres::keys::WORKER_LEADER_LOCK;

/// Builds a [`Worker`].
#[must_use]
pub struct WorkerBuilder {
    store: PgEventStore,
    connect: PgConnectOptions,
    options: WorkerOptions,
    consumers: Vec<Arc<dyn DynConsumer>>,
    tasks: Vec<Task>,
    standby: Option<Standby>,
}

/// A task that runs for the worker's lifetime (a saga runner, a relay), stopped with it.
/// Boxed: tasks of any type share one list.
type Task = (
    String,
    Box<dyn FnOnce(CancellationToken) -> BoxFuture<'static, Result<(), BoxError>> + Send>,
);

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

    /// Reads the consumers' events on a hot standby of the store's database, so that
    /// subscribers' reads scale past one server. The frontier is still probed on the primary
    /// (the gap proof needs its transaction ids and locks), a batch's events are read on the
    /// standby once it has replayed that far, and checkpoints and handlers' writes go to the
    /// primary in the batch transaction (see [`Standby`]).
    pub fn standby(mut self, standby: Standby) -> Self {
        self.standby = Some(standby);
        self
    }

    /// Runs `task` beside the consumers for as long as the worker runs (for example a saga
    /// runner: `|stop| Box::pin(async move { runner.run(stop).await.map_err(Into::into) })`).
    /// It gets a token cancelled when the worker stops, and the worker's shutdown waits for it.
    /// An error it returns is logged; it does not stop the worker.
    pub fn task<F>(mut self, name: impl Into<String>, task: F) -> Self
    where
        F: FnOnce(CancellationToken) -> BoxFuture<'static, Result<(), BoxError>> + Send + 'static,
    {
        self.tasks.push((name.into(), Box::new(task)));
        self
    }

    /// Checks names and builds the worker.
    ///
    /// # Errors
    /// [`WorkerError::InvalidConsumer`] for an empty or repeated consumer name,
    /// [`WorkerError::Config`] for a refused table or channel name,
    /// [`WorkerError::InvalidElection`] for a configured leader election that cannot work.
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
        // The store's channel: a worker cannot listen where its appends do not notify.
        let mut options = self.options;
        match self.store.notify_channel() {
            Some(channel) => options.notify_channel = channel.to_owned(),
            None if options.dispatcher == crate::DispatcherStrategy::Notify => {
                tracing::info!("the store sends no notifications: the worker polls");
                options.dispatcher = crate::DispatcherStrategy::Poll;
            }
            None => {}
        }
        if !options.leader_mode_set {
            options.leader_mode =
                crate::LeaderMode::from_config(self.store.config().leader_election())?;
        }
        let names = options
            .tables
            .clone()
            .unwrap_or_else(|| self.store.config().worker_tables().clone());
        let tables = Tables::new(&names, self.store.options().schema_name())?;
        Ok(Worker {
            id: Uuid::now_v7(),
            store: self.store,
            connect: self.connect,
            options: Arc::new(options),
            tables: Arc::new(tables),
            consumers: self.consumers,
            tasks: self.tasks,
            standby: self.standby,
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
    connect: PgConnectOptions,
    options: Arc<WorkerOptions>,
    tables: Arc<Tables>,
    consumers: Vec<Arc<dyn DynConsumer>>,
    tasks: Vec<Task>,
    standby: Option<Standby>,
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

impl Shared {
    /// The `application_name` of the worker's own connections.
    pub(crate) fn component(&self) -> String {
        format!("eventrail-worker/{}", self.options.name)
    }
}

/// State shared by the worker's tasks.
pub(crate) struct Shared {
    pub(crate) id: Uuid,
    pub(crate) store: PgEventStore,
    pub(crate) connect: PgConnectOptions,
    pub(crate) options: Arc<WorkerOptions>,
    pub(crate) tables: Arc<Tables>,
    pub(crate) head: watch::Sender<u64>,
    /// Signalled when a leader announced moved assignments: follow them now, not at the next
    /// tick.
    pub(crate) assignments_moved: tokio::sync::Notify,
    /// Where consumers read their events, when not on the primary.
    pub(crate) standby: Option<Standby>,
}

/// The payload a leader sends on the events channel after it moved consumers (never a
/// position, so subscribers that parse positions ignore it).
pub(crate) const ASSIGNMENTS_MOVED: &str = "assignments";

struct Running {
    epoch: i64,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Worker {
    /// A builder for a worker on `store`; `connect` opens its dedicated connections (session
    /// locks, LISTEN), which a pool cannot provide: a [`PgConnectOptions`] (TLS from `sslmode`,
    /// timeouts) or a `tokio_postgres::Config`. They are named `eventrail-worker/<name>` in
    /// `pg_stat_activity` unless the options set an `application_name`.
    ///
    /// Behind PgBouncer in transaction pooling mode, `store` may be on a pool through PgBouncer
    /// with [`Statements::Unnamed`](eventrail_store_postgres::Statements::Unnamed) (the worker
    /// sends its statements as the store does, and keeps only transaction-scoped state), but
    /// `connect` must reach PostgreSQL directly: its session locks and LISTEN need a session.
    pub fn builder(store: PgEventStore, connect: impl Into<PgConnectOptions>) -> WorkerBuilder {
        WorkerBuilder {
            store,
            connect: connect.into(),
            options: WorkerOptions::default(),
            consumers: Vec::new(),
            tasks: Vec::new(),
            standby: None,
        }
    }

    /// This instance's id (a UUID v7, new on every start).
    #[must_use]
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Runs until `shutdown` is cancelled (then finishes or rolls back the batches in flight and
    /// releases its assignments and leadership at once) or the worker is deregistered.
    ///
    /// Database faults do not end it: when its session connection is lost (terminated, the
    /// server restarted or failed over) it reconnects with capped exponential backoff and
    /// jitter, registers again under the same id, takes its identity lock again and rejoins
    /// leader election; its consumer loops and dispatcher back off and resume meanwhile.
    ///
    /// # Errors
    /// [`WorkerError::Deregistered`] when its registration row was removed while its session
    /// was alive (an operator removed it); [`WorkerError::Connect`] at start when the
    /// connection settings can never work (an unreadable CA file), or when the worker could not
    /// register within [`WorkerOptions::register_timeout`].
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let span = info_span!("worker", id = %self.id, name = %self.options.name);
        self.run_inner(shutdown).instrument(span).await
    }

    async fn run_inner(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let names: Vec<String> = self.consumers.iter().map(|c| c.name().to_owned()).collect();
        let (head, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            id: self.id,
            store: self.store.clone(),
            connect: self.connect.clone(),
            options: self.options.clone(),
            tables: self.tables.clone(),
            head,
            assignments_moved: tokio::sync::Notify::new(),
            standby: self.standby.clone(),
        });
        let stop = shutdown.child_token();
        let mut elector = AnyElector::start(&shared)?;
        let Some(first) = establish_first(&shared, &names, &stop).await? else {
            // Shut down before the database ever answered: nothing to hand back.
            info!("worker stopped before it could register");
            return Ok(());
        };
        info!(consumers = ?names, "worker registered");
        let mut session = Some(first);

        let dispatcher = tokio::spawn(run_dispatcher(shared.clone(), stop.clone()));
        let side_tasks: Vec<(String, JoinHandle<Result<(), BoxError>>)> = self
            .tasks
            .into_iter()
            .map(|(name, task)| (name, tokio::spawn(task(stop.clone()))))
            .collect();
        let consumers: HashMap<String, Arc<dyn DynConsumer>> = self
            .consumers
            .iter()
            .map(|c| (c.name().to_owned(), c.clone()))
            .collect();
        let running: Arc<Mutex<HashMap<String, Running>>> = Arc::default();
        let mut leader: Option<Grant> = None;
        // The liveness checks (a stale leader to depose, stale workers to move consumers away
        // from) run every tick: a twentieth of the heartbeat timeout keeps a frozen process's
        // takeover within about the timeout.
        let mut tick = tokio::time::interval(
            self.options
                .heartbeat_interval
                .min(self.options.rebalance_interval)
                .min((self.options.heartbeat_timeout / 20).max(Duration::from_millis(50))),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heartbeat = tokio::time::Instant::now() - self.options.heartbeat_interval;
        let outcome = loop {
            let lost = match session.as_mut() {
                None => None,
                Some(s) => tokio::select! {
                    () = stop.cancelled() => break Ok(()),
                    dead = &mut s.dead => Some(dead.unwrap_or_else(|_| "connection closed".into())),
                    _ = tick.tick() => None,
                    () = shared.assignments_moved.notified() => None,
                    // Leadership suspended or won: act on it now, not at the next tick.
                    () = elector.changed() => None,
                },
            };
            if session.is_none() || lost.is_some() {
                // The session's end released the identity lock and leadership: the others see
                // this worker as dead and move its consumers (whose checkpoint writes are fenced
                // by epoch meanwhile). Come back as a new member under the same id.
                let error = lost.unwrap_or_else(|| "connection closed".into());
                warn!(error = %crate::error::chain(&*error), was_leader = leader.is_some(), "the worker's session connection was lost; reconnecting");
                if leader.is_some() {
                    metrics::gauge!("eventrail_worker_leader").set(0.0);
                }
                leader = None;
                elector.forget();
                session = None;
                metrics::counter!("eventrail_worker_session_reconnects_total").increment(1);
                match establish(&shared, &names, &stop, false, None).await? {
                    Some(s) => session = Some(s),
                    None => break Ok(()),
                }
                info!("worker registered again after losing its session");
                continue;
            }
            let Some(s) = session.as_ref() else {
                continue;
            };
            if last_heartbeat.elapsed() >= self.options.heartbeat_interval {
                last_heartbeat = tokio::time::Instant::now();
                match heartbeat(&shared).await {
                    Ok(true) => {}
                    // A closed session explains a missing row (cleaned up while this worker was
                    // cut off): reconnecting registers again. Otherwise an operator removed it.
                    Ok(false) if s.client.is_closed() => {}
                    Ok(false) => break Err(WorkerError::Deregistered(self.id)),
                    Err(e) => warn!(error = %crate::error::chain(&e), "heartbeat failed"),
                }
            }
            let cx = Context {
                shared: &shared,
                session: s,
            };
            match elector.campaign(&cx).await {
                Ok(now) => {
                    if now.is_some() != leader.is_some() {
                        info!(
                            leader = now.is_some(),
                            token = now.map(|g| g.token),
                            "leadership changed"
                        );
                        metrics::gauge!("eventrail_worker_leader").set(if now.is_some() {
                            1.0
                        } else {
                            0.0
                        });
                        if now.is_none() && elector.external() {
                            step_down(&shared).await;
                        }
                    }
                    leader = now;
                }
                Err(e) => warn!(error = %crate::error::chain(&e), "leader election failed"),
            }
            if let Some(grant) = leader {
                // Abandoned (rolled back) the moment the elector reports the grant lost.
                let outcome = tokio::select! {
                    biased;
                    () = elector.lost(grant) => Ok(Rebalanced::NotLeader),
                    outcome = rebalance(&shared, &elector, &cx, grant) => outcome,
                };
                match outcome {
                    Ok(Rebalanced::Done) => {}
                    Ok(Rebalanced::Busy) => {
                        debug!(
                            "assignments are locked by another transaction; rebalancing at the next tick"
                        );
                    }
                    Ok(Rebalanced::NotLeader) => {
                        warn!(
                            token = grant.token,
                            "no longer the leader (deposed or suspended): the rebalance was refused"
                        );
                        metrics::gauge!("eventrail_worker_leader").set(0.0);
                        leader = None;
                        elector.forget();
                        if elector.external() {
                            step_down(&shared).await;
                        }
                    }
                    Err(e) => warn!(error = %crate::error::chain(&e), "rebalance failed"),
                }
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
        for (name, task) in side_tasks {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(task = %name, error = %crate::error::chain(&*e), "a worker task failed")
                }
                Err(e) => warn!(task = %name, error = %e, "a worker task panicked"),
            }
        }
        // The external elector hands leadership back first (revoking its lease, closing its
        // session), so the next leader need not wait for a timeout.
        elector.resign().await;
        release(
            &shared,
            session.as_ref(),
            leader.is_some(),
            elector.external(),
        )
        .await;
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
///
/// TCP keepalives on both ends, scaled to the heartbeat timeout: a peer that vanished without
/// closing (a hung host, a cut network) is noticed by the server, which then ends the session and
/// releases its identity and leader locks, and by this side, which then reconnects.
pub(crate) async fn connect_session(
    shared: &Shared,
) -> Result<
    (
        Client,
        tokio::sync::oneshot::Receiver<eventrail_core::BoxError>,
    ),
    WorkerError,
> {
    let probe = (shared.options.heartbeat_timeout / 3).max(Duration::from_secs(1));
    // Within the heartbeat timeout too: a session that takes longer is no use to the others.
    let timeout = shared
        .connect
        .get_connect_timeout()
        .min(shared.options.heartbeat_timeout);
    let options = shared
        .connect
        .clone()
        .tcp_keepalives(probe, 3)
        .connect_timeout(timeout);
    let (client, connection) = options.connect(&shared.component()).await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let error: eventrail_core::BoxError = match connection.await {
            Ok(()) => "connection closed".into(),
            Err(e) => e.into(),
        };
        let _ = tx.send(error);
    });
    let seconds = probe.as_secs();
    client
        .batch_execute(&format!(
            "SET tcp_keepalives_idle = {seconds}; SET tcp_keepalives_interval = {seconds}; \
             SET tcp_keepalives_count = 3"
        ))
        .await
        .map_err(db)?;
    Ok((client, rx))
}

/// The worker's own connection: it holds the identity lock and, in advisory-lock mode,
/// leadership.
pub(crate) struct Session {
    pub(crate) client: Client,
    /// Its backend's pid: a rebalance checks that this backend still holds the leader lock.
    pub(crate) pid: i32,
    /// Resolves when the connection ends.
    dead: tokio::sync::oneshot::Receiver<eventrail_core::BoxError>,
}

/// The first registration: as [`establish`], but a setting that can never work ends the start
/// at once, and [`WorkerOptions::register_timeout`] bounds the whole.
async fn establish_first(
    shared: &Shared,
    names: &[String],
    stop: &CancellationToken,
) -> Result<Option<Session>, WorkerError> {
    let Some(timeout) = shared.options.register_timeout else {
        return establish(shared, names, stop, true, None).await;
    };
    let mut last = None;
    match tokio::time::timeout(
        timeout,
        establish(shared, names, stop, true, Some(&mut last)),
    )
    .await
    {
        Ok(outcome) => outcome,
        Err(_) => Err(last.unwrap_or(WorkerError::Connect(ConnectError::Timeout {
            after: timeout,
        }))),
    }
}

/// Registers (again) and opens the session, retrying with capped exponential backoff and
/// jitter until it succeeds; `None` when `stop` is cancelled first. Each failure is kept in
/// `last`; at start (`first`), a connection setting that can never work ends it with that
/// error.
async fn establish(
    shared: &Shared,
    names: &[String],
    stop: &CancellationToken,
    first: bool,
    mut last: Option<&mut Option<WorkerError>>,
) -> Result<Option<Session>, WorkerError> {
    let mut failures: u32 = 0;
    loop {
        if stop.is_cancelled() {
            return Ok(None);
        }
        // Each attempt is bounded: a server that accepts TCP and never answers must not hold
        // the worker (or its shutdown) forever.
        let attempt = tokio::time::timeout(
            shared.connect.get_connect_timeout() * 3 + shared.options.heartbeat_timeout,
            try_establish(shared, names, first && failures == 0),
        );
        let outcome = tokio::select! {
            () = stop.cancelled() => return Ok(None),
            outcome = attempt => outcome.unwrap_or_else(|_| Err(WorkerError::Connect(ConnectError::Timeout {
                after: shared.connect.get_connect_timeout(),
            }))),
        };
        match outcome {
            Ok(session) => return Ok(Some(session)),
            // Only at start: a running worker keeps retrying (a CA file being replaced).
            Err(WorkerError::Connect(e)) if first && e.is_setting() => {
                return Err(WorkerError::Connect(e));
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = reconnect_backoff(&shared.options, failures);
                warn!(error = %crate::error::chain(&e), failures, retry_in = ?wait, "registering the worker failed; retrying");
                if let Some(last) = last.as_deref_mut() {
                    *last = Some(e);
                }
                if sleep_or_cancel(wait, stop).await {
                    return Ok(None);
                }
            }
        }
    }
}

/// Capped exponential backoff with jitter: a random wait in the upper half of
/// `100 ms × 2^(failures-1)`, capped at the reconnect cap (so a fleet does not reconnect in
/// lockstep, and progress resumes within about the cap once the database is back).
pub(crate) fn reconnect_backoff(options: &WorkerOptions, failures: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let cap = options.max_reconnect_interval;
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    let full = Duration::from_millis(100).saturating_mul(factor).min(cap);
    // A per-call random number without a dependency: std's hasher keys are random.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let half = full / 2;
    half + Duration::from_nanos(random % u64::try_from(half.as_nanos()).unwrap_or(1).max(1))
}

/// One attempt: register (the row may still exist, or may have been cleaned up), make sure the
/// consumers' rows exist, open the session and take the identity lock.
async fn try_establish(
    shared: &Shared,
    names: &[String],
    clean_up: bool,
) -> Result<Session, WorkerError> {
    let t = &shared.tables;
    {
        let pool = shared.store.pool();
        let client = pool
            .get()
            .await
            .map_err(|e| WorkerError::Connect(ConnectError::from_pool(e, pool)))?;
        if clean_up {
            // Best effort: only registrations far older than the liveness timeout.
            let stale = format!(
                "{} seconds",
                shared.options.heartbeat_timeout.as_secs_f64() * 10.0
            );
            if let Err(e) = client
                .execute_typed(
                    &format!(
                        "DELETE FROM {} WHERE heartbeat_at < now() - $1::text::interval",
                        t.nodes
                    ),
                    &[(&stale, Type::TEXT)],
                )
                .await
            {
                warn!(error = %crate::error::chain(&e), "could not clean up stale workers");
            }
        }
        let row = client
            .query_typed_one(
                &format!(
                    "INSERT INTO {} (worker_id, name, consumers) VALUES ($1, $2, $3)
                     ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = now(), name = EXCLUDED.name, consumers = EXCLUDED.consumers
                     RETURNING xmax = 0",
                    t.nodes
                ),
                &[
                    (&shared.id, Type::UUID),
                    (&shared.options.name, Type::TEXT),
                    (&names, Type::TEXT_ARRAY),
                ],
            )
            .await
            .map_err(db)?;
        if !clean_up {
            let inserted: bool = row.get(0);
            debug!(
                row_was_cleaned_up = inserted,
                "registration row written again"
            );
        }
        client
            .execute_typed(
                &format!(
                    "WITH added AS (INSERT INTO {} (consumer) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING RETURNING consumer)
                     SELECT pg_notify($2, consumer || ' 0') FROM added",
                    t.checkpoints
                ),
                &[
                    (&names, Type::TEXT_ARRAY),
                    (&shared.tables.checkpoint_channel, Type::TEXT),
                ],
            )
            .await
            .map_err(db)?;
        client
            .execute_typed(
                &format!(
                    "INSERT INTO {} (consumer) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
                    t.assignments
                ),
                &[(&names, Type::TEXT_ARRAY)],
            )
            .await
            .map_err(db)?;
    }
    let within = shared.options.heartbeat_timeout;
    let (client, dead) = tokio::time::timeout(within, connect_session(shared))
        .await
        .map_err(|_| WorkerError::Connect(ConnectError::Timeout { after: within }))??;
    // A session of this worker that the server still believes alive (cut off, not closed) would
    // keep the identity lock forever: it is ours and dead to us, so end it.
    let row = client
        .query_one(
            &format!(
                "SELECT pg_backend_pid(),
                        (SELECT count(pg_terminate_backend(l.pid, 1000)) FROM pg_locks l
                         WHERE l.locktype = 'advisory' AND l.granted AND l.pid <> pg_backend_pid()
                           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                           AND l.classid = {IDENTITY_LOCK}::oid AND l.objid = hashtext($1::text)::oid AND l.objsubid = 2)"
            ),
            &[&shared.id.to_string()],
        )
        .await
        .map_err(db)?;
    let pid: i32 = row.get(0);
    let ended: i64 = row.get(1);
    if ended > 0 {
        info!(
            sessions = ended,
            "ended an old session of this worker that still held its identity lock"
        );
    }
    let locked: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock($1, hashtext($2::text))",
            &[&IDENTITY_LOCK, &shared.id.to_string()],
        )
        .await
        .map_err(db)?
        .get(0);
    if !locked {
        return Err(db("the identity lock is still held by an old session"));
    }
    Ok(Session { client, pid, dead })
}

async fn heartbeat(shared: &Shared) -> Result<bool, WorkerError> {
    let client = shared.store.pool().get().await.map_err(db)?;
    let n = client
        .execute_typed(
            &format!(
                "UPDATE {} SET heartbeat_at = now() WHERE worker_id = $1",
                shared.tables.nodes
            ),
            &[(&shared.id, Type::UUID)],
        )
        .await
        .map_err(db)?;
    Ok(n == 1)
}

/// What a rebalance attempt ended with.
enum Rebalanced {
    /// Assignments are up to date.
    Done,
    /// Another transaction (a deposed leader's) holds the assignment rows: try at the next tick.
    Busy,
    /// This worker is not the leader any more: nothing was written.
    NotLeader,
}

/// The leader's step: recompute assignments over live workers and move what changed.
///
/// Fenced: after locking the assignment rows, and in the same transaction, it checks that this
/// worker still leads (the elector's check: its session holds the leader lock, its lease is
/// current and locked against takeover until commit, or its external grant holds) and raises
/// the stored fencing token to its own or finds it higher; every row it writes carries its
/// token, which a trigger checks again. A deposed leader writes nothing.
async fn rebalance(
    shared: &Shared,
    elector: &AnyElector,
    cx: &Context<'_>,
    grant: Grant,
) -> Result<Rebalanced, WorkerError> {
    let t = &shared.tables;
    let mut client = shared.store.pool().get().await.map_err(db)?;
    let tx = client.transaction().await.map_err(db)?;
    tx.batch_execute(&crate::fence::rebalance_settings(&shared.options))
        .await
        .map_err(db)?;
    let current: HashMap<String, Option<Uuid>> = match tx
        .query(
            &format!(
                "SELECT consumer, worker_id FROM {} FOR UPDATE",
                t.assignments
            ),
            &[],
        )
        .await
    {
        Ok(rows) => rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
        Err(e) if crate::fence::is_lock_busy(&e) => return Ok(Rebalanced::Busy),
        Err(e) => return Err(db(e)),
    };
    for check in [
        elector.still_leads(&tx, cx, grant).await?,
        crate::fence::raise_fence(&tx, shared, grant, elector.external()).await?,
    ] {
        match check {
            Check::Leads => {}
            Check::Deposed => return Ok(Rebalanced::NotLeader),
            Check::Busy => return Ok(Rebalanced::Busy),
        }
    }
    let liveness = if shared.options.leader_mode == crate::LeaderMode::Lease {
        String::new()
    } else {
        // A worker whose session died has lost its identity lock: it is dead at once.
        format!("AND {}", identity_lock_held("n.worker_id"))
    };
    let timeout = format!("{} seconds", shared.options.heartbeat_timeout.as_secs_f64());
    let live: Vec<LiveWorker> = tx
        .query(
            &format!("SELECT worker_id, consumers FROM {} n WHERE heartbeat_at > clock_timestamp() - $1::text::interval {liveness}", t.nodes),
            &[&timeout],
        )
        .await
        .map_err(db)?
        .iter()
        .map(|r| LiveWorker { id: r.get(0), consumers: r.get(1) })
        .collect();
    let names: Vec<String> = current.keys().cloned().collect();
    let wanted = assign(&names, &live, &current);
    let mut moved = 0;
    for (consumer, worker) in &wanted {
        if current.get(consumer) != Some(worker) {
            tx.execute(
                &format!("UPDATE {} SET worker_id = $2, epoch = epoch + 1, assigned_at = now(), leader_token = $3 WHERE consumer = $1", t.assignments),
                &[consumer, worker, &grant.token],
            )
            .await
            .map_err(db)?;
            moved += 1;
        }
    }
    if moved > 0 && !shared.options.notify_channel.is_empty() {
        // The new owners start at once (their dispatchers hear it with the commit) rather than
        // at their next tick; polling workers still follow at the tick.
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&shared.options.notify_channel, &ASSIGNMENTS_MOVED],
        )
        .await
        .map_err(db)?;
    }
    // An external grant is checked once more, the instant before the commit.
    if elector.external() && elector.still_leads(&tx, cx, grant).await? != Check::Leads {
        return Ok(Rebalanced::NotLeader);
    }
    tx.commit().await.map_err(db)?;
    if moved > 0 {
        info!(
            moved,
            live = live.len(),
            token = grant.token,
            "rebalanced consumers"
        );
        metrics::counter!("eventrail_worker_rebalanced_total").increment(moved);
    }
    Ok(Rebalanced::Done)
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
        .query_typed(
            &format!(
                "SELECT consumer, epoch FROM {} WHERE worker_id = $1",
                shared.tables.assignments
            ),
            &[(&shared.id, Type::UUID)],
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

/// Removes this worker's registration and hands its assignments back, in one transaction that
/// waits out a rebalance in flight: a leader reads the live workers after it locks every
/// assignment row, so one that counted this worker live (before the registration's removal
/// committed) holds those rows until it commits, and the release, a statement after the lock,
/// sees what it assigned here. Released first and removed second, as two statements, a
/// rebalance in between handed the released consumers straight back to this leaving worker.
/// Without `wait_for_rebalance` (the fallback when the rows stay locked), it neither locks nor
/// waits, and only that narrow race remains (the next rebalance undoes it). Returns how many
/// assignments were released.
async fn deregister(
    shared: &Shared,
    client: &mut deadpool_postgres::Object,
    wait_for_rebalance: bool,
) -> Result<u64, WorkerError> {
    let t = &shared.tables;
    let tx = client.transaction().await.map_err(db)?;
    if wait_for_rebalance {
        // A deposed leader frozen while it holds the rows is waited for this long at most. The
        // rows are locked in the rebalance's order (the table's), so the two cannot deadlock.
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = {}",
            crate::fence::lock_wait(&shared.options).as_millis().max(1)
        ))
        .await
        .map_err(db)?;
    }
    tx.execute_typed(
        &format!("DELETE FROM {} WHERE worker_id = $1", t.nodes),
        &[(&shared.id, Type::UUID)],
    )
    .await
    .map_err(db)?;
    if wait_for_rebalance {
        tx.batch_execute(&format!("SELECT FROM {} FOR UPDATE", t.assignments))
            .await
            .map_err(db)?;
    }
    let n = tx
        .execute_typed(
            &format!("UPDATE {} SET worker_id = NULL, epoch = epoch + 1, assigned_at = now() WHERE worker_id = $1", t.assignments),
            &[(&shared.id, Type::UUID)],
        )
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(n)
}

/// Hands everything back at once on shutdown, logging what was and was not released.
async fn release(shared: &Shared, session: Option<&Session>, leader: bool, external: bool) {
    let t = &shared.tables;
    let client = match shared.store.pool().get().await {
        Ok(client) => Some(client),
        Err(e) => {
            warn!(error = %e, "no connection to release assignments; the leader moves them once this worker's session is gone or its heartbeat is past the timeout");
            None
        }
    };
    if let Some(mut client) = client {
        let released = match deregister(shared, &mut client, true).await {
            Ok(n) => Ok(n),
            Err(e) => {
                // The rows stayed locked (a frozen deposed leader) or the transaction failed.
                debug!(error = %crate::error::chain(&e), "could not deregister after the rebalance in flight");
                deregister(shared, &mut client, false).await
            }
        };
        match released {
            Ok(n) => debug!(assignments = n, "deregistered and assignments released"),
            Err(e) => {
                warn!(error = %crate::error::chain(&e), "releasing assignments failed; the leader moves them once this worker's session is gone or its heartbeat is past the timeout");
            }
        }
        if leader
            && (external || shared.options.leader_mode == crate::LeaderMode::Lease)
            && let Err(e) = client
                .execute_typed(
                    &format!(
                        "UPDATE {} SET worker_id = NULL, expires_at = '-infinity' WHERE worker_id = $1",
                        t.leader
                    ),
                    &[(&shared.id, Type::UUID)],
                )
                .await
        {
            warn!(error = %crate::error::chain(&e), "giving up the leader lease failed; another worker leads once it expires");
        }
    }
    // The session's locks (identity, leadership) go at once; the connection closes on drop.
    match session {
        Some(s) => {
            if let Err(e) = s
                .client
                .execute("SELECT pg_advisory_unlock_all()", &[])
                .await
            {
                debug!(error = %crate::error::chain(&e), "unlocking on the session failed; its locks end with the connection");
            }
        }
        None => debug!("no session to release: its locks ended with it"),
    }
}

/// An external elector's leadership ended: the `worker_leader` row stops naming this worker at
/// once (best effort: it names it only until its expiry otherwise).
async fn step_down(shared: &Shared) {
    let outcome = async {
        let client = shared.store.pool().get().await.map_err(db)?;
        client
            .execute_typed(
                &format!(
                    "UPDATE {} SET expires_at = '-infinity' WHERE id = 1 AND worker_id = $1",
                    shared.tables.leader
                ),
                &[(&shared.id, Type::UUID)],
            )
            .await
            .map_err(db)
    }
    .await;
    if let Err(e) = outcome {
        debug!(error = %crate::error::chain(&e), "could not clear the leader row; it expires by itself");
    }
}

/// Sleeps for `d` unless cancelled first; returns whether it was cancelled.
pub(crate) async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = cancel.cancelled() => true,
        () = tokio::time::sleep(d) => false,
    }
}
