//! The transactional outbox against PostgreSQL (and the brokers): enqueue in the producer's
//! transaction, concurrent relays, crashes, broker outages, dead letters, per-key order,
//! cleanup, shutdown, the inbox and the sinks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use eventrail_core::{AppendRequest, ExpectedVersion, NewEvent, StreamName};
use eventrail_outbox::{
    DestinationBackoff, InMemorySink, Inbox, NewMessage, Outbox, OutboxAdmin, OutboxError,
    OutboxMessage, OutboxOptions, PgTableSink, Relay, RetryPolicy, Sink, SinkError, Wakeup,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::harness::{TestDb, eventually};

/// Fast settings for tests: short polls and backoffs, many attempts.
pub(crate) fn fast() -> OutboxOptions {
    OutboxOptions::new()
        .poll_interval(Duration::from_millis(20))
        .wakeup(Wakeup::Poll)
        .retry(RetryPolicy {
            max_attempts: 1000,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(50),
        })
        .destination_backoff(DestinationBackoff {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(50),
        })
}

pub(crate) async fn enqueue(db: &TestDb, messages: Vec<NewMessage>) -> anyhow::Result<Vec<Uuid>> {
    let outbox = Outbox::new(&OutboxOptions::new())?;
    let mut client = db.pool.get().await?;
    let tx = client.transaction().await?;
    let ids = outbox.enqueue_batch(&tx, messages).await?;
    tx.commit().await?;
    Ok(ids)
}

pub(crate) async fn count(db: &TestDb, condition: &str) -> anyhow::Result<i64> {
    let client = db.pool.get().await?;
    Ok(client
        .query_one(
            &format!("SELECT count(*) FROM eventrail.outbox WHERE {condition}"),
            &[],
        )
        .await?
        .get(0))
}

pub(crate) struct Running {
    stop: CancellationToken,
    task: JoinHandle<Result<(), OutboxError>>,
}

impl Running {
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await??;
        Ok(())
    }
}

pub(crate) fn start<S: Sink>(relay: Relay<S>) -> Running {
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move { relay.run(token).await });
    Running { stop, task }
}

/// `message` as a relay hands it to a sink after claiming it at `sequence`, to publish it
/// directly (a republish, or a sink's verdict on one message).
pub(crate) fn claimed(message: &NewMessage, sequence: i64) -> OutboxMessage {
    OutboxMessage::claimed(message.clone(), sequence, 1)
}

/// Relays the outbox to `sink` until `n` messages are sent, then stops the relay.
pub(crate) async fn relay_all<S: Sink>(db: &TestDb, sink: S, n: i64) -> anyhow::Result<()> {
    let relay = start(Relay::new(db.pool.clone(), sink, fast())?);
    eventually(20, "every message acknowledged by the sink", || async {
        Ok(count(db, "state = 'sent'").await? == n)
    })
    .await?;
    relay.stop().await
}

/// Each key's deliveries are in outbox order; returns how often each id was delivered.
pub(crate) fn check_order(delivered: &[OutboxMessage]) -> HashMap<Uuid, usize> {
    let mut last: HashMap<&str, i64> = HashMap::new();
    let mut times = HashMap::new();
    for m in delivered {
        let previous = last.insert(&m.partition_key, m.sequence);
        assert!(
            previous.is_none_or(|p| p <= m.sequence),
            "key {} delivered {} after {previous:?}",
            m.partition_key,
            m.sequence
        );
        *times.entry(m.id).or_insert(0) += 1;
    }
    times
}

#[tokio::test]
async fn rolled_back_producer_leaves_no_row() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let outbox = Outbox::new(&OutboxOptions::new())?;
    let store = db.store();
    let stream: StreamName = "order-1".parse()?;
    {
        let mut client = db.pool.get().await?;
        let tx = client.transaction().await?;
        store
            .append_in(
                &tx,
                AppendRequest::new(
                    stream.clone(),
                    ExpectedVersion::Any,
                    vec![NewEvent::json("Placed", serde_json::json!({}))],
                ),
            )
            .await?;
        let ids = outbox
            .enqueue_batch(
                &tx,
                vec![
                    NewMessage::new("orders", "order-1", b"a".to_vec()),
                    NewMessage::new("orders", "order-1", b"b".to_vec()),
                ],
            )
            .await?;
        assert_eq!(ids.len(), 2);
        assert_eq!(count(&db, "true").await?, 0, "invisible before commit");
        tx.rollback().await?;
    }
    assert_eq!(
        count(&db, "true").await?,
        0,
        "a rolled-back producer leaves nothing"
    );
    let client = db.pool.get().await?;
    let events: i64 = client
        .query_one("SELECT count(*) FROM eventrail.events", &[])
        .await?
        .get(0);
    assert_eq!(events, 0);

    // The helper commits the events and the messages together.
    let message =
        NewMessage::json("orders", "order-1", &serde_json::json!({"n": 1})).header("tenant", "t1");
    let expected_id = message.id;
    let (outcome, ids) = outbox
        .append_and_enqueue(
            &store,
            AppendRequest::new(
                stream.clone(),
                ExpectedVersion::NoStream,
                vec![NewEvent::json("Placed", serde_json::json!({}))],
            ),
            vec![message.clone()],
        )
        .await?;
    assert_eq!(ids, [expected_id]);
    assert_eq!(outcome.stream_version, 0);
    assert_eq!(count(&db, "state = 'pending'").await?, 1);

    // A refused append enqueues nothing.
    let refused = outbox
        .append_and_enqueue(
            &store,
            AppendRequest::new(
                stream,
                ExpectedVersion::NoStream,
                vec![NewEvent::json("Placed", serde_json::json!({}))],
            ),
            vec![NewMessage::new("orders", "order-1", b"x".to_vec())],
        )
        .await;
    assert!(matches!(refused, Err(OutboxError::Store(_))), "{refused:?}");
    assert_eq!(count(&db, "true").await?, 1);

    // The same id twice is a typed error.
    let mut client = db.pool.get().await?;
    let tx = client.transaction().await?;
    let duplicate = outbox.enqueue(&tx, message).await;
    assert!(
        matches!(duplicate, Err(OutboxError::DuplicateMessageId { message_id: Some(id) }) if id == expected_id),
        "{duplicate:?}"
    );
    drop(tx);

    // What a relay hands the sink is what was enqueued.
    let sink = InMemorySink::new();
    let relay = Relay::new(db.pool.clone(), sink.clone(), fast())?;
    assert_eq!(relay.relay_once().await?.sent, 1);
    let got = sink.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, expected_id);
    assert_eq!(got[0].payload, br#"{"n":1}"#);
    assert_eq!(got[0].content_type, "application/json");
    assert_eq!(got[0].headers.get("tenant").map(String::as_str), Some("t1"));
    assert_eq!(got[0].attempts, 1);
    Ok(())
}

