//! The outbox suite that runs on both databases: each case is written once over [`Backend`]
//! and instantiated for PostgreSQL (`pg::`) and MySQL/MariaDB (`mysql::`). Enqueue in the
//! caller's transaction, per-key order with parallel relays and producers (and under retries),
//! a crashed or killed relay's claims taken over, leases kept by renewal and a lost lease
//! honoured, pipelined claims, retries with backoff on the database clock, dead letters, sliding
//! cleanup, shutdown, a destination outage that spends no attempts, a torture run with
//! rollbacks, and NATS JetStream end to end. What only one database has stays in its own file
//! (`outbox.rs`: NOTIFY wakeups, the store's append, the admin, the inbox, the PostgreSQL sink).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use eventrail_outbox::{
    CycleReport, DeadMessage, DestinationBackoff, InMemorySink, MySqlOutbox, MySqlOutboxAdmin,
    MySqlRelay, NewMessage, Outbox, OutboxAdmin, OutboxError, OutboxMessage, OutboxOptions,
    OutboxStatus, Relay, RetryPolicy, Sink, SinkError, Wakeup,
};
use integration_tests::OUTBOX_MESSAGES;
use mysql_async::prelude::Queryable;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::harness::{TestDb, eventually};
use crate::mysql_harness::MyTestDb;
use crate::outbox::{check_order, fast, nats_url};
use crate::outbox_outage::Switch;

/// A relay of either database.
pub(crate) enum AnyRelay<S> {
    Pg(Box<Relay<S>>),
    My(MySqlRelay<S>),
}

impl<S: Sink> AnyRelay<S> {
    async fn run(&self, shutdown: CancellationToken) -> Result<(), OutboxError> {
        match self {
            Self::Pg(r) => r.run(shutdown).await,
            Self::My(r) => r.run(shutdown).await,
        }
    }

    async fn relay_once(&self) -> Result<CycleReport, OutboxError> {
        match self {
            Self::Pg(r) => r.relay_once().await,
            Self::My(r) => r.relay_once().await,
        }
    }

    async fn cleanup(&self) -> Result<u64, OutboxError> {
        match self {
            Self::Pg(r) => r.cleanup().await,
            Self::My(r) => r.cleanup().await,
        }
    }
}

/// A test database of one kind, with the outbox migrated, and the few statements whose SQL
/// differs between the two.
pub(crate) trait Backend: Clone + Send + Sync + 'static {
    fn new() -> impl Future<Output = anyhow::Result<Self>> + Send;

    /// Enqueues in a transaction of its own, committed or rolled back.
    fn enqueue_then(
        &self,
        messages: Vec<NewMessage>,
        commit: bool,
    ) -> impl Future<Output = Result<Vec<Uuid>, OutboxError>> + Send;

    /// Outbox rows matching `condition` (SQL common to both).
    fn count(&self, condition: &str) -> impl Future<Output = anyhow::Result<i64>> + Send;

    /// Makes every message due now, as if the database clock had moved on.
    fn make_due(&self) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Sets the sent time of `condition`'s sent messages `seconds` before the database's now.
    fn sent_ago(
        &self,
        condition: &str,
        seconds: u32,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Ages every sent message by `seconds` (as if the clock had moved on).
    fn age_sent(&self, seconds: u32) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Another relay, `thief`, takes over every leased key for an hour.
    fn steal_leases(&self, thief: Uuid) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Seconds until the (one) message's next attempt, on the database clock, and its attempts.
    fn next_attempt(&self) -> impl Future<Output = anyhow::Result<(f64, i64)>> + Send;

    /// The failures recorded for a backed-off destination.
    fn destination_failures(
        &self,
        destination: &str,
    ) -> impl Future<Output = anyhow::Result<Option<i64>>> + Send;

    fn relay<S: Sink>(&self, sink: S, options: OutboxOptions) -> anyhow::Result<AnyRelay<S>>;

    /// The admin's status.
    fn status(&self) -> impl Future<Output = Result<OutboxStatus, OutboxError>> + Send;

    /// The admin's dead letters.
    fn dead(&self) -> impl Future<Output = Result<Vec<DeadMessage>, OutboxError>> + Send;

    /// The admin's requeue.
    fn requeue(
        &self,
        ids: Option<Vec<Uuid>>,
    ) -> impl Future<Output = Result<u64, OutboxError>> + Send;

    /// The admin's purge.
    fn purge(
        &self,
        ids: Option<Vec<Uuid>>,
    ) -> impl Future<Output = Result<u64, OutboxError>> + Send;
}

#[derive(Clone)]
pub(crate) struct Pg(Arc<TestDb>);

impl Backend for Pg {
    async fn new() -> anyhow::Result<Self> {
        Ok(Self(Arc::new(TestDb::new().await?)))
    }

    async fn enqueue_then(
        &self,
        messages: Vec<NewMessage>,
        commit: bool,
    ) -> Result<Vec<Uuid>, OutboxError> {
        let outbox = Outbox::new(&OutboxOptions::new())?;
        let mut client = self.0.pool.get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        let ids = outbox.enqueue_batch(&tx, messages).await?;
        if commit {
            tx.commit().await.map_err(db)?;
        } else {
            tx.rollback().await.map_err(db)?;
        }
        Ok(ids)
    }

    async fn count(&self, condition: &str) -> anyhow::Result<i64> {
        crate::outbox::count(&self.0, condition).await
    }

    async fn make_due(&self) -> anyhow::Result<()> {
        let client = self.0.pool.get().await?;
        client
            .batch_execute("UPDATE eventrail.outbox SET next_attempt_at = now()")
            .await?;
        Ok(())
    }

    async fn sent_ago(&self, condition: &str, seconds: u32) -> anyhow::Result<()> {
        let client = self.0.pool.get().await?;
        client
            .batch_execute(&format!(
                "UPDATE eventrail.outbox SET sent_at = now() - {seconds} * interval '1 second',
                        created_at = least(created_at, now() - {seconds} * interval '1 second')
                 WHERE sequence IN (SELECT sequence FROM {OUTBOX_MESSAGES} WHERE state = 'sent' AND {condition})"
            ))
            .await?;
        Ok(())
    }

    async fn age_sent(&self, seconds: u32) -> anyhow::Result<()> {
        let client = self.0.pool.get().await?;
        client
            .batch_execute(&format!(
                "UPDATE eventrail.outbox SET sent_at = sent_at - {seconds} * interval '1 second',
                        created_at = created_at - {seconds} * interval '1 second'
                 WHERE sequence IN (SELECT sequence FROM {OUTBOX_MESSAGES} WHERE state = 'sent')"
            ))
            .await?;
        Ok(())
    }

