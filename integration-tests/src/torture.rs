//! The torture run: the whole runtime under churn and faults, then every invariant checked.
//!
//! On a throwaway PostgreSQL cluster and a nats-server of its own, [`run`] starts:
//! - writers whose transactions append 1-3 events, sometimes roll back, sometimes roll back a
//!   savepoint holding an append (a hole inside a committed transaction), sometimes enqueue an
//!   outbox message, and sometimes stay open for up to a few hundred milliseconds;
//! - a fleet of worker processes running the same recorder consumers;
//! - an outbox relay to NATS JetStream;
//! - optionally a long transaction in another database of the cluster.
//!
//! Then it injects faults one at a time, each kind as often as asked, in random order: a worker
//! SIGKILLed, a worker SIGSTOPped (and resumed once the others took over), a worker's session
//! terminated, the database restarted, the relay killed (and started again), the broker
//! restarted. After each it measures the recovery: for worker and database faults, the time until
//! every consumer handled an event appended after the fault (from the server accepting
//! connections again, for a restart); for relay and broker faults, the time until every message
//! pending at the fault was published.
//!
//! After the faults, a quiet phase measures consumer lag, then the writers stop and the run checks:
//! each committed event handled exactly once per consumer and in order, every committed outbox
//! message published (once after dedup by id), no message dead, no consumer parked, every worker
//! process still running and stopping cleanly, lag within its bound. [`Report`] prints the table.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use deadpool_postgres::Pool;
use eventrail_core::{AppendRequest, ExpectedVersion, NewEvent, StreamName};
use eventrail_outbox::{NatsSink, NewMessage, Outbox, OutboxOptions, Relay};
use eventrail_store_postgres::PgEventStore;
use eventrail_worker::{TableNames, WorkerAdmin};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::checks::{assert_exactly_once_in_order, create_handled};
use crate::fleet::{WorkerCommand, WorkerProcess};
use crate::servers::{Cluster, NatsServer, eventually};

/// A fault the run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// A worker process SIGKILLed (its connections close).
    WorkerKilled,
    /// A worker process SIGSTOPped with its connections open, resumed after the takeover.
    WorkerFrozen,
    /// A worker's session backend terminated (`pg_terminate_backend`).
    SessionTerminated,
    /// The database restarted (`pg_ctl restart -m fast`).
    DatabaseRestarted,
    /// The relay task killed mid-flight and started again.
    RelayKilled,
    /// The broker SIGKILLed and started again.
    BrokerRestarted,
}

impl Fault {
    /// Every kind.
    pub const ALL: [Fault; 6] = [
        Fault::WorkerKilled,
        Fault::WorkerFrozen,
        Fault::SessionTerminated,
        Fault::DatabaseRestarted,
        Fault::RelayKilled,
        Fault::BrokerRestarted,
    ];

    fn label(self) -> &'static str {
        match self {
            Fault::WorkerKilled => "worker SIGKILL",
            Fault::WorkerFrozen => "worker SIGSTOP",
            Fault::SessionTerminated => "session terminated",
            Fault::DatabaseRestarted => "database restart",
            Fault::RelayKilled => "relay killed",
            Fault::BrokerRestarted => "broker restart",
        }
    }

    fn measured_from(self) -> &'static str {
        match self {
            Fault::DatabaseRestarted => "server accepts again",
            Fault::BrokerRestarted => "broker accepts again",
            _ => "fault",
        }
    }
}