#[tokio::test]
async fn three_concurrent_relays_deliver_every_message_once_in_key_order() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let sink = InMemorySink::new();
    let options = fast()
        .wakeup(Wakeup::Notify)
        .poll_interval(Duration::from_millis(200))
        .batch_size(40)
        .max_per_key(3);
    let relays: Vec<Running> = (0..3)
        .map(|_| {
            Ok(start(
                Relay::new(db.pool.clone(), sink.clone(), options.clone())?.listen(db.config()),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    // Four producers at once, interleaving 25 keys, while the relays run.
    let producers: Vec<JoinHandle<anyhow::Result<Vec<Uuid>>>> = (0..4)
        .map(|p| {
            let pool = db.pool.clone();
            tokio::spawn(async move {
                let outbox = Outbox::new(&OutboxOptions::new())?;
                let mut ids = Vec::new();
                for batch in 0..15 {
                    let mut client = pool.get().await?;
                    let tx = client.transaction().await?;
                    let messages = (0..10)
                        .map(|i| {
                            NewMessage::new(
                                "orders",
                                format!("key-{}", (p * 7 + batch * 3 + i) % 25),
                                format!("{p}-{batch}-{i}"),
                            )
                        })
                        .collect();
                    ids.extend(outbox.enqueue_batch(&tx, messages).await?);
                    tx.commit().await?;
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
        Ok(count(&db, "state = 'sent'").await? == 600)
    })
    .await?;
    for r in relays {
        r.stop().await?;
    }
    let times = check_order(&sink.messages());
    assert_eq!(times.len(), 600, "every message delivered");
    assert!(times.values().all(|&n| n == 1), "no duplicates");
    assert!(times.keys().all(|id| enqueued.contains(id)));
    assert_eq!(count(&db, "lease_owner IS NOT NULL").await?, 0);
    Ok(())
}

/// Publishes to the inner sink, then never acknowledges: the relay "crashes" before marking.
#[derive(Clone)]
pub(crate) struct CrashAfterPublish(pub(crate) InMemorySink);

impl Sink for CrashAfterPublish {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        self.0.publish(message).await?;
        std::future::pending().await
    }
}

#[tokio::test]
async fn crash_between_publish_and_mark_republishes_with_the_same_id() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let ids = enqueue(
        &db,
        (0..10)
            .map(|i| NewMessage::new("orders", format!("key-{i}"), vec![i]))
            .collect(),
    )
    .await?;
    let sink = InMemorySink::new();
    let doomed = Relay::new(
        db.pool.clone(),
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
        count(&db, "state = 'pending' AND lease_owner IS NOT NULL").await?,
        10
    );

    let survivor = start(Relay::new(db.pool.clone(), sink.clone(), fast())?);
    eventually(20, "the survivor sent everything", || async {
        Ok(count(&db, "state = 'sent'").await? == 10)
    })
    .await?;
    survivor.stop().await?;
    let times = check_order(&sink.messages());
    for id in &ids {
        assert_eq!(times.get(id), Some(&2), "published again with the same id");
    }
    assert_eq!(count(&db, "attempts = 2").await?, 10);
    Ok(())
}

/// A broker that can be down: fails transiently while `down` is set.
#[derive(Clone)]
pub(crate) struct Flaky {
    pub(crate) inner: InMemorySink,
    pub(crate) down: Arc<AtomicBool>,
    /// Fail every n-th publish as well (0: never).
    every: usize,
    pub(crate) calls: Arc<AtomicUsize>,
}

impl Flaky {
    pub(crate) fn new(every: usize) -> Self {
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

#[tokio::test]
async fn broker_down_then_back_drains_the_backlog() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let sink = Flaky::new(0);
    sink.down.store(true, Ordering::SeqCst);
    let relay = start(Relay::new(db.pool.clone(), sink.clone(), fast())?);
    let ids = enqueue(
        &db,
        (0..200u8)
            .map(|i| NewMessage::new("orders", format!("key-{}", i % 10), vec![i]))
            .collect(),
    )
    .await?;
    eventually(20, "retries while the broker is down", || async {
        Ok(count(
            &db,
            "state = 'pending' AND attempts >= 3 AND last_error IS NOT NULL",
        )
        .await?
            >= 10)
    })
    .await?;
    // Stop the relay before counting: a claim in flight has its rows' attempts raised until it
    // settles (untried rows are handed back), so a count taken meanwhile would race with it.
    relay.stop().await?;
    assert_eq!(count(&db, "state = 'sent'").await?, 0);
    assert_eq!(
        count(&db, "attempts > 0").await?,
        10,
        "only each key's head was tried"
    );
    sink.down.store(false, Ordering::SeqCst);
    let relay = start(Relay::new(db.pool.clone(), sink.clone(), fast())?);
    eventually(30, "the backlog drained", || async {
        Ok(count(&db, "state = 'sent'").await? == 200)
    })
    .await?;
    relay.stop().await?;
    let times = check_order(&sink.inner.messages());
    assert_eq!(times.len(), 200);
    assert!(times.values().all(|&n| n == 1));
    assert!(ids.iter().all(|id| times.contains_key(id)));
    Ok(())
}

#[tokio::test]
async fn per_key_order_holds_under_parallel_publishing_and_retries() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let sink = Flaky::new(3); // every third publish fails
    let mut messages = Vec::new();
    for round in 0..30u8 {
        for key in 0..10 {
            messages.push(NewMessage::new("orders", format!("key-{key}"), vec![round]));
        }
    }
    enqueue(&db, messages).await?;
    let relays: Vec<Running> = (0..3)
        .map(|_| {
            Ok(start(Relay::new(
                db.pool.clone(),
                sink.clone(),
                fast().batch_size(25).max_per_key(5),
            )?))
        })
        .collect::<anyhow::Result<_>>()?;
    eventually(60, "every message sent", || async {
        Ok(count(&db, "state = 'sent'").await? == 300)
    })
    .await?;
    for r in relays {
        r.stop().await?;
    }
    let delivered = sink.inner.messages();
    let times = check_order(&delivered);
    assert_eq!(times.len(), 300);
    assert!(times.values().all(|&n| n == 1));
    assert!(count(&db, "attempts > 1").await? > 0, "some were retried");
    // Payloads too: round r of a key comes before round r + 1.
    let mut rounds: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    for m in &delivered {
        rounds
            .entry(&m.partition_key)
            .or_default()
            .push(m.payload[0]);
    }
    for (key, seen) in rounds {
        assert_eq!(seen, (0..30).collect::<Vec<u8>>(), "{key}");
    }
    Ok(())
}

/// Refuses payload `poison` transiently and `fatal` permanently.
#[derive(Clone, Default)]
struct Picky(InMemorySink);

impl Sink for Picky {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        match message.payload.as_slice() {
            b"poison" => Err(SinkError::transient("broker refused it")),
            b"fatal" => Err(SinkError::permanent("message too large")),
            _ => self.0.publish(message).await,
        }
    }
}

#[tokio::test]
async fn poison_message_goes_dead_while_other_keys_flow_and_its_key_waits() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let mut messages = vec![
        NewMessage::new("orders", "sick", b"ok-1".to_vec()),
        NewMessage::new("orders", "sick", b"poison".to_vec()),
        NewMessage::new("orders", "sick", b"ok-2".to_vec()),
        NewMessage::new("payments", "broken", b"fatal".to_vec()),
        NewMessage::new("payments", "broken", b"ok-3".to_vec()),
    ];
    let (poison, fatal, waiting) = (messages[1].id, messages[3].id, messages[2].id);
    for i in 0..50u8 {
        messages.push(NewMessage::new(
            "orders",
            format!("healthy-{}", i % 5),
            vec![i],
        ));
    }
    enqueue(&db, messages).await?;
    let sink = Picky::default();
    let options = fast().retry(RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
    });
    let relay = start(Relay::new(db.pool.clone(), sink.clone(), options.clone())?);
    eventually(20, "the poison message is dead", || async {
        Ok(count(&db, "state = 'dead'").await? == 2)
    })
    .await?;
    eventually(20, "the other keys flowed", || async {
        Ok(count(&db, "state = 'sent'").await? == 51)
    })
    .await?;
    relay.stop().await?;
    let client = db.pool.get().await?;
    let row = client
        .query_one(
            "SELECT attempts, last_error FROM eventrail.outbox WHERE message_id = $1",
            &[&poison],
        )
        .await?;
    assert_eq!(row.get::<_, i32>(0), 3, "dead after N attempts");
    assert!(row.get::<_, String>(1).contains("broker refused it"));
    let row = client
        .query_one(
            "SELECT attempts, state FROM eventrail.outbox WHERE message_id = $1",
            &[&fatal],
        )
        .await?;
    assert_eq!(
        (row.get::<_, i32>(0), row.get::<_, String>(1)),
        (1, "dead".into())
    );

    // The parked keys wait: nothing of theirs is claimable.
    let relay = Relay::new(db.pool.clone(), sink.clone(), options)?;
    assert_eq!(relay.relay_once().await?.claimed, 0);
    let row = client
        .query_one(
            "SELECT attempts, state FROM eventrail.outbox WHERE message_id = $1",
            &[&waiting],
        )
        .await?;
    assert_eq!(
        (row.get::<_, i32>(0), row.get::<_, String>(1)),
        (0, "pending".into())
    );

    let admin = OutboxAdmin::new(db.pool.clone(), &OutboxOptions::new())?;
    let status = admin.status().await?;
    assert_eq!(status.pending, 2);
    assert_eq!(
        status.dead_by_destination,
        [("orders".to_owned(), 1), ("payments".to_owned(), 1)]
    );
    let dead = admin.dead(10).await?;
    assert_eq!(
        dead.iter().map(|d| d.id).collect::<Vec<_>>(),
        [poison, fatal]
    );

    // Purging the dead message lets its key resume; requeueing retries it.
    assert_eq!(admin.purge(Some(&[poison])).await?, 1);
    assert_eq!(admin.requeue(None).await?, 1);
    let report = relay.relay_once().await?;
    assert_eq!((report.sent, report.dead), (1, 1), "{report:?}");
    assert_eq!(admin.purge(None).await?, 1);
    assert_eq!(
        relay.relay_once().await?.sent,
        1,
        "then the fatal key's next message"
    );
    assert_eq!(count(&db, "state = 'pending'").await?, 0);
    let payloads: Vec<Vec<u8>> = sink
        .0
        .messages()
        .into_iter()
        .filter(|m| m.partition_key == "sick")
        .map(|m| m.payload)
        .collect();
    assert_eq!(payloads, [b"ok-1".to_vec(), b"ok-2".to_vec()]);
    Ok(())
}

#[tokio::test]
async fn cleanup_cut_off_slides() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    enqueue(
        &db,
        (0..5u8)
            .map(|i| NewMessage::new("orders", format!("key-{i}"), vec![i]))
            .collect(),
    )
    .await?;
    let relay = Relay::new(
        db.pool.clone(),
        InMemorySink::new(),
        fast().retention(Duration::from_secs(60)).cleanup_batch(1),
    )?;
    assert_eq!(relay.relay_once().await?.sent, 5);
    enqueue(&db, vec![NewMessage::new("orders", "late", b"x".to_vec())]).await?;
    let client = db.pool.get().await?;
    client
        .batch_execute(
            "UPDATE eventrail.outbox SET sent_at = now() - interval '90 seconds' WHERE state = 'sent' AND sequence <= 2;
             UPDATE eventrail.outbox SET sent_at = now() - interval '30 seconds' WHERE state = 'sent' AND sequence > 2;",
        )
        .await?;
    assert_eq!(
        relay.cleanup().await?,
        2,
        "older than the retention, in batches of one"
    );
    assert_eq!(count(&db, "state = 'sent'").await?, 3);
    // Forty seconds later (the rows age instead of the clock moving).
    client
        .batch_execute("UPDATE eventrail.outbox SET sent_at = sent_at - interval '40 seconds' WHERE state = 'sent'")
        .await?;
    assert_eq!(relay.cleanup().await?, 3, "the cut-off slid");
    assert_eq!(
        count(&db, "true").await?,
        1,
        "pending messages are never cleaned up"
    );
    Ok(())
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

#[tokio::test]
async fn shutdown_meets_its_deadline_and_hands_work_back() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    enqueue(
        &db,
        (0..5u8)
            .map(|i| NewMessage::new("orders", format!("key-{i}"), vec![i]))
            .collect(),
    )
    .await?;
    let started = Arc::new(AtomicUsize::new(0));
    let relay = start(Relay::new(
        db.pool.clone(),
        Hanging(Arc::clone(&started)),
        fast().shutdown_timeout(Duration::from_millis(200)),
    )?);
    eventually(10, "publishes in flight", || async {
        Ok(started.load(Ordering::SeqCst) == 5)
    })
    .await?;
    assert_eq!(count(&db, "lease_owner IS NOT NULL").await?, 5);
    relay.stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), relay.task)
        .await
        .map_err(|_| anyhow::anyhow!("the relay missed its shutdown deadline"))???;
    assert_eq!(
        count(
            &db,
            "state = 'pending' AND lease_owner IS NULL AND attempts = 0"
        )
        .await?,
        5,
        "handed back untried, leases released"
    );
    Ok(())
}

