//! The outbox suite that runs on both databases: each case is written once over [`Backend`]
//! and instantiated for PostgreSQL (`pg::`) and MySQL/MariaDB (`mysql::`). Enqueue in the
//! caller's transaction, per-key order with parallel relays, a crashed relay's claims taken
//! over, leases kept by renewal, retries with backoff on the database clock, dead letters,
//! sliding cleanup, a destination outage that spends no attempts, and NATS JetStream end to end.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use eventrail_outbox::{
    CycleReport, DestinationBackoff, InMemorySink, MySqlOutbox, MySqlRelay, NewMessage, Outbox,
    OutboxError, OutboxOptions, Relay, RetryPolicy, Sink,
};
use mysql_async::prelude::Queryable;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::harness::{TestDb, eventually};
use crate::mysql_harness::MyTestDb;
use crate::outbox::{CrashAfterPublish, Flaky, Gated, check_order, fast, nats_url};
use crate::outbox_outage::Switch;

/// A relay of either database.
pub(crate) enum AnyRelay<S> {
    Pg(Relay<S>),
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

    /// Moves `condition`'s sent messages two hours into the past.
    fn age_sent(&self, condition: &str) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Seconds until the (one) message's next attempt, on the database clock, and its attempts.
    fn next_attempt(&self) -> impl Future<Output = anyhow::Result<(f64, i64)>> + Send;

    /// The failures recorded for a backed-off destination.
    fn destination_failures(
        &self,
        destination: &str,
    ) -> impl Future<Output = anyhow::Result<Option<i64>>> + Send;

    fn relay<S: Sink>(&self, sink: S, options: OutboxOptions) -> anyhow::Result<AnyRelay<S>>;
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

    async fn age_sent(&self, condition: &str) -> anyhow::Result<()> {
        let client = self.0.pool.get().await?;
        client
            .batch_execute(&format!(
                "UPDATE eventrail.outbox SET sent_at = now() - interval '2 hours' WHERE state = 'sent' AND {condition}"
            ))
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
        Ok(AnyRelay::Pg(Relay::new(self.0.pool.clone(), sink, options)?))
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

    async fn age_sent(&self, condition: &str) -> anyhow::Result<()> {
        self.conn()
            .await?
            .query_drop(format!(
                "UPDATE outbox SET sent_at = UTC_TIMESTAMP(6) - INTERVAL 2 HOUR WHERE state = 'sent' AND {condition}"
            ))
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
    assert_eq!(db.count("1 = 1").await?, 0, "a rolled-back producer leaves nothing");

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
    assert!(matches!(invalid, Err(OutboxError::InvalidMessage(_))), "{invalid:?}");
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
    assert!(age < Duration::from_secs(60), "created_at on the real clock: {age:?}");
    assert_eq!(db.count("state = 'sent' AND sent_at IS NOT NULL").await?, 1);
    Ok(())
}

async fn parallel_relays_and_producers_keep_each_keys_order<B: Backend>() -> anyhow::Result<()> {
    let db = B::new().await?;
    let sink = InMemorySink::new();
    let options = fast().batch_size(40).max_per_key(3);
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

async fn a_crashed_relays_claims_are_taken_over_with_the_same_ids<B: Backend>()
-> anyhow::Result<()> {
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
        db.count("state = 'pending' AND lease_owner IS NOT NULL").await?,
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

async fn a_batch_slower_than_its_lease_keeps_its_key_by_renewing<B: Backend>()
-> anyhow::Result<()> {
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

async fn retries_back_off_exponentially_on_the_database_clock<B: Backend>() -> anyhow::Result<()>
{
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
        assert!(wait > low - 1.0 && wait <= high, "attempt {attempts}: {wait}");
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
    assert_eq!(db.count("state = 'dead' AND attempts = 3 AND last_error IS NOT NULL").await?, 1);
    // The key is parked behind its dead head: its second message is not sent, another key's is.
    sink.down.store(false, Ordering::SeqCst);
    enqueue(&db, vec![NewMessage::new("orders", "other", b"3".to_vec())]).await?;
    db.make_due().await?;
    let report = relay.relay_once().await?;
    assert_eq!((report.claimed, report.sent), (1, 1), "{report:?}");
    assert_eq!(relay.relay_once().await?.claimed, 0, "the parked key is not claimed");
    assert_eq!(db.count("state = 'pending' AND attempts = 0").await?, 1);
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
    db.age_sent("sequence <= 20").await?;
    assert_eq!(relay.cleanup().await?, 20, "in batches of 7 until none is left");
    assert_eq!(db.count("state = 'sent'").await?, 5);
    assert_eq!(db.count("state = 'pending'").await?, 1);
    assert_eq!(relay.cleanup().await?, 0);
    Ok(())
}

async fn a_destination_outage_backs_off_without_spending_attempts<B: Backend>()
-> anyhow::Result<()> {
    let db = B::new().await?;
    let sink = Switch::default();
    sink.down.store(true, Ordering::SeqCst);
    let ids = enqueue(
        &db,
        (0..3u8)
            .flat_map(|n| (0..4).map(move |k| NewMessage::new("orders", format!("key-{k}"), vec![n])))
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
    eventually(30, "everything sent once the destination is back", || async {
        Ok(db.count("state = 'sent'").await? == 12)
    })
    .await?;
    relay.stop().await?;
    assert_eq!(db.count("attempts = 1").await?, 12, "only the successful attempt counted");
    assert_eq!(db.destination_failures("orders").await?, None, "healthy again");
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
            .map(|i| NewMessage::new("orders", format!("key-{}", i % 3), vec![i]).header("n", i.to_string()))
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
    assert!(matches!(newer, Err(OutboxError::Config(_))), "{newer:?}");
    for bad in ["x;drop", "Outbox", "a.b.c", "o`x"] {
        let options = OutboxOptions::new().tables(eventrail_outbox::OutboxTables {
            outbox: bad.into(),
            ..Default::default()
        });
        assert!(MySqlOutbox::new(&options).is_err(), "{bad}");
    }
    // Another outbox in the same database, under other names, is independent.
    let other = OutboxOptions::new().tables(eventrail_outbox::OutboxTables {
        outbox: "other_outbox".into(),
        inbox: "other_inbox".into(),
        destinations: "other_destinations".into(),
    });
    MySqlOutbox::new(&other)?.migrate(&db.pool).await?;
    let tables: Vec<String> = conn
        .query("SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() ORDER BY 1")
        .await?;
    assert!(tables.contains(&"other_outbox_keys".to_owned()), "{tables:?}");
    Ok(())
}