/// What a run does.
#[derive(Debug, Clone)]
pub struct TortureConfig {
    /// How worker processes are started.
    pub worker_command: WorkerCommand,
    /// Worker processes in the fleet.
    pub processes: usize,
    /// Consumers each runs (the same ones everywhere).
    pub consumers: usize,
    /// Concurrent writers.
    pub writers: usize,
    /// Share of writer transactions rolled back.
    pub rollback_rate: f64,
    /// Share that also append in a savepoint rolled back (a hole in a committed transaction).
    pub savepoint_rate: f64,
    /// Share that enqueue an outbox message.
    pub outbox_rate: f64,
    /// Longest time a writer transaction stays open (uniformly drawn).
    pub max_transaction: Duration,
    /// A transaction open in another database of the cluster during the whole run.
    pub long_transaction_elsewhere: bool,
    /// Faults of each kind, in random order.
    pub faults: Vec<Fault>,
    /// Rounds of the fault list.
    pub rounds: usize,
    /// Churn before the first fault and between faults.
    pub between_faults: Duration,
    /// The quiet phase after the faults, where lag is measured against [`Self::lag_bound`].
    pub quiet: Duration,
    /// Consumer lag allowed in the quiet phase (p99).
    pub lag_bound: Duration,
    /// The relay's lease: how long a killed relay's claims stay taken.
    pub relay_lease: Duration,
    /// Longest a single recovery may take before the run fails.
    pub recovery_limit: Duration,
    /// Seed of the writers' and the fault schedule's randomness.
    pub seed: u64,
}

impl TortureConfig {
    /// A run of about a minute: every fault once, workers with a 3 s heartbeat timeout.
    #[must_use]
    pub fn short(worker_command: WorkerCommand) -> Self {
        Self {
            worker_command: worker_command.env("EVENTRAIL_TEST_HEARTBEAT_TIMEOUT_MS", 3000),
            processes: 3,
            consumers: 3,
            writers: 12,
            rollback_rate: 0.15,
            savepoint_rate: 0.1,
            outbox_rate: 0.2,
            max_transaction: Duration::from_millis(300),
            long_transaction_elsewhere: true,
            faults: Fault::ALL.to_vec(),
            rounds: 1,
            between_faults: Duration::from_secs(2),
            quiet: Duration::from_secs(5),
            lag_bound: Duration::from_secs(5),
            relay_lease: Duration::from_secs(3),
            recovery_limit: Duration::from_secs(60),
            seed: 0x7047_7572_6500,
        }
    }

    /// A run of about `minutes`: the short run's load with 30 writers and the default worker
    /// options, faults repeated until the time is spent.
    #[must_use]
    pub fn long(worker_command: WorkerCommand, minutes: u64) -> Self {
        let mut config = Self::short(worker_command.env("EVENTRAIL_TEST_DEFAULT_OPTIONS", 1));
        config
            .worker_command
            .env
            .retain(|(k, _)| k != "EVENTRAIL_TEST_HEARTBEAT_TIMEOUT_MS");
        config.writers = 30;
        config.between_faults = Duration::from_secs(5);
        config.quiet = Duration::from_secs(30);
        // A round of six faults takes about a minute with the defaults.
        config.rounds = usize::try_from(minutes.max(1)).unwrap_or(1);
        config
    }
}

/// Lag samples: for a head read at some moment, how long until every consumer reached it.
#[derive(Debug, Default, Clone)]
pub struct Samples(Vec<Duration>);

impl Samples {
    fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    /// How many.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `p`-th percentile (0-100), nearest rank.
    #[must_use]
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let mut v = self.0.clone();
        v.sort_unstable();
        let last = v.len().checked_sub(1)?;
        // Nearest rank: ceil(p/100 * n) - 1, within bounds.
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        Some(v[rank.saturating_sub(1).min(last)])
    }

    /// The largest.
    #[must_use]
    pub fn max(&self) -> Option<Duration> {
        self.0.iter().max().copied()
    }
}