#[tokio::test]
async fn notify_wakes_an_idle_relay() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let sink = InMemorySink::new();
    // Polling every minute: only the NOTIFY hint can deliver within the test's deadline.
    let relay = start(
        Relay::new(
            db.pool.clone(),
            sink.clone(),
            fast()
                .wakeup(Wakeup::Notify)
                .poll_interval(Duration::from_secs(60)),
        )?
        .listen(db.config()),
    );
    for round in 0..3u8 {
        enqueue(&db, vec![NewMessage::new("orders", "k", vec![round])]).await?;
        let want = usize::from(round) + 1;
        let seen = sink.clone();
        eventually(10, "the hint woke the relay", || async {
            Ok(seen.len() == want)
        })
        .await?;
    }
    relay.stop().await?;
    Ok(())
}

/// A consumer: applies the message's effect only the first time, in the inbox's transaction.
async fn deliver(
    inbox: &Inbox,
    client: &mut deadpool_postgres::Object,
    id: Uuid,
    commit: bool,
) -> anyhow::Result<bool> {
    let tx = client.transaction().await?;
    let fresh = inbox.record(&tx, "billing", id).await?;
    if fresh {
        tx.execute("INSERT INTO effects VALUES (1)", &[]).await?;
    }
    if commit {
        tx.commit().await?;
    }
    Ok(fresh)
}