    async fn steal_leases(&self, thief: Uuid) -> anyhow::Result<()> {
        let client = self.0.pool.get().await?;
        client
            .execute(
                "UPDATE eventrail.outbox SET lease_owner = $1, lease_expires_at = now() + interval '1 hour'
                 WHERE lease_owner IS NOT NULL",
                &[&thief],
            )
            .await?;
        Ok(())
    }

    async fn next_attempt(&self) -> anyhow::Result<(f64, i64)> {
        let client = self.0.pool.get().await?;
        let row = client
            .query_one(
                "SELECT extract(epoch FROM next_attempt_at - now())::float8, attempts::int8 FROM eventrail.outbox",
                &[],
            )
            .await?;
        Ok((row.get(0), row.get(1)))
    }

    async fn destination_failures(&self, destination: &str) -> anyhow::Result<Option<i64>> {
        let client = self.0.pool.get().await?;
        Ok(client
            .query_opt(
                "SELECT failures::int8 FROM eventrail.outbox_destinations WHERE destination = $1",
                &[&destination],
            )
            .await?
            .map(|r| r.get(0)))
    }

    fn relay<S: Sink>(&self, sink: S, options: OutboxOptions) -> anyhow::Result<AnyRelay<S>> {
        // LISTENs when the options ask for NOTIFY wakeups (`fast` polls).
        Ok(AnyRelay::Pg(Box::new(
            Relay::new(self.0.pool.clone(), sink, options)?.listen(self.0.config()),
        )))
    }

    async fn status(&self) -> Result<OutboxStatus, OutboxError> {
        OutboxAdmin::new(self.0.pool.clone(), &OutboxOptions::new())?
            .status()
            .await
    }

    async fn dead(&self) -> Result<Vec<DeadMessage>, OutboxError> {
        OutboxAdmin::new(self.0.pool.clone(), &OutboxOptions::new())?
            .dead(100)
            .await
    }

    async fn requeue(&self, ids: Option<Vec<Uuid>>) -> Result<u64, OutboxError> {
        OutboxAdmin::new(self.0.pool.clone(), &OutboxOptions::new())?
            .requeue(ids.as_deref())
            .await
    }

    async fn purge(&self, ids: Option<Vec<Uuid>>) -> Result<u64, OutboxError> {
        OutboxAdmin::new(self.0.pool.clone(), &OutboxOptions::new())?
            .purge(ids.as_deref())
            .await
    }
}

#[derive(Clone)]
pub(crate) struct My(Arc<MyTestDb>);

impl My {
    async fn conn(&self) -> anyhow::Result<mysql_async::Conn> {
        Ok(self.0.pool.get_conn().await?)
    }
}

impl Backend for My {
    async fn new() -> anyhow::Result<Self> {
        Ok(Self(Arc::new(MyTestDb::new().await?)))
    }

    async fn enqueue_then(
        &self,
        messages: Vec<NewMessage>,
        commit: bool,
    ) -> Result<Vec<Uuid>, OutboxError> {
        let outbox = MySqlOutbox::new(&OutboxOptions::new())?;
        let mut conn = self.0.pool.get_conn().await.map_err(db)?;
        let mut tx = conn
            .start_transaction(mysql_async::TxOpts::default())
            .await
            .map_err(db)?;
        let ids = outbox.enqueue_batch(&mut tx, messages).await?;
        if commit {
            tx.commit().await.map_err(db)?;
        } else {
            tx.rollback().await.map_err(db)?;
        }
        Ok(ids)
    }

    async fn count(&self, condition: &str) -> anyhow::Result<i64> {
        let mut conn = self.conn().await?;
        let n: Option<i64> = conn
            .query_first(format!("SELECT COUNT(*) FROM outbox WHERE {condition}"))
            .await?;
        n.context("a count")
    }

    async fn make_due(&self) -> anyhow::Result<()> {
        self.conn()
            .await?
            .query_drop("UPDATE outbox SET next_attempt_at = UTC_TIMESTAMP(6)")
            .await?;
        Ok(())
    }

    async fn sent_ago(&self, condition: &str, seconds: u32) -> anyhow::Result<()> {
        self.conn()
            .await?
            .query_drop(format!(
                "UPDATE outbox SET sent_at = UTC_TIMESTAMP(6) - INTERVAL {seconds} SECOND WHERE state = 'sent' AND {condition}"
            ))
            .await?;
        Ok(())
    }

    async fn age_sent(&self, seconds: u32) -> anyhow::Result<()> {
        self.conn()
            .await?
            .query_drop(format!(
                "UPDATE outbox SET sent_at = sent_at - INTERVAL {seconds} SECOND WHERE state = 'sent'"
            ))
            .await?;
        Ok(())
    }

    async fn steal_leases(&self, thief: Uuid) -> anyhow::Result<()> {
        self.conn()
            .await?
            .exec_drop(
                "UPDATE outbox SET lease_owner = ?, lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL 1 HOUR
                 WHERE lease_owner IS NOT NULL",
                (thief.as_bytes().to_vec(),),
            )
            .await?;
        Ok(())
    }

    async fn next_attempt(&self) -> anyhow::Result<(f64, i64)> {
        let mut conn = self.conn().await?;
        let row: Option<(f64, i64)> = conn
            .query_first(
                "SELECT TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), next_attempt_at) / 1e6, attempts FROM outbox",
            )
            .await?;
        row.context("one message")
    }

    async fn destination_failures(&self, destination: &str) -> anyhow::Result<Option<i64>> {
        let mut conn = self.conn().await?;
        Ok(conn
            .exec_first(
                "SELECT failures FROM outbox_destinations WHERE destination = ?",
                (destination,),
            )
            .await?)
    }

    fn relay<S: Sink>(&self, sink: S, options: OutboxOptions) -> anyhow::Result<AnyRelay<S>> {
        Ok(AnyRelay::My(MySqlRelay::new(
            self.0.pool.clone(),
            sink,
            options,
        )?))
    }

    async fn status(&self) -> Result<OutboxStatus, OutboxError> {
        MySqlOutboxAdmin::new(self.0.pool.clone(), &OutboxOptions::new())?
            .status()
            .await
    }

    async fn dead(&self) -> Result<Vec<DeadMessage>, OutboxError> {
        MySqlOutboxAdmin::new(self.0.pool.clone(), &OutboxOptions::new())?
            .dead(100)
            .await
    }

    async fn requeue(&self, ids: Option<Vec<Uuid>>) -> Result<u64, OutboxError> {
        MySqlOutboxAdmin::new(self.0.pool.clone(), &OutboxOptions::new())?
            .requeue(ids.as_deref())
            .await
    }

    async fn purge(&self, ids: Option<Vec<Uuid>>) -> Result<u64, OutboxError> {
        MySqlOutboxAdmin::new(self.0.pool.clone(), &OutboxOptions::new())?
            .purge(ids.as_deref())
            .await
    }
}