/// What a run measured.
#[derive(Debug, Default)]
pub struct Report {
    /// Events committed.
    pub events: u64,
    /// Writer transactions committed, rolled back, and savepoints rolled back in committed ones.
    pub committed: u64,
    /// Writer transactions rolled back on purpose.
    pub rolled_back: u64,
    /// Savepoints holding an append rolled back.
    pub savepoint_rollbacks: u64,
    /// Writer transactions that failed (a fault cut them).
    pub failed: u64,
    /// Outbox messages committed, and published copies seen by the broker (before dedup).
    pub messages: u64,
    /// Copies the broker stored (JetStream drops a republished id within its window).
    pub published: u64,
    /// Recovery times per fault.
    pub recoveries: BTreeMap<Fault, Samples>,
    /// Lag while the faults ran (including them).
    pub lag_faults: Samples,
    /// Lag in the quiet phase after the faults.
    pub lag_quiet: Samples,
    /// Whether a long transaction in another database was open.
    pub long_transaction_elsewhere: bool,
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{} ms", d.as_millis()))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "events {} | transactions committed {}, rolled back {}, cut by faults {} | savepoint rollbacks {} | outbox messages {} (broker stored {})",
            self.events,
            self.committed,
            self.rolled_back,
            self.failed,
            self.savepoint_rollbacks,
            self.messages,
            self.published
        )?;
        writeln!(
            f,
            "| fault | count | measured from | recovery p50 | recovery p99 | max |"
        )?;
        writeln!(f, "|---|--:|---|--:|--:|--:|")?;
        for (fault, s) in &self.recoveries {
            writeln!(
                f,
                "| {} | {} | {} | {} | {} | {} |",
                fault.label(),
                s.len(),
                fault.measured_from(),
                ms(s.percentile(50.0)),
                ms(s.percentile(99.0)),
                ms(s.max())
            )?;
        }
        writeln!(f, "| lag | samples | | p50 | p99 | max |")?;
        writeln!(f, "|---|--:|---|--:|--:|--:|")?;
        for (label, s) in [
            ("during faults", &self.lag_faults),
            ("quiet, after faults", &self.lag_quiet),
        ] {
            writeln!(
                f,
                "| {label}{} | {} | | {} | {} | {} |",
                if self.long_transaction_elsewhere {
                    " (+ long tx in another db)"
                } else {
                    ""
                },
                s.len(),
                ms(s.percentile(50.0)),
                ms(s.percentile(99.0)),
                ms(s.max())
            )?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Counters {
    committed: AtomicU64,
    rolled_back: AtomicU64,
    savepoints: AtomicU64,
    failed: AtomicU64,
}

/// The run's database, broker and processes.
struct Rig {
    config: TortureConfig,
    cluster: Cluster,
    url: String,
    nats: NatsServer,
    sink: NatsSink,
    fleet: Vec<WorkerProcess>,
    spawned: usize,
    relay: Option<(CancellationToken, JoinHandle<()>)>,
    relay_options: OutboxOptions,
}

const STREAM: &str = "torture";

impl Rig {
    async fn start(config: TortureConfig) -> anyhow::Result<Self> {
        let cluster = Cluster::start(None).await?;
        let url = eventrail_devdb::recreate_database(&cluster.admin_url, "torture").await?;
        {
            let (mut client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .context("connecting to the torture database")?;
            tokio::spawn(connection);
            let migrator = eventrail_worker::worker_migrator("eventrail", &TableNames::default())?;
            eventrail_outbox::with_outbox_migration(
                migrator,
                "eventrail",
                &eventrail_outbox::OutboxTables::default(),
            )?
            .run(&mut client)
            .await?;
            create_handled(&client).await?;
        }
        let nats = NatsServer::start().await?;
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(nats.url())
            .await?;
        let mut context = async_nats::jetstream::new(client);
        context.set_timeout(Duration::from_secs(1));
        let sink = NatsSink::with_context(context).subject_prefix(format!("{STREAM}."));
        sink.jetstream()
            .create_stream(async_nats::jetstream::stream::Config {
                name: STREAM.into(),
                subjects: vec![format!("{STREAM}.>")],
                duplicate_window: Duration::from_secs(600),
                ..Default::default()
            })
            .await?;
        let relay_options = OutboxOptions::new()
            .lease(config.relay_lease)
            .poll_interval(Duration::from_millis(100));
        let mut rig = Self {
            config,
            cluster,
            url,
            nats,
            sink,
            fleet: Vec::new(),
            spawned: 0,
            relay: None,
            relay_options,
        };
        for _ in 0..rig.config.processes {
            rig.spawn_worker()?;
        }
        rig.start_relay()?;
        Ok(rig)
    }

    fn pool(&self, size: usize) -> anyhow::Result<Pool> {
        Ok(eventrail_devdb::pool(&self.url, size)?)
    }

    fn spawn_worker(&mut self) -> anyhow::Result<()> {
        self.spawned += 1;
        let name = format!("w{}", self.spawned);
        self.fleet.push(WorkerProcess::spawn(
            &self.config.worker_command,
            &self.url,
            &name,
            self.config.consumers,
        )?);
        Ok(())
    }

    fn start_relay(&mut self) -> anyhow::Result<()> {
        let relay = Relay::new(self.pool(4)?, self.sink.clone(), self.relay_options.clone())?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = relay.run(token).await {
                tracing::error!(error = %e, "the torture relay stopped");
            }
        });
        self.relay = Some((stop, task));
        Ok(())
    }
}