#[tokio::test]
async fn inbox_skips_a_redelivered_message() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let inbox = Inbox::new(&OutboxOptions::new())?;
    let mut client = db.pool.get().await?;
    client
        .batch_execute("CREATE TABLE effects (n integer NOT NULL)")
        .await?;
    let id = Uuid::now_v7();
    assert!(
        deliver(&inbox, &mut client, id, false).await?,
        "a rolled-back consumer did not record it"
    );
    assert!(
        deliver(&inbox, &mut client, id, true).await?,
        "first delivery"
    );
    assert!(
        !deliver(&inbox, &mut client, id, true).await?,
        "redelivery skipped"
    );
    let effects: i64 = client
        .query_one("SELECT count(*) FROM effects", &[])
        .await?
        .get(0);
    assert_eq!(effects, 1, "exactly-once effect");
    // Another consumer processes the same message on its own.
    let tx = client.transaction().await?;
    assert!(inbox.record(&tx, "shipping", id).await?);
    Ok(())
}

#[tokio::test]
async fn postgres_table_sink_delivers_once_per_id() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let sink = PgTableSink::new(db.pool.clone(), "public.delivered")?;
    sink.create_table().await?;
    let messages: Vec<NewMessage> = (0..20u8)
        .map(|i| {
            NewMessage::new("orders", format!("key-{}", i % 4), vec![i]).header("n", i.to_string())
        })
        .collect();
    let ids = enqueue(&db, messages.clone()).await?;
    relay_all(&db, sink.clone(), 20).await?;
    let client = db.pool.get().await?;
    let stored: Vec<Uuid> = client
        .query(
            "SELECT message_id FROM public.delivered ORDER BY sequence",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored, ids);
    // A redelivery is absorbed by the message id.
    sink.publish(&claimed(&messages[0], 1)).await?;
    let n: i64 = client
        .query_one("SELECT count(*) FROM public.delivered", &[])
        .await?
        .get(0);
    assert_eq!(n, 20);
    assert!(PgTableSink::new(db.pool.clone(), "bad name").is_err());
    Ok(())
}