fn db(e: impl std::error::Error + Send + Sync + 'static) -> OutboxError {
    OutboxError::Database(Box::new(e))
}

struct Running {
    stop: CancellationToken,
    task: JoinHandle<Result<(), OutboxError>>,
}

impl Running {
    async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await??;
        Ok(())
    }
}

fn start<S: Sink>(relay: AnyRelay<S>) -> Running {
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move { relay.run(token).await });
    Running { stop, task }
}

async fn enqueue<B: Backend>(db: &B, messages: Vec<NewMessage>) -> anyhow::Result<Vec<Uuid>> {
    Ok(db.enqueue_then(messages, true).await?)
}

/// Publishes to the inner sink, then never acknowledges: the relay "crashes" before marking.
#[derive(Clone)]
struct CrashAfterPublish(InMemorySink);

impl Sink for CrashAfterPublish {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        self.0.publish(message).await?;
        std::future::pending().await
    }
}

/// A broker that can be down: fails transiently while `down` is set.
#[derive(Clone)]
struct Flaky {
    inner: InMemorySink,
    down: Arc<AtomicBool>,
    /// Fail every n-th publish as well (0: never).
    every: usize,
    calls: Arc<AtomicUsize>,
}

impl Flaky {
    fn new(every: usize) -> Self {
        Self {
            inner: InMemorySink::new(),
            down: Arc::new(AtomicBool::new(false)),
            every,
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Sink for Flaky {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if self.down.load(Ordering::SeqCst) {
            return Err(SinkError::transient("broker unreachable"));
        }
        if self.every > 0 && call.is_multiple_of(self.every) {
            return Err(SinkError::transient("negative acknowledgement"));
        }
        self.inner.publish(message).await
    }
}

/// Never acknowledges.
#[derive(Clone)]
struct Hanging(Arc<AtomicUsize>);

impl Sink for Hanging {
    async fn publish(&self, _message: &OutboxMessage) -> Result<(), SinkError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }
}

/// A producer's committed and rolled-back message ids.
type Produced = anyhow::Result<(Vec<Uuid>, Vec<Uuid>)>;

/// Holds its first publish until `open` is cancelled; every other publish goes straight through.
#[derive(Clone, Default)]
struct Gated {
    inner: InMemorySink,
    open: CancellationToken,
    calls: Arc<AtomicUsize>,
}

impl Sink for Gated {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            self.open.cancelled().await;
        }
        self.inner.publish(message).await
    }
}

/// Counts publishes in flight, per key and per relay, and the most seen at once.
#[derive(Clone, Default)]
struct Tracking {
    inner: InMemorySink,
    per_key: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    most_per_key: Arc<AtomicUsize>,
    relay_now: Arc<AtomicUsize>,
    most_per_relay: Arc<AtomicUsize>,
}

impl Tracking {
    /// The same shared key counts, with a relay counter of its own.
    fn for_another_relay(&self) -> Self {
        Self {
            relay_now: Arc::default(),
            ..self.clone()
        }
    }
}

impl Sink for Tracking {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        {
            let mut keys = self.per_key.lock().unwrap();
            let n = keys.entry(message.partition_key.clone()).or_insert(0);
            *n += 1;
            self.most_per_key.fetch_max(*n, Ordering::SeqCst);
        }
        let now = self.relay_now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_per_relay.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.inner.publish(message).await?;
        self.relay_now.fetch_sub(1, Ordering::SeqCst);
        *self
            .per_key
            .lock()
            .unwrap()
            .get_mut(&message.partition_key)
            .unwrap() -= 1;
        Ok(())
    }
}

async fn enqueue_commits_or_rolls_back_with_the_callers_transaction<B: Backend>()
-> anyhow::Result<()> {
    let db = B::new().await?;
    let rolled_back = db
        .enqueue_then(
            vec![
                NewMessage::new("orders", "order-1", b"a".to_vec()),
                NewMessage::new("orders", "order-1", b"b".to_vec()),
            ],
            false,
        )
        .await?;
    assert_eq!(rolled_back.len(), 2);
    assert_eq!(
        db.count("1 = 1").await?,
        0,
        "a rolled-back producer leaves nothing"
    );

    let message =
        NewMessage::json("orders", "order-1", &serde_json::json!({"n": 1})).header("tenant", "t1");
    let ids = enqueue(&db, vec![message.clone()]).await?;
    assert_eq!(ids, [message.id]);
    assert_eq!(db.count("state = 'pending'").await?, 1);
    let duplicate = db.enqueue_then(vec![message.clone()], true).await;
    assert!(
        matches!(duplicate, Err(OutboxError::DuplicateMessageId { message_id: Some(id) }) if id == message.id),
        "{duplicate:?}"
    );
    let invalid = db
        .enqueue_then(vec![NewMessage::new("orders", "", b"x".to_vec())], true)
        .await;
    assert!(
        matches!(invalid, Err(OutboxError::InvalidMessage(_))),
        "{invalid:?}"
    );
    assert_eq!(db.count("1 = 1").await?, 1);

    // What a relay hands the sink is what was enqueued.
    let sink = InMemorySink::new();
    let relay = db.relay(sink.clone(), fast())?;
    assert_eq!(relay.relay_once().await?.sent, 1);
    let got = sink.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, message.id);
    assert_eq!(got[0].payload, br#"{"n":1}"#);
    assert_eq!(got[0].content_type, "application/json");
    assert_eq!(got[0].headers.get("tenant").map(String::as_str), Some("t1"));
    assert_eq!(got[0].attempts, 1);
    let age = std::time::SystemTime::now().duration_since(got[0].created_at)?;
    assert!(
        age < Duration::from_secs(60),
        "created_at on the real clock: {age:?}"
    );
    assert_eq!(db.count("state = 'sent' AND sent_at IS NOT NULL").await?, 1);
    Ok(())
}

async fn parallel_relays_and_producers_keep_each_keys_order<B: Backend>() -> anyhow::Result<()> {
    let db = B::new().await?;
    let sink = InMemorySink::new();
    // Woken by NOTIFY on PostgreSQL; MySQL has no hints and polls.
    let options = fast()
        .wakeup(Wakeup::Notify)
        .poll_interval(Duration::from_millis(200))
        .batch_size(40)
        .max_per_key(3);
    let relays: Vec<Running> = (0..3)
        .map(|_| Ok(start(db.relay(sink.clone(), options.clone())?)))
        .collect::<anyhow::Result<_>>()?;
    // Four producers at once, interleaving 25 keys, while the relays run.
    let producers: Vec<JoinHandle<anyhow::Result<Vec<Uuid>>>> = (0..4)
        .map(|p| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for batch in 0..15 {
                    let messages = (0..10)
                        .map(|i| {
                            NewMessage::new(
                                "orders",
                                format!("key-{}", (p * 7 + batch * 3 + i) % 25),
                                format!("{p}-{batch}-{i}"),
                            )
                        })
                        .collect();
                    ids.extend(enqueue(&db, messages).await?);
                }
                Ok(ids)
            })
        })
        .collect();
    let mut enqueued = HashSet::new();
    for p in producers {
        enqueued.extend(p.await??);
    }
    assert_eq!(enqueued.len(), 600);
    eventually(60, "every message sent", || async {
        Ok(db.count("state = 'sent'").await? == 600)
    })
    .await?;
    for r in relays {
        r.stop().await?;
    }
    let times = check_order(&sink.messages());
    assert_eq!(times.len(), 600, "every message delivered");
    assert!(times.values().all(|&n| n == 1), "no duplicates");
    assert!(times.keys().all(|id| enqueued.contains(id)));
    assert_eq!(db.count("lease_owner IS NOT NULL").await?, 0);
    Ok(())
}

