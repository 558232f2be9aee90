use std::collections::{HashMap, HashSet};
use std::fmt;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use eventrail_store_postgres::{ConnectError, ListenEvent, PgConnectOptions};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{Notify, Semaphore};
use tokio_postgres::Row;
use tokio_postgres::types::Type;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, instrument, warn};
use uuid::Uuid;

use crate::error::{chain, db};
use crate::message::headers_from_json;
use crate::tables::Tables;
use crate::{FailureClass, OutboxError, OutboxMessage, OutboxOptions, Sink, SinkError, Wakeup};

/// What happened to one claimed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Sent,
    Failed,
    Permanent,
    Returned,
    /// The destination was unavailable: handed back with its attempt, the destination backed off.
    Unavailable,
    /// The destination does not exist: as `Unavailable`.
    Missing,
}

impl Outcome {
    fn code(self) -> &'static str {
        match self {
            Self::Sent => "s",
            Self::Failed => "f",
            Self::Permanent => "p",
            Self::Returned => "r",
            Self::Unavailable => "u",
            Self::Missing => "m",
        }
    }
}

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

/// The arrays of one settle statement: each message, its key's head, its outcome and error,
/// and its destination.
struct Settlement<'m> {
    sequences: Vec<i64>,
    heads: Vec<i64>,
    codes: Vec<&'static str>,
    errors: Vec<Option<String>>,
    destinations: Vec<&'m str>,
}

impl<'m> Settlement<'m> {
    /// The messages of these keys; a message without an outcome is handed back untried.
    fn of<'a>(
        groups: impl Iterator<Item = &'a (i64, Vec<&'m OutboxMessage>)>,
        outcomes: &HashMap<i64, (Outcome, Option<String>)>,
    ) -> Self
    where
        'm: 'a,
    {
        let mut rows = Self {
            sequences: Vec::new(),
            heads: Vec::new(),
            codes: Vec::new(),
            errors: Vec::new(),
            destinations: Vec::new(),
        };
        for (head, group) in groups {
            for m in group {
                let (outcome, error) = outcomes
                    .get(&m.sequence)
                    .map_or((Outcome::Returned, None), |(o, e)| (*o, e.clone()));
                rows.sequences.push(m.sequence);
                rows.heads.push(*head);
                rows.codes.push(outcome.code());
                rows.errors.push(error);
                rows.destinations.push(m.destination.as_str());
            }
        }
        rows
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
    id: Uuid,
    pool: Pool,
    connect: Option<PgConnectOptions>,
    sink: S,
    options: Arc<OutboxOptions>,
    tables: Arc<Tables>,
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
}

/// A claimed batch: its messages in outbox order, and for each the sequence of its key's head
/// (the one row whose lease holds the key).
struct Batch {
    messages: Vec<OutboxMessage>,
    heads: Vec<i64>,
    /// Whether the claim locked as many heads as it asked for: more keys may be due.
    more: bool,
    /// When the claim was sent: the lease runs from a database instant after this one.
    leased_at: Instant,
    /// Destinations whose backoff has just ended: one publish probes each first.
    probes: HashSet<String>,
}

/// What a batch knows of a destination while it publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Publish.
    Open,
    /// Its backoff has just ended: the first publish probes it, the others wait for the result.
    Probe,
    /// A publish found it unavailable or missing: the batch's other messages to it go back
    /// untried.
    Down,
}

/// One destination's [`Reach`] within a batch, and the lock a probe holds while it publishes.
struct Gate {
    reach: Mutex<Reach>,
    probing: tokio::sync::Mutex<()>,
}

impl Gate {
    fn new(reach: Reach) -> Self {
        Self {
            reach: Mutex::new(reach),
            probing: tokio::sync::Mutex::new(()),
        }
    }

    fn reach(&self) -> Reach {
        *self.reach.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, reach: Reach) {
        *self.reach.lock().unwrap_or_else(PoisonError::into_inner) = reach;
    }
}

/// Which keys of a batch this relay still holds, as far as it knows.
struct Leases {
    /// Heads whose lease a renewal found taken over or gone.
    lost: HashSet<i64>,
    /// Heads whose key is settled: nothing left to renew.
    settled: HashSet<i64>,
    /// When the last successful claim or renewal lapses: past it, no key is held.
    valid_until: Instant,
}