/// NATS on this machine (or `NATS_URL`); the test fails when it is unreachable.
pub(crate) fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

#[tokio::test]
async fn nats_jetstream_sink_delivers_with_the_message_id_as_dedup_id() -> anyhow::Result<()> {
    use anyhow::Context;
    use eventrail_outbox::{NatsSink, PARTITION_KEY_HEADER};

    let db = TestDb::new().await?;
    let client = async_nats::connect(nats_url())
        .await
        .context("NATS JetStream must be running for this test")?;
    let sink = NatsSink::new(client);
    let name = format!("outbox_test_{}", Uuid::now_v7().simple());
    let stream = sink
        .jetstream()
        .create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            ..Default::default()
        })
        .await?;
    let sink = sink.subject_prefix(format!("{name}."));
    let messages: Vec<NewMessage> = (0..20u8)
        .map(|i| {
            NewMessage::new("orders", format!("key-{}", i % 3), vec![i]).header("n", i.to_string())
        })
        .collect();
    let ids = enqueue(&db, messages.clone()).await?;
    relay_all(&db, sink.clone(), 20).await?;
    // A republish (a crash before the mark) is dropped by JetStream's dedup on the id.
    sink.publish(&claimed(&messages[0], 1)).await?;
    let mut stream = stream;
    assert_eq!(
        stream.info().await?.state.messages,
        20,
        "deduplicated by Nats-Msg-Id"
    );
    // Every id once, with its headers, and each key in enqueue order.
    let mut seen = Vec::new();
    for seq in 1..=20u64 {
        let m = stream.get_raw_message(seq).await?;
        let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_owned());
        let id: Uuid = header("Nats-Msg-Id").context("Nats-Msg-Id")?.parse()?;
        let n: usize = header("n").context("header n")?.parse()?;
        assert_eq!(ids[n], id);
        assert_eq!(header(PARTITION_KEY_HEADER), Some(format!("key-{}", n % 3)));
        assert_eq!(m.subject.as_str(), format!("{name}.orders"));
        seen.push(n);
    }
    for key in 0..3 {
        let order: Vec<usize> = seen.iter().copied().filter(|n| n % 3 == key).collect();
        assert!(order.is_sorted(), "key-{key}: {order:?}");
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..20).collect::<Vec<_>>());
    sink.jetstream().delete_stream(&name).await?;
    Ok(())
}

/// RabbitMQ on this machine (or `AMQP_URL`); the test fails when it is unreachable.
pub(crate) fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