async fn a_crashed_relays_claims_are_taken_over_with_the_same_ids<B: Backend>() -> anyhow::Result<()>
{
    let db = B::new().await?;
    let ids = enqueue(
        &db,
        (0..10)
            .map(|i| NewMessage::new("orders", format!("key-{i}"), vec![i]))
            .collect(),
    )
    .await?;
    let sink = InMemorySink::new();
    let doomed = db.relay(
        CrashAfterPublish(sink.clone()),
        fast().lease(Duration::from_millis(500)),
    )?;
    let crashed = tokio::spawn(async move { doomed.relay_once().await });
    let published = sink.clone();
    eventually(10, "the doomed relay published", || async {
        Ok(published.len() == 10)
    })
    .await?;
    crashed.abort(); // dies between the broker's ack and the mark
    assert!(crashed.await.is_err_and(|e| e.is_cancelled()));
    assert_eq!(
        db.count("state = 'pending' AND lease_owner IS NOT NULL")
            .await?,
        10
    );
    let survivor = start(db.relay(sink.clone(), fast())?);
    eventually(20, "the survivor sent everything", || async {
        Ok(db.count("state = 'sent'").await? == 10)
    })
    .await?;
    survivor.stop().await?;
    let times = check_order(&sink.messages());
    for id in &ids {
        assert_eq!(times.get(id), Some(&2), "published again with the same id");
    }
    assert_eq!(db.count("attempts = 2").await?, 10);
    Ok(())
}

async fn a_batch_slower_than_its_lease_keeps_its_key_by_renewing<B: Backend>() -> anyhow::Result<()>
{
    let db = B::new().await?;
    let ids = enqueue(
        &db,
        (0..3u8)
            .map(|i| NewMessage::new("orders", "slow", vec![i]))
            .collect(),
    )
    .await?;
    let sink = Gated::default();
    let options = fast().lease(Duration::from_secs(1));
    let first = start(db.relay(sink.clone(), options.clone())?);
    eventually(10, "the first publish under way", || async {
        Ok(sink.calls.load(Ordering::SeqCst) == 1)
    })
    .await?;
    // A second relay looks every 20 ms while the publish outlasts three lease periods: time
    // passing is the point here, there is no condition to await.
    let second = start(db.relay(sink.clone(), options)?);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sink.calls.load(Ordering::SeqCst), 1, "the key stayed held");
    sink.open.cancel();
    eventually(10, "every message sent", || async {
        Ok(db.count("state = 'sent'").await? == 3)
    })
    .await?;
    first.stop().await?;
    second.stop().await?;
    let delivered = sink.inner.messages();
    let times = check_order(&delivered);
    assert!(ids.iter().all(|id| times.get(id) == Some(&1)), "{times:?}");
    assert_eq!(db.count("attempts = 1").await?, 3);
    Ok(())
}

async fn retries_back_off_exponentially_on_the_database_clock<B: Backend>() -> anyhow::Result<()> {
    let db = B::new().await?;
    let sink = Flaky::new(0);
    sink.down.store(true, Ordering::SeqCst);
    enqueue(&db, vec![NewMessage::new("orders", "k", b"x".to_vec())]).await?;
    let relay = db.relay(
        sink,
        fast().retry(RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(30),
        }),
    )?;
    // Each failure waits initial * 2^(attempts - 1), capped, jittered to [1/2, 1] of it.
    for (attempt, (low, high)) in [(5.0, 10.0), (10.0, 20.0), (15.0, 30.0), (15.0, 30.0)]
        .into_iter()
        .enumerate()
    {
        let report = relay.relay_once().await?;
        assert_eq!((report.claimed, report.retried), (1, 1), "{report:?}");
        let (wait, attempts) = db.next_attempt().await?;
        assert_eq!(attempts, i64::try_from(attempt)? + 1);
        assert!(
            wait > low - 1.0 && wait <= high,
            "attempt {attempts}: {wait}"
        );
        assert_eq!(relay.relay_once().await?.claimed, 0, "not due yet");
        db.make_due().await?;
    }
    Ok(())
}

async fn the_last_attempt_dead_letters_and_parks_the_key<B: Backend>() -> anyhow::Result<()> {
    let db = B::new().await?;
    let sink = Flaky::new(0);
    sink.down.store(true, Ordering::SeqCst);
    enqueue(
        &db,
        vec![
            NewMessage::new("orders", "doomed", b"1".to_vec()),
            NewMessage::new("orders", "doomed", b"2".to_vec()),
        ],
    )
    .await?;
    let relay = db.relay(
        sink.clone(),
        fast().retry(RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
        }),
    )?;
    let mut reports = Vec::new();
    for _ in 0..3 {
        db.make_due().await?;
        reports.push(relay.relay_once().await?);
    }
    // Each time the head fails and the message behind it goes back untried.
    assert_eq!(
        reports
            .iter()
            .map(|r| (r.retried, r.dead, r.returned))
            .collect::<Vec<_>>(),
        [(1, 0, 1), (1, 0, 1), (0, 1, 1)],
        "{reports:?}"
    );
    assert_eq!(
        db.count("state = 'dead' AND attempts = 3 AND last_error IS NOT NULL")
            .await?,
        1
    );
    // The key is parked behind its dead head: its second message is not sent, another key's is.
    sink.down.store(false, Ordering::SeqCst);
    enqueue(&db, vec![NewMessage::new("orders", "other", b"3".to_vec())]).await?;
    db.make_due().await?;
    let report = relay.relay_once().await?;
    assert_eq!((report.claimed, report.sent), (1, 1), "{report:?}");
    assert_eq!(
        relay.relay_once().await?.claimed,
        0,
        "the parked key is not claimed"
    );
    assert_eq!(db.count("state = 'pending' AND attempts = 0").await?, 1);

    // The operator's view, then a requeue: the key resumes, in order.
    let status = db.status().await?;
    assert_eq!(
        (
            status.pending,
            status.blocked,
            status.blocked_keys,
            status.sent
        ),
        (1, 1, 1, 1),
        "{status:?}"
    );
    assert_eq!(status.dead_by_destination, [("orders".to_owned(), 1)]);
    let dead = db.dead().await?;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].partition_key.as_str(), dead[0].attempts),
        ("doomed", 3)
    );
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("broker unreachable"))
    );
    assert_eq!(
        db.requeue(Some(vec![Uuid::now_v7()])).await?,
        0,
        "not a dead id"
    );
    assert_eq!(db.requeue(Some(vec![dead[0].id])).await?, 1);
    let report = relay.relay_once().await?;
    assert_eq!(report.sent, 2, "{report:?}");
    let doomed: Vec<Vec<u8>> = sink
        .inner
        .messages()
        .into_iter()
        .filter(|m| m.partition_key == "doomed")
        .map(|m| m.payload)
        .collect();
    assert_eq!(doomed, [b"1".to_vec(), b"2".to_vec()]);
    assert_eq!(db.status().await?.pending, 0);

    // A purge deletes a dead message, and only a dead one.
    sink.down.store(true, Ordering::SeqCst);
    enqueue(&db, vec![NewMessage::new("orders", "again", b"4".to_vec())]).await?;
    for _ in 0..3 {
        db.make_due().await?;
        relay.relay_once().await?;
    }
    assert_eq!(db.purge(None).await?, 1);
    assert_eq!(db.count("1 = 1").await?, 3, "the sent ones stay");
    Ok(())
}