/// Appends one event through a fresh connection, retrying until the database takes it.
async fn marker(url: &str, limit: Duration) -> anyhow::Result<u64> {
    let deadline = Instant::now() + limit;
    loop {
        let attempt = async {
            let store = PgEventStore::new(eventrail_devdb::pool(url, 1)?);
            let out = eventrail_core::EventStore::append(
                &store,
                AppendRequest::new(
                    "marker-1".parse::<StreamName>()?,
                    ExpectedVersion::Any,
                    vec![NewEvent::json("Marker", serde_json::json!({}))],
                ),
            )
            .await?;
            anyhow::Ok(out.last_position())
        };
        match attempt.await {
            Ok(p) => return Ok(p),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "marker append failed; retrying");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.context("appending a marker after a fault")),
        }
    }
}

/// The lowest checkpoint, once every consumer has one.
async fn min_checkpoint(client: &Client, consumers: usize) -> anyhow::Result<Option<u64>> {
    let row = client
        .query_one(
            "SELECT count(*), min(position) FROM eventrail.consumer_checkpoints",
            &[],
        )
        .await?;
    let n: i64 = row.get(0);
    let min: Option<i64> = row.get(1);
    Ok(if usize::try_from(n)? >= consumers {
        min.map(u64::try_from).transpose()?
    } else {
        None
    })
}