#[tokio::test]
async fn rabbitmq_sink_delivers_persistent_confirmed_messages_with_their_ids() -> anyhow::Result<()>
{
    use anyhow::Context;
    use eventrail_outbox::{AMQP_PARTITION_KEY_HEADER, AmqpSink};
    use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
    use lapin::types::{AMQPValue, FieldTable};

    let db = TestDb::new().await?;
    // The default exchange routes to the queue named by the routing key (the destination).
    let sink = AmqpSink::connect(&amqp_url(), "")
        .await
        .context("RabbitMQ must be running for this test")?;
    let queue = format!("outbox_test_{}", Uuid::now_v7().simple());
    sink.channel()
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await?;
    let ids = enqueue(
        &db,
        (0..12u8)
            .map(|i| {
                NewMessage::new(queue.clone(), format!("key-{}", i % 3), vec![i])
                    .header("n", i.to_string())
            })
            .collect(),
    )
    .await?;
    relay_all(&db, sink.clone(), 12).await?;
    let mut seen = Vec::new();
    while let Some(m) = sink
        .channel()
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await?
    {
        let p = &m.delivery.properties;
        assert_eq!(*p.delivery_mode(), Some(2), "persistent");
        let id: Uuid = p
            .message_id()
            .as_ref()
            .context("message_id")?
            .as_str()
            .parse()?;
        let n = m.delivery.data[0];
        assert_eq!(ids[usize::from(n)], id);
        let headers = p.headers().as_ref().context("headers")?.inner();
        let key = match headers.get(AMQP_PARTITION_KEY_HEADER) {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            other => anyhow::bail!("partition key header: {other:?}"),
        };
        assert_eq!(key, format!("key-{}", n % 3));
        seen.push(n);
    }
    for key in 0..3 {
        let order: Vec<u8> = seen.iter().copied().filter(|n| n % 3 == key).collect();
        assert!(order.is_sorted(), "key-{key}: {order:?}");
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..12).collect::<Vec<u8>>());

    // Mandatory: an unroutable message comes back and is not counted as sent.
    let lost = claimed(
        &NewMessage::new(format!("{queue}_nobody"), "k", vec![1]),
        99,
    );
    let returned = sink.publish(&lost).await;
    assert!(
        matches!(&returned, Err(e) if !e.is_permanent()),
        "{returned:?}"
    );
    sink.channel()
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    Ok(())
}