async fn cleanup_deletes_only_sent_messages_past_retention_in_batches<B: Backend>()
-> anyhow::Result<()> {
    let db = B::new().await?;
    enqueue(
        &db,
        (0..25u8)
            .map(|i| NewMessage::new("orders", format!("key-{}", i % 5), vec![i]))
            .collect(),
    )
    .await?;
    let options = fast().retention(Duration::from_secs(3600)).cleanup_batch(7);
    let relay = db.relay(InMemorySink::new(), options)?;
    while relay.relay_once().await?.claimed > 0 {}
    assert_eq!(db.count("state = 'sent'").await?, 25);
    enqueue(&db, vec![NewMessage::new("orders", "late", b"x".to_vec())]).await?;
    // Twenty sent messages are older than the retention, five are not, one is pending.
    db.sent_ago("sequence <= 20", 7200).await?;
    assert_eq!(
        relay.cleanup().await?,
        20,
        "in batches of 7 until none is left"
    );
    assert_eq!(db.count("state = 'sent'").await?, 5);
    assert_eq!(db.count("state = 'pending'").await?, 1);
    assert_eq!(relay.cleanup().await?, 0);
    Ok(())
}

async fn a_destination_outage_backs_off_without_spending_attempts<B: Backend>() -> anyhow::Result<()>
{
    let db = B::new().await?;
    let sink = Switch::default();
    sink.down.store(true, Ordering::SeqCst);
    let ids = enqueue(
        &db,
        (0..3u8)
            .flat_map(|n| {
                (0..4).map(move |k| NewMessage::new("orders", format!("key-{k}"), vec![n]))
            })
            .collect(),
    )
    .await?;
    let options = fast()
        .retry(RetryPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(5),
        })
        .destination_backoff(DestinationBackoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
        });
    let relay = start(db.relay(sink.clone(), options)?);
    eventually(30, "several probes failed", || async {
        Ok(db.destination_failures("orders").await?.unwrap_or(0) >= 3)
    })
    .await?;
    // Many more failed publishes than the messages' two attempts, and not one spent or dead.
    assert!(sink.calls.load(Ordering::SeqCst) >= 3);
    assert_eq!(db.count("state = 'dead'").await?, 0);
    sink.down.store(false, Ordering::SeqCst);
    eventually(
        30,
        "everything sent once the destination is back",
        || async { Ok(db.count("state = 'sent'").await? == 12) },
    )
    .await?;
    relay.stop().await?;
    assert_eq!(
        db.count("attempts = 1").await?,
        12,
        "only the successful attempt counted"
    );
    assert_eq!(
        db.destination_failures("orders").await?,
        None,
        "healthy again"
    );
    let times = check_order(&sink.inner.messages());
    assert!(ids.iter().all(|id| times.get(id) == Some(&1)));
    Ok(())
}

async fn nats_jetstream_end_to_end<B: Backend>() -> anyhow::Result<()> {
    use eventrail_outbox::{NatsSink, PARTITION_KEY_HEADER};

    let db = B::new().await?;
    let client = async_nats::connect(nats_url())
        .await
        .context("NATS JetStream must be running for this test")?;
    let sink = NatsSink::new(client);
    let name = format!("outbox_backends_{}", Uuid::now_v7().simple());
    let mut stream = sink
        .jetstream()
        .create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            ..Default::default()
        })
        .await?;
    let sink = sink.subject_prefix(format!("{name}."));
    let ids = enqueue(
        &db,
        (0..20u8)
            .map(|i| {
                NewMessage::new("orders", format!("key-{}", i % 3), vec![i])
                    .header("n", i.to_string())
            })
            .collect(),
    )
    .await?;
    let relay = start(db.relay(sink.clone(), fast())?);
    eventually(20, "every message acknowledged by JetStream", || async {
        Ok(db.count("state = 'sent'").await? == 20)
    })
    .await?;
    relay.stop().await?;
    assert_eq!(stream.info().await?.state.messages, 20);
    let mut seen = Vec::new();
    for seq in 1..=20u64 {
        let m = stream.get_raw_message(seq).await?;
        let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_owned());
        let id: Uuid = header("Nats-Msg-Id").context("Nats-Msg-Id")?.parse()?;
        let n: usize = header("n").context("header n")?.parse()?;
        assert_eq!(ids[n], id, "the message id is JetStream's dedup id");
        assert_eq!(header(PARTITION_KEY_HEADER), Some(format!("key-{}", n % 3)));
        assert_eq!(m.payload.as_ref(), [u8::try_from(n)?]);
        seen.push(n);
    }
    for key in 0..3 {
        let order: Vec<usize> = seen.iter().copied().filter(|n| n % 3 == key).collect();
        assert!(order.is_sorted(), "key-{key}: {order:?}");
    }
    sink.jetstream().delete_stream(&name).await?;
    Ok(())
}