impl Leases {
    fn holds(&self, head: i64) -> bool {
        Instant::now() < self.valid_until && !self.lost.contains(&head)
    }
}

impl<S> fmt::Debug for Relay<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("id", &self.id)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<S: Sink> Relay<S> {
    /// A relay of the outbox in `pool`'s database to `sink`.
    ///
    /// # Errors
    /// [`OutboxError::Config`] for a refused schema, table or channel name.
    pub fn new(pool: Pool, sink: S, options: OutboxOptions) -> Result<Self, OutboxError> {
        Ok(Self {
            id: Uuid::now_v7(),
            tables: Arc::new(Tables::new(&options)?),
            pool,
            connect: None,
            sink,
            keys_in_flight: Semaphore::new(options.max_in_flight),
            run_length: AtomicUsize::new(1),
            in_flight_messages: AtomicUsize::new(0),
            keys_freed: Notify::new(),
            settled_since_claim: AtomicUsize::new(0),
            options: Arc::new(options),
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
    /// [`Wakeup::Notify`], the default): a [`PgConnectOptions`] or a `tokio_postgres::Config`.
    /// Without it the relay polls. These settings must reach PostgreSQL directly, not through
    /// PgBouncer in transaction pooling mode (the relay's pool may).
    #[must_use]
    pub fn listen(mut self, connect: impl Into<PgConnectOptions>) -> Self {
        self.connect = Some(connect.into());
        self
    }

    /// A pooled connection; a pool timeout is a typed [`ConnectError`].
    async fn client(&self) -> Result<deadpool_postgres::Object, OutboxError> {
        self.pool
            .get()
            .await
            .map_err(|e| OutboxError::Connect(ConnectError::from_pool(e, &self.pool)))
    }

    /// This relay's id (the lease owner of the messages it holds).
    #[must_use]
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// Relays until `shutdown` is cancelled, then stops claiming, lets in-flight publishes
    /// finish within the shutdown timeout, hands back the rest and releases its leases.
    ///
    /// Claims are pipelined: while up to
    /// [`claims_in_flight`](OutboxOptions::claims_in_flight) batches' worth of messages publish
    /// and settle, the next claim runs (it skips their keys, whose heads are leased). Keys are
    /// settled as their runs finish, and each batch's leases are renewed until it is settled.
    ///
    /// Database failures are logged and retried every poll interval; they do not stop the relay.
    ///
    /// # Errors
    /// [`OutboxError::Database`] when the leases cannot be released at shutdown (they expire).
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), OutboxError> {
        let span = info_span!("outbox_relay", relay = %self.id);
        async {
            let wake = Arc::new(Notify::new());
            let stop_listener = shutdown.child_token();
            let listener = match (&self.connect, self.options.wakeup) {
                (Some(connect), Wakeup::Notify) => Some(tokio::spawn(listen(
                    connect.clone(),
                    self.tables.channel.clone(),
                    self.options.poll_interval,
                    Arc::clone(&wake),
                    stop_listener.clone(),
                ))),
                _ => None,
            };
            let mut next_cleanup = Instant::now();
            let mut next_stats = Instant::now();
            // Batches publishing or settling. The next claim runs while they do: their keys'
            // heads are leased, so a claim skips those keys. A claim waits until a whole batch
            // fits in the budget of `claims_in_flight` batches' worth of unsettled messages.
            let budget = self.options.claims_in_flight * self.options.batch_size;
            let room = || {
                self.in_flight_messages.load(Ordering::Relaxed) + self.options.batch_size <= budget
            };
            let mut batches = FuturesUnordered::new();
            let mut claim = true;
            while !shutdown.is_cancelled() {
                let now = Instant::now();
                if now >= next_stats {
                    next_stats = now + self.options.stats_interval;
                    if let Err(e) = drive(self.record_stats(), &mut batches).await {
                        warn!(error = %chain(&e), "outbox stats failed");
                    }
                }
                if now >= next_cleanup {
                    next_cleanup = now + self.options.cleanup_interval;
                    if let Err(e) = drive(self.cleanup(), &mut batches).await {
                        warn!(error = %chain(&e), "outbox cleanup failed");
                    }
                }
                let mut more = false;
                let mut failed = false;
                if claim && room() {
                    self.settled_since_claim.store(0, Ordering::Relaxed);
                    match drive(self.claim(), &mut batches).await {
                        Ok(batch) => {
                            more = batch.more;
                            if !batch.messages.is_empty() {
                                batches.push(self.deliver(batch, &shutdown));
                            }
                        }
                        Err(e) => {
                            warn!(error = %chain(&e), "outbox claim failed");
                            failed = true;
                        }
                    }
                }
                if more && room() {
                    claim = true;
                    continue; // more may be due at once
                }
                if failed {
                    let pause = async {
                        tokio::select! {
                            () = shutdown.cancelled() => {}
                            () = tokio::time::sleep(self.options.poll_interval) => {}
                        }
                    };
                    drive(pause, &mut batches).await;
                    claim = true;
                    continue;
                }
                // Keys of backed-off destinations are not claimed: with only those due, the
                // claim comes back empty and the relay waits here, it does not spin.
                // A settle frees keys; a hint or the poll interval may bring new messages.
                claim = tokio::select! {
                    () = shutdown.cancelled() => true,
                    () = wake.notified() => true,
                    // A claim scans every key's head: after a settle, wait until a quarter of
                    // what was in flight settled (at once when little or nothing is in flight).
                    () = self.keys_freed.notified() => {
                        self.settled_since_claim.load(Ordering::Relaxed) * 4
                            >= self.in_flight_messages.load(Ordering::Relaxed)
                    }
                    Some(result) = batches.next(), if !batches.is_empty() => {
                        settled(result);
                        true
                    }
                    () = tokio::time::sleep(self.options.poll_interval) => true,
                };
            }
            while let Some(result) = batches.next().await {
                settled(result);
            }
            stop_listener.cancel();
            if let Some(listener) = listener {
                let _ = listener.await;
            }
            self.release_leases().await
        }
        .instrument(span)
        .await
    }

    /// One cycle: claim a batch, publish it, settle it. Returns what happened; `claimed` is 0
    /// when nothing was due.
    ///
    /// # Errors
    /// [`OutboxError::Database`]: the claim failed (nothing was published), or the settle
    /// failed (the batch's leases expire and it is published again).
    pub async fn relay_once(&self) -> Result<CycleReport, OutboxError> {
        self.cycle_until(&CancellationToken::new()).await
    }

    async fn cycle_until(&self, shutdown: &CancellationToken) -> Result<CycleReport, OutboxError> {
        let batch = self.claim().await?;
        if batch.messages.is_empty() {
            return Ok(CycleReport::default());
        }
        self.deliver(batch, shutdown).await
    }

    /// Publishes a claimed batch while renewing its leases, and settles its keys as they finish:
    /// whatever finished while the previous settle ran goes in the next one, so a key is free for
    /// the next claim soon after its run, not after the batch's slowest key.
    async fn deliver(
        &self,
        batch: Batch,
        shutdown: &CancellationToken,
    ) -> Result<CycleReport, OutboxError> {
        let mut groups: Vec<(i64, Vec<&OutboxMessage>)> = Vec::new();
        let mut index: HashMap<i64, usize> = HashMap::new();
        for (m, &head) in batch.messages.iter().zip(&batch.heads) {
            let i = *index.entry(head).or_insert_with(|| {
                groups.push((head, Vec::new()));
                groups.len() - 1
            });
            groups[i].1.push(m);
        }
        let leases = Mutex::new(Leases {
            lost: HashSet::new(),
            settled: HashSet::new(),
            valid_until: batch.leased_at + self.options.lease,
        });
        let gates: HashMap<&str, Gate> = batch
            .messages
            .iter()
            .map(|m| {
                let reach = if batch.probes.contains(&m.destination) {
                    Reach::Probe
                } else {
                    Reach::Open
                };
                (m.destination.as_str(), Gate::new(reach))
            })
            .collect();
        let outcomes = Mutex::new(HashMap::with_capacity(batch.messages.len()));
        let (finished, mut to_settle) = tokio::sync::mpsc::unbounded_channel::<usize>();
        let publishing = async {
            let reported = self
                .publish(&groups, &gates, &leases, &outcomes, &finished, shutdown)
                .await;
            // Keys abandoned at the shutdown deadline: the rest of their runs goes back.
            for (i, done) in reported.iter().enumerate() {
                if !done {
                    let _ = finished.send(i);
                }
            }
            drop(finished);
        };
        let settling = async {
            let mut report = CycleReport::default();
            let mut failure = None;
            while let Some(first) = to_settle.recv().await {
                let mut chunk = vec![first];
                while let Ok(i) = to_settle.try_recv() {
                    chunk.push(i);
                }
                let heads: Vec<i64> = chunk.iter().map(|&i| groups[i].0).collect();
                let rows = {
                    let outcomes = outcomes.lock().unwrap_or_else(PoisonError::into_inner);
                    Settlement::of(chunk.iter().map(|&i| &groups[i]), &outcomes)
                };
                let settled_messages = rows.sequences.len();
                let result = self.settle(rows).await;
                self.in_flight_messages
                    .fetch_sub(settled_messages, Ordering::Relaxed);
                self.settled_since_claim
                    .fetch_add(settled_messages, Ordering::Relaxed);
                self.keys_freed.notify_one();
                match result {
                    Ok(r) => report.add(r),
                    Err(e) => failure = failure.or(Some(e)),
                }
                leases
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .settled
                    .extend(heads);
            }
            failure.map_or(Ok(report), Err)
        };
        let renewing = pin!(self.keep_leases(&groups, &leases));
        let work = pin!(futures::future::join(publishing, settling));
        match futures::future::select(work, renewing).await {
            futures::future::Either::Left((((), result), _)) => result,
            futures::future::Either::Right((never, _)) => match never {},
        }
    }

    /// Extends the batch's leases every third of the lease while it publishes; keys whose
    /// lease is gone are marked lost, so that their remaining messages are not published.
    async fn keep_leases(
        &self,
        groups: &[(i64, Vec<&OutboxMessage>)],
        leases: &Mutex<Leases>,
    ) -> std::convert::Infallible {
        let lease = self.options.lease;
        let lease_ms = lease.as_secs_f64() * 1000.0;
        loop {
            tokio::time::sleep(lease / 3).await;
            let held: Vec<i64> = {
                let l = leases.lock().unwrap_or_else(PoisonError::into_inner);
                groups
                    .iter()
                    .map(|(head, _)| *head)
                    .filter(|h| !l.lost.contains(h) && !l.settled.contains(h))
                    .collect()
            };
            if held.is_empty() {
                continue;
            }
            let sent = Instant::now();
            match self.renew(&held, lease_ms).await {
                Ok(renewed) => {
                    let renewed: HashSet<i64> = renewed.into_iter().collect();
                    let mut l = leases.lock().unwrap_or_else(PoisonError::into_inner);
                    l.valid_until = sent + lease;
                    // A key settled meanwhile is not lost, only done.
                    let lost: Vec<i64> = held
                        .into_iter()
                        .filter(|h| !renewed.contains(h) && !l.settled.contains(h))
                        .collect();
                    if !lost.is_empty() {
                        warn!(
                            keys = lost.len(),
                            "outbox leases lost: those keys stop publishing"
                        );
                        l.lost.extend(lost);
                    }
                }
                // The leases may still hold; `valid_until` stops publishing once they lapse.
                Err(e) => warn!(error = %chain(&e), "outbox lease renewal failed"),
            }
        }
    }

    async fn renew(&self, heads: &[i64], lease_ms: f64) -> Result<Vec<i64>, OutboxError> {
        let client = self.client().await?;
        let rows = self
            .options
            .statements
            .query(
                &*client,
                &self.tables.renew,
                &[
                    (&heads, Type::INT8_ARRAY),
                    (&self.id, Type::UUID),
                    (&lease_ms, Type::FLOAT8),
                ],
            )
            .await
            .map_err(db)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    #[instrument(skip_all)]
    async fn claim(&self) -> Result<Batch, OutboxError> {
        let t = &self.tables;
        let leased_at = Instant::now();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let batch_size = self.options.batch_size;
        let key_limit = batch_size.div_ceil(self.run_length.load(Ordering::Relaxed).max(1));
        let statements = self.options.statements;
        let keys: Vec<String> = statements
            .query(&tx, &t.claim_keys, &[(&to_i64(key_limit), Type::INT8)])
            .await
            .map_err(db)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if keys.is_empty() {
            tx.commit().await.map_err(db)?;
            return Ok(Batch {
                messages: Vec::new(),
                heads: Vec::new(),
                more: false,
                leased_at,
                probes: HashSet::new(),
            });
        }
        let lease_ms = self.options.lease.as_secs_f64() * 1000.0;
        let rows = statements
            .query(
                &tx,
                &t.claim_rows,
                &[
                    (&keys, Type::TEXT_ARRAY),
                    (&to_i64(self.options.max_per_key), Type::INT8),
                    (&to_i64(batch_size), Type::INT8),
                    (&self.id, Type::UUID),
                    (&lease_ms, Type::FLOAT8),
                ],
            )
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        // In outbox order (the statement sorts), so each key's messages are in order.
        let messages: Vec<OutboxMessage> = rows.iter().map(message).collect();
        let heads: Vec<i64> = rows.iter().map(|r| r.get(9)).collect();
        let probes: HashSet<String> = rows
            .iter()
            .zip(&messages)
            .filter(|(r, _)| r.get::<_, bool>(10))
            .map(|(_, m)| m.destination.clone())
            .collect();
        let taken = heads.iter().collect::<HashSet<_>>().len();
        self.in_flight_messages
            .fetch_add(messages.len(), Ordering::Relaxed);
        if let Some(run) = messages.len().checked_div(taken) {
            self.run_length.store(run, Ordering::Relaxed);
        }
        debug!(keys = taken, messages = messages.len(), "claimed");
        Ok(Batch {
            messages,
            heads,
            more: keys.len() >= key_limit,
            leased_at,
            probes,
        })
    }

    /// Publishes each key's messages in order, keys concurrently (at most `max_in_flight` keys
    /// across the batches in flight); a failure or a lost lease ends its key's run, and each
    /// finished key's index goes to `finished`. After shutdown, in-flight publishes get the
    /// shutdown timeout, then are abandoned. Returns which keys were reported finished.
    async fn publish(
        &self,
        groups: &[(i64, Vec<&OutboxMessage>)],
        gates: &HashMap<&str, Gate>,
        leases: &Mutex<Leases>,
        outcomes: &Mutex<HashMap<i64, (Outcome, Option<String>)>>,
        finished: &tokio::sync::mpsc::UnboundedSender<usize>,
        shutdown: &CancellationToken,
    ) -> Vec<bool> {
        let reported = Mutex::new(vec![false; groups.len()]);
        let record = |sequence: i64, outcome: Outcome, error: Option<String>| {
            outcomes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(sequence, (outcome, error));
        };
        let holds = |head: i64| {
            leases
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .holds(head)
        };
        let (record, holds, reported) = (&record, &holds, &reported);
        let work = futures::stream::iter(groups.iter().enumerate()).for_each_concurrent(
            None,
            |(i, (head, group))| async move {
                let Ok(_permit) = self.keys_in_flight.acquire().await else {
                    return; // never closed
                };
                let mut attempts = 0u64;
                for &m in group {
                    if !holds(*head) {
                        break; // handed back untried: another relay holds the key now
                    }
                    let Some(gate) = gates.get(m.destination.as_str()) else {
                        break; // every destination of the batch has a gate
                    };
                    // A probe holds `probing` while it publishes, so that the batch's other
                    // messages to its destination wait for its result instead of each
                    // knocking on a destination that is probably still down.
                    let _probing = match gate.reach() {
                        Reach::Open => None,
                        Reach::Down => break, // handed back untried
                        Reach::Probe => {
                            let guard = gate.probing.lock().await;
                            match gate.reach() {
                                Reach::Open => None,
                                Reach::Down => break,
                                Reach::Probe => Some(guard),
                            }
                        }
                    };
                    let started = Instant::now();
                    let result = self.sink.publish(m).await;
                    attempts += 1;
                    let class = result.as_ref().err().map(SinkError::class);
                    // Any answer of the destination, success or a failure of the message,
                    // proves it reachable; a publish that started before another found it down
                    // does not open it again.
                    if class.is_some_and(FailureClass::is_destination) {
                        gate.set(Reach::Down);
                    } else if gate.reach() == Reach::Probe {
                        gate.set(Reach::Open);
                    }
                    match result {
                        Ok(()) => {
                            metrics::histogram!("eventrail_outbox_publish_seconds")
                                .record(started.elapsed().as_secs_f64());
                            record(m.sequence, Outcome::Sent, None);
                        }
                        Err(e) => {
                            let outcome = match e.class() {
                                FailureClass::MessagePermanent => Outcome::Permanent,
                                FailureClass::DestinationUnavailable => Outcome::Unavailable,
                                FailureClass::DestinationMissing => Outcome::Missing,
                                _ => Outcome::Failed,
                            };
                            if matches!(outcome, Outcome::Unavailable | Outcome::Missing) {
                                warn!(destination = %m.destination, class = %e.class(), error = %chain(&e), "destination unavailable: backing it off");
                                metrics::counter!("eventrail_outbox_destination_failures_total", "destination" => m.destination.clone())
                                    .increment(1);
                            } else {
                                warn!(message_id = %m.id, key = %m.partition_key, attempts = m.attempts, class = %e.class(), error = %chain(&e), "publish failed");
                            }
                            record(m.sequence, outcome, Some(chain(&e)));
                            break;
                        }
                    }
                }
                metrics::counter!("eventrail_outbox_attempts_total").increment(attempts);
                reported.lock().unwrap_or_else(PoisonError::into_inner)[i] = true;
                let _ = finished.send(i);
            },
        );
        let deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(self.options.shutdown_timeout).await;
        };
        tokio::select! {
            () = work => {}
            () = deadline => warn!("shutdown timeout: handing back unacknowledged messages"),
        }
        std::mem::take(&mut *reported.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Marks settled keys' messages in one statement.
    async fn settle(&self, rows: Settlement<'_>) -> Result<CycleReport, OutboxError> {
        let Settlement {
            sequences,
            heads,
            codes,
            errors,
            destinations,
        } = rows;
        let backoff = &self.options.destination_backoff;
        let destination_initial_ms = backoff.initial.as_secs_f64() * 1000.0;
        let destination_max_ms = backoff.max.as_secs_f64() * 1000.0;
        let retry = &self.options.retry;
        let max_attempts = i32::try_from(retry.max_attempts).unwrap_or(i32::MAX);
        let initial_ms = retry.initial_backoff.as_secs_f64() * 1000.0;
        let max_ms = retry.max_backoff.as_secs_f64() * 1000.0;
        let client = self.client().await?;
        let rows = self
            .options
            .statements
            .query(
                &*client,
                &self.tables.settle,
                &[
                    (&sequences, Type::INT8_ARRAY),
                    (&codes, Type::TEXT_ARRAY),
                    (&errors, Type::TEXT_ARRAY),
                    (&max_attempts, Type::INT4),
                    (&initial_ms, Type::FLOAT8),
                    (&max_ms, Type::FLOAT8),
                    (&self.id, Type::UUID),
                    (&heads, Type::INT8_ARRAY),
                    (&destinations, Type::TEXT_ARRAY),
                    (&destination_initial_ms, Type::FLOAT8),
                    (&destination_max_ms, Type::FLOAT8),
                ],
            )
            .await
            .map_err(db)?;
        let mut report = CycleReport {
            claimed: sequences.len(),
            ..CycleReport::default()
        };
        for row in &rows {
            let state: &str = row.get(0);
            let outcome: &str = row.get(2);
            match (state, outcome) {
                ("sent", _) => report.sent += 1,
                ("dead", _) => {
                    report.dead += 1;
                    let destination: String = row.get(1);
                    metrics::counter!("eventrail_outbox_dead_letters_total", "destination" => destination)
                        .increment(1);
                }
                (_, "r") => report.returned += 1,
                (_, "u" | "m") => report.deferred += 1,
                _ => report.retried += 1,
            }
        }
        metrics::counter!("eventrail_outbox_sent_total").increment(report.sent as u64);
        if report.dead > 0 {
            warn!(
                dead = report.dead,
                "messages went dead; their keys are parked"
            );
        }
        Ok(report)
    }

    async fn release_leases(&self) -> Result<(), OutboxError> {
        let client = self.client().await?;
        let released = client
            .execute_typed(&self.tables.release_all, &[(&self.id, Type::UUID)])
            .await
            .map_err(db)?;
        debug!(released, "released leases");
        Ok(())
    }

    /// Deletes sent messages older than the retention (measured on the database clock at each
    /// statement, so the cut-off slides), in statements of at most the cleanup batch size,
    /// until none is left, and forgets backed-off destinations that have no pending message
    /// left. Returns how many messages were deleted.
    ///
    /// # Errors
    /// [`OutboxError::Database`].
    #[instrument(skip_all)]
    pub async fn cleanup(&self) -> Result<u64, OutboxError> {
        let client = self.client().await?;
        let retention_ms = self.options.retention.as_secs_f64() * 1000.0;
        let batch = to_i64(self.options.cleanup_batch);
        let mut total = 0;
        loop {
            let deleted = self
                .options
                .statements
                .execute(
                    &*client,
                    &self.tables.cleanup,
                    &[(&retention_ms, Type::FLOAT8), (&batch, Type::INT8)],
                )
                .await
                .map_err(db)?;
            total += deleted;
            if deleted < batch.unsigned_abs() {
                break;
            }
        }
        if total > 0 {
            debug!(deleted = total, "cleaned up sent messages");
        }
        let forgotten = client
            .execute_typed(&self.tables.forget_destinations, &[])
            .await
            .map_err(db)?;
        if forgotten > 0 {
            debug!(
                destinations = forgotten,
                "forgot backed-off destinations without pending messages"
            );
        }
        Ok(total)
    }

    async fn record_stats(&self) -> Result<(), OutboxError> {
        let client = self.client().await?;
        let row = client
            .query_typed_one(&self.tables.stats, &[])
            .await
            .map_err(db)?;
        #[expect(
            clippy::cast_precision_loss,
            reason = "a gauge; counts beyond 2^52 need no precision"
        )]
        let pending = row.get::<_, i64>(0) as f64;
        metrics::gauge!("eventrail_outbox_pending").set(pending);
        metrics::gauge!("eventrail_outbox_oldest_pending_age_seconds").set(row.get::<_, f64>(1));
        Ok(())
    }
}

/// Runs `work` while the batches in flight keep publishing and settling.
async fn drive<T, R, F: Future<Output = Result<R, OutboxError>>>(
    work: impl Future<Output = T>,
    batches: &mut FuturesUnordered<F>,
) -> T {
    let mut work = pin!(work);
    loop {
        tokio::select! {
            biased;
            done = &mut work => return done,
            Some(result) = batches.next(), if !batches.is_empty() => settled(result),
        }
    }
}

/// Logs a batch that failed to settle (its leases expire and it is published again).
fn settled<R>(result: Result<R, OutboxError>) {
    if let Err(e) = result {
        warn!(error = %chain(&e), "outbox relay cycle failed");
    }
}

use eventrail_store_postgres::to_sql_int as to_i64;

fn message(row: &Row) -> OutboxMessage {
    OutboxMessage {
        sequence: row.get(0),
        id: row.get(1),
        partition_key: row.get(2),
        destination: row.get(3),
        headers: headers_from_json(&row.get::<_, serde_json::Value>(4)),
        payload: row.get(5),
        content_type: row.get(6),
        created_at: row.get(7),
        attempts: u32::try_from(row.get::<_, i32>(8)).unwrap_or_default(),
    }
}

/// The `application_name` of the relay's sessions.
const RELAY_COMPONENT: &str = "eventrail-relay";

/// LISTENs on a dedicated connection ([`PgListener`](eventrail_store_postgres::PgListener)) and
/// wakes the relay on each hint and after each (re)connection (hints may have been missed).
async fn listen(
    connect: PgConnectOptions,
    channel: String,
    max_retry: Duration,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut listener = match connect.listener(RELAY_COMPONENT, &[&channel]) {
        Ok(l) => l.max_backoff(max_retry),
        Err(e) => {
            // Validated when the relay was built: it polls instead.
            warn!(error = %chain(&e), "cannot LISTEN for outbox hints");
            return;
        }
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            event = listener.recv() => match event {
                Ok(ListenEvent::Notification(_) | ListenEvent::Listening { .. }) => wake.notify_one(),
                Ok(_) => {}
                Err(e) => warn!(error = %chain(&e), "the outbox LISTEN connection failed; reconnecting"),
            },
        }
    }
}