/// Runs `rabbitmqctl` (RabbitMQ's own admin tool, on this machine with the broker).
fn rabbitmqctl(args: &[&str]) -> anyhow::Result<String> {
    use anyhow::Context;
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .context("rabbitmqctl must be installed beside the broker for this test")?;
    anyhow::ensure!(out.status.success(), "rabbitmqctl {args:?}: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn rabbitmq_sink_connects_again_after_the_broker_dropped_its_connection() -> anyhow::Result<()>
{
    use anyhow::Context;
    use eventrail_outbox::AmqpSink;
    use lapin::ConnectionProperties;
    use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
    use lapin::types::FieldTable;

    // A unique connection name, to find this connection among the broker's.
    let name = format!("outbox_test_{}", Uuid::now_v7().simple());
    let properties = ConnectionProperties::default().with_connection_name(name.clone().into());
    let sink = AmqpSink::connect_with(&amqp_url(), properties, "")
        .await
        .context("RabbitMQ must be running for this test")?;
    sink.channel()
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let message = |n: u8| claimed(&NewMessage::new(name.clone(), "k", vec![n]), i64::from(n));
    sink.publish(&message(1)).await?;

    // The broker drops the connection (as on a broker restart or a network cut).
    let listed = tokio::task::spawn_blocking(|| {
        rabbitmqctl(&[
            "list_connections",
            "--quiet",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
    })
    .await??;
    let connection = listed
        .lines()
        .find(|line| line.contains(&name))
        .and_then(|line| line.split('\t').next())
        .with_context(|| format!("the sink's connection among {listed}"))?
        .to_owned();
    tokio::task::spawn_blocking(move || {
        rabbitmqctl(&["close_connection", &connection, "eventrail test"])
    })
    .await??;
    eventually(20, "the sink sees its connection closed", || async {
        Ok(!sink.channel().status().connected())
    })
    .await?;

    // The next publish connects again and goes through.
    sink.publish(&message(2)).await?;
    let channel = sink.channel();
    let mut got = Vec::new();
    while let Some(m) = channel
        .basic_get(name.as_str().into(), BasicGetOptions { no_ack: true })
        .await?
    {
        got.push(m.delivery.data[0]);
    }
    assert_eq!(got, [1, 2]);
    channel
        .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
        .await?;
    Ok(())
}

#[tokio::test]
async fn rabbitmq_sink_opens_a_new_channel_after_the_broker_closed_it() -> anyhow::Result<()> {
    use anyhow::Context;
    use eventrail_outbox::AmqpSink;
    use lapin::ExchangeKind;
    use lapin::options::{
        BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::FieldTable;

    let name = format!("outbox_test_{}", Uuid::now_v7().simple());
    // The exchange does not exist yet: RabbitMQ answers the publish by closing the channel.
    let sink = AmqpSink::connect(&amqp_url(), name.clone())
        .await
        .context("RabbitMQ must be running for this test")?;
    let message = |n: u8| claimed(&NewMessage::new("orders", "k", vec![n]), i64::from(n));
    let refused = sink.publish(&message(1)).await;
    assert!(
        matches!(&refused, Err(e) if !e.is_permanent()),
        "{refused:?}"
    );
    assert!(
        !sink.channel().status().connected(),
        "the broker closed the channel"
    );

    // An operator creates the exchange and a binding: the sink's next publish goes through.
    let admin = AmqpSink::connect(&amqp_url(), "").await?.channel();
    admin
        .exchange_declare(
            name.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    admin
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    admin
        .queue_bind(
            name.as_str().into(),
            name.as_str().into(),
            "orders".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    sink.publish(&message(2)).await?;
    assert!(sink.channel().status().connected());
    let got = admin
        .basic_get(name.as_str().into(), BasicGetOptions { no_ack: true })
        .await?
        .context("the message published on the new channel")?;
    assert_eq!(got.delivery.data, [2]);
    admin
        .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
        .await?;
    admin
        .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
        .await?;
    Ok(())
}

#[tokio::test]
async fn retries_back_off_exponentially_on_the_database_clock() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let sink = Flaky::new(0);
    sink.down.store(true, Ordering::SeqCst);
    enqueue(&db, vec![NewMessage::new("orders", "k", b"x".to_vec())]).await?;
    let relay = Relay::new(
        db.pool.clone(),
        sink,
        fast().retry(RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(30),
        }),
    )?;
    let client = db.pool.get().await?;
    let delay = || async {
        let row = client
            .query_one(
                "SELECT extract(epoch FROM next_attempt_at - now())::float8, attempts FROM eventrail.outbox",
                &[],
            )
            .await?;
        anyhow::Ok((row.get::<_, f64>(0), row.get::<_, i32>(1)))
    };
    // Each failure waits initial * 2^(attempts - 1), capped, jittered to [1/2, 1] of it.
    for (attempt, (low, high)) in [(5.0, 10.0), (10.0, 20.0), (15.0, 30.0), (15.0, 30.0)]
        .into_iter()
        .enumerate()
    {
        let report = relay.relay_once().await?;
        assert_eq!((report.claimed, report.retried), (1, 1), "{report:?}");
        let (wait, attempts) = delay().await?;
        assert_eq!(attempts, i32::try_from(attempt)? + 1);
        assert!(
            wait > low - 1.0 && wait <= high,
            "attempt {attempts}: {wait}"
        );
        assert_eq!(relay.relay_once().await?.claimed, 0, "not due yet");
        // Time passes on the database clock.
        client
            .batch_execute("UPDATE eventrail.outbox SET next_attempt_at = now()")
            .await?;
    }
    Ok(())
}

/// A producer's committed and rolled-back message ids.
type Produced = anyhow::Result<(Vec<Uuid>, Vec<Uuid>)>;

/// Many producers (some rolling back) and three relays, one of them killed mid-batch and
/// replaced: every committed message is delivered, nothing rolled back is, duplicates come only
/// from the killed relay's unmarked batch, and each key's first deliveries are in order.
#[tokio::test]
async fn torture_producers_rollbacks_and_a_killed_relay_lose_nothing() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let sink = InMemorySink::new();
    let options = fast()
        .lease(Duration::from_millis(300))
        .batch_size(30)
        .max_per_key(4);
    let mut relays: Vec<Running> = (0..3)
        .map(|_| {
            Ok(start(Relay::new(
                db.pool.clone(),
                sink.clone(),
                options.clone(),
            )?))
        })
        .collect::<anyhow::Result<_>>()?;
    let producers: Vec<JoinHandle<Produced>> = (0..6)
        .map(|p: usize| {
            let pool = db.pool.clone();
            tokio::spawn(async move {
                let outbox = Outbox::new(&OutboxOptions::new())?;
                let (mut committed, mut rolled_back) = (Vec::new(), Vec::new());
                for batch in 0..20usize {
                    let mut client = pool.get().await?;
                    let tx = client.transaction().await?;
                    let messages = (0..8)
                        .map(|i| {
                            NewMessage::new(
                                "orders",
                                format!("key-{}", (p + batch + i) % 12),
                                vec![0],
                            )
                        })
                        .collect();
                    let ids = outbox.enqueue_batch(&tx, messages).await?;
                    if (p + batch).is_multiple_of(4) {
                        tx.rollback().await?;
                        rolled_back.extend(ids);
                    } else {
                        tx.commit().await?;
                        committed.extend(ids);
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
    relays.push(start(Relay::new(db.pool.clone(), sink.clone(), options)?));

    let (mut committed, mut rolled_back) = (HashSet::new(), HashSet::new());
    for p in producers {
        let (c, r) = p.await??;
        committed.extend(c);
        rolled_back.extend(r);
    }
    let expected = i64::try_from(committed.len())?;
    eventually(60, "every committed message sent", || async {
        Ok(count(&db, "state = 'sent'").await? == expected)
    })
    .await?;
    for r in relays {
        r.stop().await?;
    }
    assert_eq!(
        count(&db, "true").await?,
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

/// Holds its first publish until `open` is cancelled; every other publish goes straight through.
#[derive(Clone, Default)]
pub(crate) struct Gated {
    pub(crate) inner: InMemorySink,
    pub(crate) open: CancellationToken,
    pub(crate) calls: Arc<AtomicUsize>,
}

impl Sink for Gated {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            self.open.cancelled().await;
        }
        self.inner.publish(message).await
    }
}

/// Seconds the database clock is past `at`.
async fn seconds_past(db: &TestDb, at: std::time::SystemTime) -> anyhow::Result<f64> {
    let client = db.pool.get().await?;
    Ok(client
        .query_one("SELECT extract(epoch FROM now() - $1)::float8", &[&at])
        .await?
        .get(0))
}

/// The lease expiry of the one key held.
async fn lease_expiry(db: &TestDb) -> anyhow::Result<std::time::SystemTime> {
    let client = db.pool.get().await?;
    Ok(client
        .query_one(
            "SELECT lease_expires_at FROM eventrail.outbox WHERE lease_owner IS NOT NULL",
            &[],
        )
        .await?
        .get(0))
}

#[tokio::test]
async fn a_batch_slower_than_its_lease_keeps_its_keys_by_renewing() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let ids = enqueue(
        &db,
        (0..3u8)
            .map(|i| NewMessage::new("orders", "slow", vec![i]))
            .collect(),
    )
    .await?;
    let sink = Gated::default();
    // Renewals every 2/3 s leave 1.3 s of slack before the lease would lapse: enough for a
    // loaded CI machine, and the publish still outlasts three lease periods.
    let options = fast().lease(Duration::from_secs(2));
    let first = start(Relay::new(db.pool.clone(), sink.clone(), options.clone())?);
    eventually(10, "the first publish under way", || async {
        Ok(sink.calls.load(Ordering::SeqCst) == 1)
    })
    .await?;
    let claimed_until = lease_expiry(&db).await?;
    // A second relay looks every 20 ms while the first publish outlasts three lease periods.
    let second = start(Relay::new(db.pool.clone(), sink.clone(), options)?);
    eventually(20, "three lease periods past the claim's lease", || async {
        Ok(seconds_past(&db, claimed_until).await? > 6.0)
    })
    .await?;
    assert_eq!(sink.calls.load(Ordering::SeqCst), 1, "the key stayed held");
    assert!(
        lease_expiry(&db).await? > claimed_until,
        "the lease was renewed"
    );
    sink.open.cancel();
    eventually(10, "every message sent", || async {
        Ok(count(&db, "state = 'sent'").await? == 3)
    })
    .await?;
    first.stop().await?;
    second.stop().await?;
    let delivered = sink.inner.messages();
    let times = check_order(&delivered);
    assert!(ids.iter().all(|id| times.get(id) == Some(&1)), "{times:?}");
    assert_eq!(delivered.len(), 3, "nothing delivered twice");
    assert_eq!(count(&db, "attempts = 1").await?, 3);
    Ok(())
}

#[tokio::test]
async fn a_relay_that_lost_its_lease_stops_publishing_the_key() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let ids = enqueue(
        &db,
        (0..3u8)
            .map(|i| NewMessage::new("orders", "taken", vec![i]))
            .collect(),
    )
    .await?;
    let sink = Gated::default();
    let relay = start(Relay::new(
        db.pool.clone(),
        sink.clone(),
        fast().lease(Duration::from_secs(3)),
    )?);
    eventually(10, "the first publish under way", || async {
        Ok(sink.calls.load(Ordering::SeqCst) == 1)
    })
    .await?;
    // Another relay takes the key over (as after a lapsed lease).
    let thief = Uuid::now_v7();
    let client = db.pool.get().await?;
    let taken_at: std::time::SystemTime = client
        .query_one(
            "UPDATE eventrail.outbox SET lease_owner = $1, lease_expires_at = now() + interval '1 hour'
             WHERE lease_owner IS NOT NULL RETURNING now()",
            &[&thief],
        )
        .await?
        .get(0);
    // Renewals run every second (a third of the lease): two have come and seen the loss 2.5 s
    // later, while the relay's own lease (3 s from the claim) would still let it publish. (On a
    // machine so loaded that the takeover came late, the lapsing lease stops the key too.)
    eventually(10, "renewals past the takeover", || async {
        Ok(seconds_past(&db, taken_at).await? > 2.5)
    })
    .await?;
    sink.open.cancel();
    relay.stop().await?;
    let delivered: Vec<Uuid> = sink.inner.messages().iter().map(|m| m.id).collect();
    assert_eq!(delivered, [ids[0]], "only the publish under way completed");
    let held: i64 = client
        .query_one(
            "SELECT count(*) FROM eventrail.outbox WHERE state = 'pending' AND lease_owner = $1",
            &[&thief],
        )
        .await?
        .get(0);
    assert_eq!(held, 1, "the settle left the new holder's key alone");
    assert_eq!(count(&db, "state = 'pending'").await?, 3);
    Ok(())
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

#[tokio::test]
async fn pipelined_claims_never_put_a_key_in_flight_twice() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
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
        .map(|s| Ok(start(Relay::new(db.pool.clone(), s, options.clone())?)))
        .collect::<anyhow::Result<_>>()?;
    eventually(60, "every message sent", || async {
        Ok(count(&db, "state = 'sent'").await? == 400)
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

#[tokio::test]
async fn keys_settle_as_their_runs_finish_not_with_the_slowest_key() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let mut messages = vec![NewMessage::new("orders", "slow", b"held".to_vec())];
    messages.extend((0..10u8).map(|i| NewMessage::new("orders", format!("key-{i}"), vec![i])));
    enqueue(&db, messages).await?;
    // One claim takes all eleven keys; the slow key's publish is the first and is held.
    let sink = Gated::default();
    let relay = start(Relay::new(db.pool.clone(), sink.clone(), fast())?);
    eventually(
        10,
        "the other keys sent while the slow one publishes",
        || async { Ok(count(&db, "state = 'sent'").await? == 10) },
    )
    .await?;
    assert_eq!(
        count(&db, "state = 'pending' AND lease_owner IS NOT NULL").await?,
        1,
        "the slow key is still held"
    );
    sink.open.cancel();
    eventually(10, "the slow key sent", || async {
        Ok(count(&db, "state = 'sent'").await? == 11)
    })
    .await?;
    relay.stop().await?;
    assert_eq!(sink.inner.len(), 11);
    Ok(())
}