async fn a_broker_down_then_back_drains_the_backlog<B: Backend>() -> anyhow::Result<()> {
    let db = B::new().await?;
    let sink = Flaky::new(0);
    sink.down.store(true, Ordering::SeqCst);
    let relay = start(db.relay(sink.clone(), fast())?);
    let ids = enqueue(
        &db,
        (0..200u8)
            .map(|i| NewMessage::new("orders", format!("key-{}", i % 10), vec![i]))
            .collect(),
    )
    .await?;
    eventually(20, "retries while the broker is down", || async {
        Ok(db
            .count("state = 'pending' AND attempts >= 3 AND last_error IS NOT NULL")
            .await?
            >= 10)
    })
    .await?;
    // Stop the relay before counting: a claim in flight has its rows' attempts raised until it
    // settles (untried rows are handed back), so a count taken meanwhile would race with it.
    relay.stop().await?;
    assert_eq!(db.count("state = 'sent'").await?, 0);
    assert_eq!(
        db.count("attempts > 0").await?,
        10,
        "only each key's head was tried"
    );
    sink.down.store(false, Ordering::SeqCst);
    let relay = start(db.relay(sink.clone(), fast())?);
    eventually(30, "the backlog drained", || async {
        Ok(db.count("state = 'sent'").await? == 200)
    })
    .await?;
    relay.stop().await?;
    let times = check_order(&sink.inner.messages());
    assert_eq!(times.len(), 200);
    assert!(times.values().all(|&n| n == 1));
    assert!(ids.iter().all(|id| times.contains_key(id)));
    Ok(())
}

async fn per_key_order_holds_under_parallel_publishing_and_retries<B: Backend>()
-> anyhow::Result<()> {
    three_relays_publish_each_once_in_key_order::<B>(30, 3, fast().batch_size(25).max_per_key(5))
        .await
}

/// Relays that follow their keys up by name (a long poll interval: few walks of every head)
/// and walk when a failed run left a key unfollowed, three of them competing for ten keys,
/// still publish each message once and each key in order.
async fn followed_keys_keep_their_order_beside_walks_and_retries<B: Backend>() -> anyhow::Result<()>
{
    let options = fast()
        .poll_interval(Duration::from_secs(1))
        .batch_size(20)
        .max_per_key(4);
    three_relays_publish_each_once_in_key_order::<B>(40, 13, options).await
}

/// `rounds` messages on each of ten keys, relayed by three relays with `options` to a sink that
/// fails every `every`-th publish: each message is published once, each key's in order.
async fn three_relays_publish_each_once_in_key_order<B: Backend>(
    rounds: u8,
    every: usize,
    options: OutboxOptions,
) -> anyhow::Result<()> {
    let db = B::new().await?;
    let sink = Flaky::new(every);
    let mut messages = Vec::new();
    for round in 0..rounds {
        for key in 0..10 {
            messages.push(NewMessage::new("orders", format!("key-{key}"), vec![round]));
        }
    }
    enqueue(&db, messages).await?;
    let relays: Vec<Running> = (0..3)
        .map(|_| Ok(start(db.relay(sink.clone(), options.clone())?)))
        .collect::<anyhow::Result<_>>()?;
    let total = 10 * usize::from(rounds);
    eventually(60, "every message sent", || async {
        Ok(db.count("state = 'sent'").await? == i64::try_from(total)?)
    })
    .await?;
    for r in relays {
        r.stop().await?;
    }
    let delivered = sink.inner.messages();
    let times = check_order(&delivered);
    assert_eq!(times.len(), total);
    assert!(
        times.values().all(|&n| n == 1),
        "each message published once"
    );
    assert!(db.count("attempts > 1").await? > 0, "some were retried");
    // Payloads too: round r of a key comes before round r + 1.
    let mut seen_rounds: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    for m in &delivered {
        seen_rounds
            .entry(&m.partition_key)
            .or_default()
            .push(m.payload[0]);
    }
    for (key, seen) in seen_rounds {
        assert_eq!(seen, (0..rounds).collect::<Vec<u8>>(), "{key}");
    }
    Ok(())
}

/// With a retention of zero, a settle deletes what was sent instead of marking it (the cleanup,
/// an hour away here, has nothing to do with it); a failed message stays with its attempts,
/// and per-key order and the cycle's report are those of a kept history.
async fn without_retention_a_settle_deletes_what_was_sent<B: Backend>() -> anyhow::Result<()> {
    let db = B::new().await?;
    let options = || {
        fast()
            .retention(Duration::ZERO)
            .cleanup_interval(Duration::from_secs(3600))
            .batch_size(25)
            .max_per_key(5)
    };
    // One cycle: three sent and reported as sent, nothing left.
    enqueue(
        &db,
        (0..3u8)
            .map(|n| NewMessage::new("orders", "key-once", vec![n]))
            .collect(),
    )
    .await?;
    let once = InMemorySink::new();
    let report = db.relay(once.clone(), options())?.relay_once().await?;
    assert_eq!(report.sent, 3, "{report:?}");
    assert_eq!(db.count("true").await?, 0, "sent messages are deleted");
    assert_eq!(once.messages().len(), 3);

    // Many keys, two relays, every third publish failing.
    let sink = Flaky::new(3);
    let mut messages = Vec::new();
    for round in 0..20u8 {
        for key in 0..10 {
            messages.push(NewMessage::new("orders", format!("key-{key}"), vec![round]));
        }
    }
    enqueue(&db, messages).await?;
    let relays: Vec<Running> = (0..2)
        .map(|_| Ok(start(db.relay(sink.clone(), options())?)))
        .collect::<anyhow::Result<_>>()?;
    eventually(60, "every message sent and deleted", || async {
        Ok(db.count("true").await? == 0)
    })
    .await?;
    for r in relays {
        r.stop().await?;
    }
    let delivered = sink.inner.messages();
    let times = check_order(&delivered);
    assert_eq!(times.len(), 200);
    assert!(times.values().all(|&n| n == 1));

    // A message that keeps failing stays, with its attempts, and parks its key.
    enqueue(
        &db,
        vec![NewMessage::new("orders", "key-dead", b"x".to_vec())],
    )
    .await?;
    let refusing = Flaky::new(1);
    let relay = db.relay(
        refusing,
        options().retry(RetryPolicy {
            max_attempts: 1,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(5),
        }),
    )?;
    let report = relay.relay_once().await?;
    assert_eq!(report.dead, 1, "{report:?}");
    assert_eq!(db.count("state = 'dead' AND attempts = 1").await?, 1);
    Ok(())
}

async fn the_cleanup_cut_off_slides<B: Backend>() -> anyhow::Result<()> {
    let db = B::new().await?;
    enqueue(
        &db,
        (0..5u8)
            .map(|i| NewMessage::new("orders", format!("key-{i}"), vec![i]))
            .collect(),
    )
    .await?;
    let relay = db.relay(
        InMemorySink::new(),
        fast().retention(Duration::from_secs(60)).cleanup_batch(1),
    )?;
    assert_eq!(relay.relay_once().await?.sent, 5);
    enqueue(&db, vec![NewMessage::new("orders", "late", b"x".to_vec())]).await?;
    db.sent_ago("sequence <= 2", 90).await?;
    db.sent_ago("sequence > 2", 30).await?;
    assert_eq!(
        relay.cleanup().await?,
        2,
        "older than the retention, in batches of one"
    );
    assert_eq!(db.count("state = 'sent'").await?, 3);
    // Forty seconds later (the rows age instead of the clock moving).
    db.age_sent(40).await?;
    assert_eq!(relay.cleanup().await?, 3, "the cut-off slid");
    assert_eq!(
        db.count("1 = 1").await?,
        1,
        "pending messages are never cleaned up"
    );
    Ok(())
}