/// Samples lag every 100 ms until `stop`: the head at each sample, and when every consumer
/// reached it. Connection failures (a restart) are ridden out.
async fn sample_lag(
    url: String,
    consumers: usize,
    quiet: Arc<AtomicBool>,
    stop: CancellationToken,
) -> (Samples, Samples) {
    let mut during = Samples::default();
    let mut after = Samples::default();
    let mut pending: VecDeque<(Instant, u64, bool)> = VecDeque::new();
    let mut client: Option<Client> = None;
    let mut last_sample = Instant::now() - Duration::from_secs(1);
    while !stop.is_cancelled() {
        if client.as_ref().is_none_or(Client::is_closed) {
            client = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                Ok((c, connection)) => {
                    tokio::spawn(connection);
                    Some(c)
                }
                Err(_) => None,
            };
        }
        if let Some(c) = &client {
            let now = Instant::now();
            if now.duration_since(last_sample) >= Duration::from_millis(100)
                && let Ok(row) = c
                    .query_one(
                        "SELECT coalesce(max(global_position), 0) FROM eventrail.events",
                        &[],
                    )
                    .await
            {
                let head: i64 = row.get(0);
                pending.push_back((
                    now,
                    u64::try_from(head).unwrap_or(0),
                    quiet.load(Ordering::Relaxed),
                ));
                last_sample = now;
            }
            if let Ok(Some(min)) = min_checkpoint(c, consumers).await {
                let now = Instant::now();
                while pending.front().is_some_and(|(_, head, _)| *head <= min) {
                    let (at, _, in_quiet) = pending.pop_front().expect("checked");
                    if in_quiet {
                        after.push(now - at);
                    } else {
                        during.push(now - at);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (during, after)
}

async fn writer(
    pool: Pool,
    config: Arc<TortureConfig>,
    n: usize,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let store = PgEventStore::new(pool.clone());
    let outbox = Outbox::new(&OutboxOptions::new()).expect("default outbox options are valid");
    let mut rng = StdRng::seed_from_u64(config.seed.wrapping_add(n as u64));
    while !stop.is_cancelled() {
        let roll_back = rng.random_bool(config.rollback_rate);
        let savepoint = rng.random_bool(config.savepoint_rate);
        let message = rng.random_bool(config.outbox_rate);
        let hold = config.max_transaction.mul_f64(rng.random::<f64>());
        let events = rng.random_range(1..=3_usize);
        let stream = format!("acct-{}", rng.random_range(0..64_u32));
        let key = format!("key-{}", rng.random_range(0..16_u32));
        let attempt = async {
            let mut client = pool.get().await?;
            let mut tx = client.transaction().await?;
            let request = |n: usize| -> anyhow::Result<AppendRequest> {
                Ok(AppendRequest::new(
                    stream.parse::<StreamName>()?,
                    ExpectedVersion::Any,
                    (0..n)
                        .map(|i| NewEvent::json("Moved", serde_json::json!({ "i": i })))
                        .collect(),
                ))
            };
            store.append_in(&tx, request(events)?).await?;
            if savepoint {
                let sp = tx.savepoint("torture").await?;
                store.append_in(&sp, request(1)?).await?;
                sp.rollback().await?;
            }
            if message {
                outbox
                    .enqueue(&tx, NewMessage::new("orders", key.clone(), vec![1_u8]))
                    .await?;
            }
            tokio::time::sleep(hold).await;
            if roll_back {
                tx.rollback().await?;
            } else {
                tx.commit().await?;
            }
            anyhow::Ok(())
        };
        match attempt.await {
            Ok(()) if roll_back => {
                counters.rolled_back.fetch_add(1, Ordering::Relaxed);
            }
            Ok(()) => {
                counters.committed.fetch_add(1, Ordering::Relaxed);
                if savepoint {
                    counters.savepoints.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The pid of the session holding `worker`'s identity lock (see `eventrail_worker::runtime`).
///
/// # Errors
/// A database error.
pub async fn session_pid(client: &Client, worker: Uuid) -> anyhow::Result<Option<i32>> {
    Ok(client
        .query_opt(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = 1701147140::oid
               AND objid = hashtext($1::text)::oid AND objsubid = 2
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&worker.to_string()],
        )
        .await?
        .map(|r| r.get(0)))
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Ids of outbox messages not yet published.
async fn unsent(client: &Client) -> anyhow::Result<Vec<Uuid>> {
    Ok(client
        .query(
            &format!(
                "SELECT message_id FROM {} WHERE state <> 'sent'",
                crate::OUTBOX_MESSAGES
            ),
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

impl Rig {
    /// Waits until every consumer reached `position`; the time it took from `since`. Rides out
    /// a database that does not accept connections yet.
    async fn consumers_reach(&self, position: u64, since: Instant) -> anyhow::Result<Duration> {
        let deadline = since + self.config.recovery_limit;
        let mut client: Option<Client> = None;
        loop {
            if client.as_ref().is_none_or(Client::is_closed) {
                client = connect(&self.url).await.ok();
            }
            if let Some(c) = &client
                && matches!(min_checkpoint(c, self.config.consumers).await, Ok(Some(m)) if m >= position)
            {
                return Ok(since.elapsed());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "consumers did not reach position {position} within {:?}",
                self.config.recovery_limit
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until none of `ids` is left unsent; the time it took from `since`.
    async fn messages_sent(&self, ids: &[Uuid], since: Instant) -> anyhow::Result<Duration> {
        let client = connect(&self.url).await?;
        let limit = self.config.recovery_limit.as_secs();
        eventually(limit, "the outbox to publish what was pending", || async {
            let left: i64 = client
                .query_one(
                    &format!(
                        "SELECT count(*) FROM {} WHERE message_id = ANY($1) AND state <> 'sent'",
                        crate::OUTBOX_MESSAGES
                    ),
                    &[&ids],
                )
                .await?
                .get(0);
            Ok(left == 0)
        })
        .await?;
        Ok(since.elapsed())
    }

    fn pick(&mut self, rng: &mut StdRng) -> usize {
        rng.random_range(0..self.fleet.len())
    }

    async fn inject(&mut self, fault: Fault, rng: &mut StdRng) -> anyhow::Result<Duration> {
        let limit = self.config.recovery_limit;
        match fault {
            Fault::WorkerKilled => {
                let i = self.pick(rng);
                self.fleet[i].kill()?;
                let at = Instant::now();
                let position = marker(&self.url, limit).await?;
                let took = self.consumers_reach(position, at).await?;
                self.fleet.swap_remove(i);
                self.spawn_worker()?;
                Ok(took)
            }
            Fault::WorkerFrozen => {
                let i = self.pick(rng);
                self.fleet[i].signal("STOP")?;
                let at = Instant::now();
                let position = marker(&self.url, limit).await;
                let took = match position {
                    Ok(p) => self.consumers_reach(p, at).await,
                    Err(e) => Err(e),
                };
                self.fleet[i].signal("CONT")?;
                took
            }
            Fault::SessionTerminated => {
                let i = self.pick(rng);
                let client = connect(&self.url).await?;
                let pid = session_pid(&client, self.fleet[i].id)
                    .await?
                    .with_context(|| format!("{} holds no identity lock", self.fleet[i].name))?;
                client
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await?;
                let at = Instant::now();
                let position = marker(&self.url, limit).await?;
                self.consumers_reach(position, at).await
            }
            Fault::DatabaseRestarted => {
                self.cluster.restart().await?;
                let at = Instant::now();
                let position = marker(&self.url, limit).await?;
                self.consumers_reach(position, at).await
            }
            Fault::RelayKilled => {
                // Killed mid-flight when it can be caught holding a claim.
                let client = connect(&self.url).await?;
                let _ = eventually(10, "the relay to hold a claim", || async {
                    let leased: i64 = client
                        .query_one(
                            &format!("SELECT count(*) FROM {} WHERE state = 'pending' AND lease_owner IS NOT NULL", crate::OUTBOX_MESSAGES),
                            &[],
                        )
                        .await?
                        .get(0);
                    Ok(leased > 0)
                })
                .await;
                if let Some((_, task)) = self.relay.take() {
                    task.abort();
                    let _ = task.await;
                }
                let at = Instant::now();
                let pending = unsent(&client).await?;
                self.start_relay()?;
                self.messages_sent(&pending, at).await
            }
            Fault::BrokerRestarted => {
                self.nats.kill()?;
                // An outage long enough for publishes to fail and the destination to back off.
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.nats.restart().await?;
                let at = Instant::now();
                let pending = unsent(&connect(&self.url).await?).await?;
                self.messages_sent(&pending, at).await
            }
        }
    }

    /// Every committed outbox message reached the broker (once after dedup by id); returns the
    /// number of committed messages and of copies the broker stored.
    async fn check_outbox(&self, client: &Client) -> anyhow::Result<(u64, u64)> {
        let dead: i64 = client
            .query_one(
                "SELECT count(*) FROM eventrail.outbox WHERE state = 'dead'",
                &[],
            )
            .await?
            .get(0);
        anyhow::ensure!(dead == 0, "{dead} outbox messages dead");
        let committed: HashSet<Uuid> = client
            .query("SELECT message_id FROM eventrail.outbox", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut stream = self.sink.jetstream().get_stream(STREAM).await?;
        let stored = stream.info().await?.state.messages;
        let mut seen = HashSet::new();
        for seq in 1..=stored {
            let m = stream.get_raw_message(seq).await?;
            let id: Uuid = m
                .headers
                .get("Nats-Msg-Id")
                .context("a published message without Nats-Msg-Id")?
                .as_str()
                .parse()?;
            seen.insert(id);
        }
        let missing = committed.difference(&seen).count();
        let strays = seen.difference(&committed).count();
        anyhow::ensure!(
            missing == 0 && strays == 0,
            "{missing} committed messages never published, {strays} published messages never committed"
        );
        Ok((committed.len() as u64, stored))
    }
}

/// Runs the torture and checks every invariant; the report of what it measured.
///
/// # Errors
/// The first broken invariant, or a recovery that took longer than the limit.
pub async fn run(config: TortureConfig) -> anyhow::Result<Report> {
    let mut rig = Rig::start(config.clone()).await?;
    let config = Arc::new(config);
    let admin = WorkerAdmin::new(rig.pool(2)?, "eventrail", &TableNames::default())?;
    eventually(60, "every consumer to be assigned", || async {
        let status = admin.status().await?;
        Ok(status.consumers.len() == config.consumers
            && status.consumers.iter().all(|c| c.worker_id.is_some()))
    })
    .await?;

    // A transaction open in another database all along: it must delay nobody.
    let _elsewhere = if config.long_transaction_elsewhere {
        let other = eventrail_devdb::recreate_database(&rig.cluster.admin_url, "unrelated").await?;
        let client = connect(&other).await?;
        client
            .batch_execute("CREATE TABLE t (x int); BEGIN; INSERT INTO t VALUES (1);")
            .await?;
        Some(client)
    } else {
        None
    };

    let stop_writers = CancellationToken::new();
    let counters = Arc::new(Counters::default());
    let writer_pool = rig.pool(config.writers + 2)?;
    let writers: Vec<_> = (0..config.writers)
        .map(|n| {
            tokio::spawn(writer(
                writer_pool.clone(),
                config.clone(),
                n,
                counters.clone(),
                stop_writers.clone(),
            ))
        })
        .collect();
    let quiet = Arc::new(AtomicBool::new(false));
    let stop_sampler = CancellationToken::new();
    let sampler = tokio::spawn(sample_lag(
        rig.url.clone(),
        config.consumers,
        quiet.clone(),
        stop_sampler.clone(),
    ));

    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut schedule: Vec<Fault> = (0..config.rounds)
        .flat_map(|_| config.faults.iter().copied())
        .collect();
    for i in (1..schedule.len()).rev() {
        schedule.swap(i, rng.random_range(0..=i));
    }
    let mut report = Report {
        long_transaction_elsewhere: config.long_transaction_elsewhere,
        ..Report::default()
    };
    for fault in schedule {
        tokio::time::sleep(config.between_faults).await;
        let took = rig
            .inject(fault, &mut rng)
            .await
            .with_context(|| format!("recovering from {}", fault.label()))?;
        tracing::info!(fault = fault.label(), ?took, "recovered");
        report.recoveries.entry(fault).or_default().push(took);
    }

    quiet.store(true, Ordering::Relaxed);
    tokio::time::sleep(config.quiet).await;
    stop_writers.cancel();
    for w in writers {
        w.await?;
    }
    let client = connect(&rig.url).await?;
    let head: i64 = client
        .query_one(
            "SELECT coalesce(max(global_position), 0) FROM eventrail.events",
            &[],
        )
        .await?
        .get(0);
    rig.consumers_reach(u64::try_from(head)?, Instant::now())
        .await
        .context("consumers reaching the final head")?;
    stop_sampler.cancel();
    let (during, after) = sampler.await?;
    report.lag_faults = during;
    report.lag_quiet = after;
    let pending = unsent(&client).await?;
    rig.messages_sent(&pending, Instant::now())
        .await
        .context("the outbox publishing everything")?;

    // Every process still runs (none exited on a fault) and stops cleanly.
    for p in &mut rig.fleet {
        anyhow::ensure!(p.running()?, "worker process {} exited", p.name);
    }
    let status = admin.status().await?;
    for c in &status.consumers {
        anyhow::ensure!(
            c.parked_error.is_none(),
            "{} parked: {:?}",
            c.consumer,
            c.parked_error
        );
    }
    for p in rig.fleet.drain(..) {
        p.stop()?;
    }
    if let Some((stop, task)) = rig.relay.take() {
        stop.cancel();
        task.await?;
    }

    assert_exactly_once_in_order(&client, config.consumers).await?;
    (report.messages, report.published) = rig.check_outbox(&client).await?;
    report.events = u64::try_from(
        client
            .query_one("SELECT count(*) FROM eventrail.events", &[])
            .await?
            .get::<_, i64>(0),
    )?;
    report.committed = counters.committed.load(Ordering::Relaxed);
    report.rolled_back = counters.rolled_back.load(Ordering::Relaxed);
    report.savepoint_rollbacks = counters.savepoints.load(Ordering::Relaxed);
    report.failed = counters.failed.load(Ordering::Relaxed);
    let p99 = report.lag_quiet.percentile(99.0);
    anyhow::ensure!(
        !report.lag_quiet.is_empty() && p99.is_some_and(|p| p <= config.lag_bound),
        "lag p99 after the faults {p99:?} exceeds {:?} ({} samples)",
        config.lag_bound,
        report.lag_quiet.len()
    );
    Ok(report)
}