async fn shutdown_meets_its_deadline_and_hands_work_back<B: Backend>() -> anyhow::Result<()> {
    let db = B::new().await?;
    enqueue(
        &db,
        (0..5u8)
            .map(|i| NewMessage::new("orders", format!("key-{i}"), vec![i]))
            .collect(),
    )
    .await?;
    let started = Arc::new(AtomicUsize::new(0));
    let relay = start(db.relay(
        Hanging(Arc::clone(&started)),
        fast().shutdown_timeout(Duration::from_millis(200)),
    )?);
    eventually(10, "publishes in flight", || async {
        Ok(started.load(Ordering::SeqCst) == 5)
    })
    .await?;
    assert_eq!(db.count("lease_owner IS NOT NULL").await?, 5);
    relay.stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), relay.task)
        .await
        .map_err(|_| anyhow::anyhow!("the relay missed its shutdown deadline"))???;
    assert_eq!(
        db.count("state = 'pending' AND lease_owner IS NULL AND attempts = 0")
            .await?,
        5,
        "handed back untried, leases released"
    );
    // Handed back, the keys are claimed at once by a walk of due keys (on PostgreSQL, the settle
    // that handed them back cleared the claim hints on their rows with the leases).
    let report = db.relay(InMemorySink::new(), fast())?.relay_once().await?;
    assert_eq!(report.sent, 5, "the keys handed back are claimed at once");
    Ok(())
}

/// Many producers (some rolling back) and three relays, one of them killed mid-batch and
/// replaced: every committed message is delivered, nothing rolled back is, duplicates come only
/// from the killed relay's unmarked batch, and each key's first deliveries are in order.
async fn torture_producers_rollbacks_and_a_killed_relay_lose_nothing<B: Backend>()
-> anyhow::Result<()> {
    let db = B::new().await?;
    let sink = InMemorySink::new();
    let options = fast()
        .lease(Duration::from_millis(300))
        .batch_size(30)
        .max_per_key(4);
    let mut relays: Vec<Running> = (0..3)
        .map(|_| Ok(start(db.relay(sink.clone(), options.clone())?)))
        .collect::<anyhow::Result<_>>()?;
    let producers: Vec<JoinHandle<Produced>> = (0..6)
        .map(|p: usize| {
            let db = db.clone();
            tokio::spawn(async move {
                let (mut committed, mut rolled_back) = (Vec::new(), Vec::new());
                for batch in 0..20usize {
                    let messages = (0..8)
                        .map(|i| {
                            NewMessage::new(
                                "orders",
                                format!("key-{}", (p + batch + i) % 12),
                                vec![0],
                            )
                        })
                        .collect();
                    let commit = !(p + batch).is_multiple_of(4);
                    let ids = db.enqueue_then(messages, commit).await?;
                    if commit {
                        committed.extend(ids);
                    } else {
                        rolled_back.extend(ids);
                    }
                }
                Ok((committed, rolled_back))
            })
        })
        .collect();
    // Kill one relay once deliveries are under way, without letting it release anything.
    let seen = sink.clone();
    eventually(20, "deliveries under way", || async {
        Ok(seen.len() >= 50)
    })
    .await?;
    let killed = relays.remove(0);
    killed.task.abort();
    assert!(killed.task.await.is_err_and(|e| e.is_cancelled()));
    relays.push(start(db.relay(sink.clone(), options)?));

    let (mut committed, mut rolled_back) = (HashSet::new(), HashSet::new());
    for p in producers {
        let (c, r) = p.await??;
        committed.extend(c);
        rolled_back.extend(r);
    }
    let expected = i64::try_from(committed.len())?;
    eventually(60, "every committed message sent", || async {
        Ok(db.count("state = 'sent'").await? == expected)
    })
    .await?;
    for r in relays {
        r.stop().await?;
    }
    assert_eq!(
        db.count("1 = 1").await?,
        expected,
        "rolled-back producers left nothing"
    );
    let delivered = sink.messages();
    let mut first = Vec::new();
    let mut times: HashMap<Uuid, usize> = HashMap::new();
    for m in &delivered {
        let n = times.entry(m.id).or_insert(0);
        if *n == 0 {
            first.push(m.clone());
        }
        *n += 1;
    }
    let lost = committed
        .iter()
        .filter(|id| !times.contains_key(id))
        .count();
    let duplicated: usize = times.values().map(|n| n - 1).sum();
    assert_eq!(lost, 0, "lost messages");
    assert!(
        rolled_back.iter().all(|id| !times.contains_key(id)),
        "rolled back, yet delivered"
    );
    assert!(
        duplicated <= 30,
        "duplicates beyond the killed relay's batch: {duplicated}"
    );
    check_order(&first);
    Ok(())
}

async fn a_relay_that_lost_its_lease_stops_publishing_the_key<B: Backend>() -> anyhow::Result<()> {
    let db = B::new().await?;
    let ids = enqueue(
        &db,
        (0..3u8)
            .map(|i| NewMessage::new("orders", "taken", vec![i]))
            .collect(),
    )
    .await?;
    let sink = Gated::default();
    let relay = start(db.relay(sink.clone(), fast().lease(Duration::from_secs(3)))?);
    eventually(10, "the first publish under way", || async {
        Ok(sink.calls.load(Ordering::SeqCst) == 1)
    })
    .await?;
    // Another relay takes the key over (as after a lapsed lease).
    db.steal_leases(Uuid::now_v7()).await?;
    // Renewals run every second (a third of the lease): two have come and seen the loss 2.5 s
    // later, while the relay's own lease (3 s from the claim) would still let it publish. Time
    // passing is the point: there is no condition to await.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    sink.open.cancel();
    relay.stop().await?;
    let delivered: Vec<Uuid> = sink.inner.messages().iter().map(|m| m.id).collect();
    assert_eq!(delivered, [ids[0]], "only the publish under way completed");
    // The relay released its own leases at shutdown: the one left is the new holder's.
    assert_eq!(
        db.count("state = 'pending' AND lease_owner IS NOT NULL")
            .await?,
        1,
        "the settle left the new holder's key alone"
    );
    assert_eq!(db.count("state = 'pending'").await?, 3);
    Ok(())
}

async fn pipelined_claims_never_put_a_key_in_flight_twice<B: Backend>() -> anyhow::Result<()> {
    let db = B::new().await?;
    let sink = Tracking::default();
    // Ten messages per key, taken in runs of 5 by claims of 20: one batch holds 4 keys.
    let options = fast().batch_size(20).max_per_key(5).claims_in_flight(4);
    let mut messages = Vec::new();
    for round in 0..10u8 {
        for key in 0..40 {
            messages.push(NewMessage::new("orders", format!("key-{key}"), vec![round]));
        }
    }
    let ids = enqueue(&db, messages).await?;
    let relays: Vec<Running> = [sink.clone(), sink.for_another_relay()]
        .into_iter()
        .map(|s| Ok(start(db.relay(s, options.clone())?)))
        .collect::<anyhow::Result<_>>()?;
    eventually(60, "every message sent", || async {
        Ok(db.count("state = 'sent'").await? == 400)
    })
    .await?;
    for r in relays {
        r.stop().await?;
    }
    assert_eq!(
        sink.most_per_key.load(Ordering::SeqCst),
        1,
        "one publish per key at a time"
    );
    assert!(
        sink.most_per_relay.load(Ordering::SeqCst) > 4,
        "a relay published more keys at once than one batch holds: claims overlapped"
    );
    let times = check_order(&sink.inner.messages());
    assert_eq!(times.len(), 400);
    assert!(times.values().all(|&n| n == 1), "no duplicates");
    assert!(ids.iter().all(|id| times.contains_key(id)));
    Ok(())
}

async fn keys_settle_as_their_runs_finish_not_with_the_slowest_key<B: Backend>()
-> anyhow::Result<()> {
    let db = B::new().await?;
    let mut messages = vec![NewMessage::new("orders", "slow", b"held".to_vec())];
    messages.extend((0..10u8).map(|i| NewMessage::new("orders", format!("key-{i}"), vec![i])));
    enqueue(&db, messages).await?;
    // One claim takes all eleven keys; the slow key's publish is the first and is held.
    let sink = Gated::default();
    let relay = start(db.relay(sink.clone(), fast())?);
    eventually(
        10,
        "the other keys sent while the slow one publishes",
        || async { Ok(db.count("state = 'sent'").await? == 10) },
    )
    .await?;
    assert_eq!(
        db.count("state = 'pending' AND lease_owner IS NOT NULL")
            .await?,
        1,
        "the slow key is still held"
    );
    sink.open.cancel();
    eventually(10, "the slow key sent", || async {
        Ok(db.count("state = 'sent'").await? == 11)
    })
    .await?;
    relay.stop().await?;
    assert_eq!(sink.inner.len(), 11);
    Ok(())
}

/// Each case once per database.
macro_rules! on_both {
    ($($case:ident),* $(,)?) => {
        mod pg {
            $(
                #[tokio::test]
                async fn $case() -> anyhow::Result<()> {
                    super::$case::<super::Pg>().await
                }
            )*
        }
        mod mysql {
            $(
                #[tokio::test]
                async fn $case() -> anyhow::Result<()> {
                    super::$case::<super::My>().await
                }
            )*
        }
    };
}

on_both!(
    enqueue_commits_or_rolls_back_with_the_callers_transaction,
    parallel_relays_and_producers_keep_each_keys_order,
    a_crashed_relays_claims_are_taken_over_with_the_same_ids,
    a_batch_slower_than_its_lease_keeps_its_key_by_renewing,
    retries_back_off_exponentially_on_the_database_clock,
    the_last_attempt_dead_letters_and_parks_the_key,
    cleanup_deletes_only_sent_messages_past_retention_in_batches,
    a_destination_outage_backs_off_without_spending_attempts,
    nats_jetstream_end_to_end,
    a_broker_down_then_back_drains_the_backlog,
    per_key_order_holds_under_parallel_publishing_and_retries,
    followed_keys_keep_their_order_beside_walks_and_retries,
    the_cleanup_cut_off_slides,
    without_retention_a_settle_deletes_what_was_sent,
    shutdown_meets_its_deadline_and_hands_work_back,
    torture_producers_rollbacks_and_a_killed_relay_lose_nothing,
    a_relay_that_lost_its_lease_stops_publishing_the_key,
    pipelined_claims_never_put_a_key_in_flight_twice,
    keys_settle_as_their_runs_finish_not_with_the_slowest_key,
);

/// MySQL-only: the migration is idempotent and refuses a newer schema; table names are
/// validated.
#[tokio::test]
async fn mysql_migrate_is_idempotent_and_names_are_validated() -> anyhow::Result<()> {
    let db = MyTestDb::new().await?;
    let outbox = MySqlOutbox::new(&OutboxOptions::new())?;
    outbox.migrate(&db.pool).await?; // a second time: nothing to do
    let (a, b) = tokio::join!(outbox.migrate(&db.pool), outbox.migrate(&db.pool));
    a?;
    b?;
    let mut conn = db.pool.get_conn().await?;
    let versions: Vec<i64> = conn.query("SELECT version FROM outbox_migrations").await?;
    assert_eq!(versions, [1]);
    conn.query_drop("INSERT INTO outbox_migrations VALUES (99, UTC_TIMESTAMP(6))")
        .await?;
    let newer = outbox.migrate(&db.pool).await;
    assert!(
        matches!(
            newer,
            Err(OutboxError::Migration(
                eventrail_store_postgres::MigrationError::UnknownMigration { version: 99, .. }
            ))
        ),
        "{newer:?}"
    );
    for bad in ["x;drop", "Outbox", "a.b.c", "o`x"] {
        let options = OutboxOptions::new().tables(eventrail_outbox::OutboxTables {
            outbox: bad.into(),
            ..Default::default()
        });
        assert!(MySqlOutbox::new(&options).is_err(), "{bad}");
    }
    // Keys differing in case or trailing spaces are different keys (as on PostgreSQL).
    let mut tx = conn
        .start_transaction(mysql_async::TxOpts::default())
        .await?;
    outbox
        .enqueue_batch(
            &mut tx,
            ["k", "k ", "K"]
                .map(|key| NewMessage::new("orders", key, b"x".to_vec()))
                .to_vec(),
        )
        .await?;
    tx.commit().await?;
    let keys: Option<i64> = conn
        .query_first("SELECT COUNT(DISTINCT partition_key) FROM outbox")
        .await?;
    assert_eq!(keys, Some(3));
    // Another outbox in the same database, under other names, is independent.
    let other = OutboxOptions::new().tables(eventrail_outbox::OutboxTables {
        outbox: "other_outbox".into(),
        inbox: "other_inbox".into(),
        destinations: "other_destinations".into(),
        keys: "other_keys".into(),
    });
    MySqlOutbox::new(&other)?.migrate(&db.pool).await?;
    let tables: Vec<String> = conn
        .query("SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() ORDER BY 1")
        .await?;
    assert!(
        tables.contains(&"other_outbox_key_locks".to_owned()),
        "{tables:?}"
    );
    Ok(())
}
