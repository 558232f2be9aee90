//! The transactional outbox against PostgreSQL only (and the brokers): enqueue with the store's
//! append, NOTIFY wakeups, poison messages and the admin, the inbox and the sinks. The relay's
//! cases that hold on every database (crashes, outages, per-key order, leases, retries, cleanup,
//! shutdown) are in `outbox_backends.rs`, run on PostgreSQL and MySQL.

use std::collections::HashMap;
use std::time::Duration;

use eventrail_core::{AppendRequest, ExpectedVersion, NewEvent, StreamName};
use eventrail_outbox::{
    DestinationBackoff, InMemorySink, Inbox, NewMessage, Outbox, OutboxAdmin, OutboxError,
    OutboxMessage, OutboxOptions, PgTableSink, Relay, RetryPolicy, Sink, SinkError, Wakeup,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use integration_tests::OUTBOX_MESSAGES;

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
            &format!("SELECT count(*) FROM {OUTBOX_MESSAGES} WHERE {condition}"),
            &[],
        )
        .await?
        .get(0))
}

/// `rounds` messages to "orders" for each of `keys` keys (`key-0`, …), one round after the other:
/// round `r`'s payload is `[r]`.
fn rounds(rounds: u8, keys: usize) -> Vec<NewMessage> {
    (0..rounds)
        .flat_map(|round| {
            (0..keys).map(move |key| NewMessage::new("orders", format!("key-{key}"), vec![round]))
        })
        .collect()
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
            &format!("SELECT attempts, state FROM {OUTBOX_MESSAGES} WHERE message_id = $1"),
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
            &format!("SELECT attempts, state FROM {OUTBOX_MESSAGES} WHERE message_id = $1"),
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

/// A relay that sent a key's full run claims that key again by name: it does not walk every
/// key's head for it. 500 idle keys (their destination backed off for an hour) sit beside one
/// busy key of 400 messages, claimed 4 at a time: walking every head for each of the 100 runs
/// would descend the (partition_key, sequence) index 100 × 501 times.
#[tokio::test]
async fn a_relay_follows_up_its_busy_key_without_walking_every_head() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let descents = relay_a_busy_key_beside_idle_ones(&db, 400, false).await?;
    assert_few_walks(descents, 501);
    Ok(())
}

/// The same under a stream of enqueue hints: a relay following its busy key does not walk
/// every key's head at each hint (at most every quarter of the poll interval).
#[tokio::test]
async fn hints_do_not_make_a_following_relay_walk_every_head() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let descents = relay_a_busy_key_beside_idle_ones(&db, 800, true).await?;
    assert_few_walks(descents, 501);
    Ok(())
}

/// A claim of due keys walks the keys least sent first and stops once it has the heads it
/// wants: it does not look up every key's head to pick the oldest. 500 keys of 2 messages,
/// claimed 10 heads at a time by single cycles (each a walk of due keys): a walk of every head
/// would descend the (partition_key, sequence) index 500 times per claim.
#[tokio::test]
async fn a_walk_of_due_keys_stops_at_the_heads_it_claims() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    enqueue(&db, rounds(2, 500)).await?;
    let sink = InMemorySink::new();
    let claims = i64::try_from(cycles_until_empty(&db, "walking-relay", sink.clone(), 200).await?)?;
    let times = check_order(&sink.messages());
    assert!(times.len() == 1000 && times.values().all(|&n| n == 1));
    let descents = key_index_descents(&db, "walking-relay").await?;
    eprintln!("{descents} descents of the key index in {claims} claims");
    assert!(
        descents > 0 && descents < 50 * claims,
        "{descents} descents of the key index in {claims} claims: the walks looked up every key's head"
    );
    Ok(())
}

/// Single cycles of a relay on sessions named `application`, claiming 10 heads of one message
/// each, until a cycle claims nothing; returns how many claimed (at most `max_claims`). The
/// relay's sessions are closed when it returns.
async fn cycles_until_empty(
    db: &TestDb,
    application: &str,
    sink: InMemorySink,
    max_claims: usize,
) -> anyhow::Result<usize> {
    let mut config = db.config();
    config.application_name(application);
    let relay = Relay::connect(&config.into(), sink, fast().batch_size(10).max_per_key(1))?;
    let mut claims = 0;
    while relay.relay_once().await?.claimed > 0 {
        claims += 1;
        anyhow::ensure!(claims <= max_claims, "more than {max_claims} claims");
    }
    Ok(claims)
}

/// A sink whose publishes never return: the claims of its relay stay in flight.
struct Stuck;

impl Sink for Stuck {
    async fn publish(&self, _: &OutboxMessage) -> Result<(), SinkError> {
        std::future::pending().await
    }
}

/// A walk of due keys passes the keys another relay holds by their rows alone (the hint its
/// claim left there), without looking up their heads. A relay stuck publishing holds 200 keys
/// (leased for an hour, the least sent ones); another claims the 100 others' 2 messages each,
/// 10 at a time, each claim a walk that meets the 200 held keys first.
#[tokio::test]
async fn a_walk_passes_the_keys_in_flight_without_looking_up_their_heads() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let messages = (0..300)
        .chain(200..300)
        .map(|key| NewMessage::new("orders", format!("key-{key}"), vec![1]))
        .collect();
    enqueue(&db, messages).await?;
    let mut config = db.config();
    config.application_name("stuck-relay");
    let options = fast()
        .batch_size(200)
        .max_per_key(1)
        .lease(Duration::from_secs(3600));
    let stuck = Relay::connect(&config.into(), Stuck, options)?;
    let holding = tokio::spawn(async move { stuck.relay_once().await });
    eventually(20, "the stuck relay holds 200 keys", || async {
        Ok(count(&db, "lease_owner IS NOT NULL").await? == 200)
    })
    .await?;
    holding.abort();
    let _ = holding.await;
    let before = key_index_descents(&db, "stuck-relay").await?;

    let sink = InMemorySink::new();
    let claims = i64::try_from(cycles_until_empty(&db, "passing-relay", sink.clone(), 40).await?)?;
    let times = check_order(&sink.messages());
    assert!(
        times.len() == 200 && times.values().all(|&n| n == 1),
        "the keys not held were each sent once, the held ones not at all"
    );
    let descents = key_index_descents(&db, "passing-relay").await? - before;
    eprintln!("{descents} descents of the key index in {claims} claims");
    assert!(
        descents > 0 && descents < 50 * claims,
        "{descents} descents of the key index in {claims} claims: the walks looked up the heads of the 200 keys in flight"
    );
    Ok(())
}

/// A relay whose settles failed releases its leases when it stops, and the claim hints on its
/// keys' rows with them: another relay's walk claims those keys at once, not after the lease.
/// The settles fail on a trigger that refuses any move of a key's progress.
#[tokio::test]
async fn a_relay_that_could_not_settle_releases_its_keys_when_it_stops() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    enqueue(&db, rounds(1, 5)).await?;
    let client = db.pool.get().await?;
    client
        .batch_execute(
            "CREATE FUNCTION refuse_progress() RETURNS trigger LANGUAGE plpgsql
                 AS $$ BEGIN RAISE EXCEPTION 'progress refused'; END $$;
             CREATE TRIGGER refuse_progress BEFORE UPDATE OF sent_through ON eventrail.outbox_keys
                 FOR EACH ROW EXECUTE FUNCTION refuse_progress();",
        )
        .await?;
    let sink = InMemorySink::new();
    let relay = start(Relay::new(db.pool.clone(), sink.clone(), fast())?);
    let seen = sink.clone();
    eventually(20, "the relay published the 5 messages", || async {
        Ok(seen.len() == 5)
    })
    .await?;
    relay.stop().await?;
    assert_eq!(
        count(&db, "state = 'pending' AND lease_owner IS NULL").await?,
        5,
        "not settled, released at the stop"
    );
    client
        .batch_execute("DROP TRIGGER refuse_progress ON eventrail.outbox_keys")
        .await?;
    let report = Relay::new(db.pool.clone(), InMemorySink::new(), fast())?
        .relay_once()
        .await?;
    assert_eq!(report.sent, 5, "the released keys are claimed at once");
    Ok(())
}

/// How often the outbox's (partition_key, sequence) index was descended, once the sessions named
/// `application` are gone.
async fn key_index_descents(db: &TestDb, application: &str) -> anyhow::Result<i64> {
    Ok(outbox_index_stats(db, application)
        .await?
        .iter()
        .filter(|(name, _)| name.contains("partition_key"))
        .map(|(_, (scans, _))| scans)
        .sum())
}

/// A few walks (the first claim, and once the busy key is drained), not one per run.
fn assert_few_walks(descents: i64, walk: i64) {
    eprintln!("{descents} descents of the key index (a walk costs {walk})");
    assert!(
        descents > 0 && descents < 5 * walk,
        "{descents} descents of the key index: a walk of every head costs {walk}"
    );
}

/// Relays `backlog` messages of one busy key, 4 at a time, beside 500 idle keys (their
/// destination backed off), with LISTEN hints (and, with `hints`, more messages of the busy key
/// enqueued one per transaction meanwhile: a hint each); returns how often the relay descended
/// the (partition_key, sequence) index.
async fn relay_a_busy_key_beside_idle_ones(
    db: &TestDb,
    backlog: u32,
    hints: bool,
) -> anyhow::Result<i64> {
    let busy = |i: u32| NewMessage::new("up", "busy", i.to_be_bytes().to_vec());
    let idle: Vec<NewMessage> = (0..500)
        .map(|i| NewMessage::new("down", format!("idle-{i}"), vec![1]))
        .collect();
    enqueue(db, idle).await?;
    enqueue(db, (0..backlog).map(busy).collect()).await?;
    db.pool
        .get()
        .await?
        .execute(
            "INSERT INTO eventrail.outbox_destinations (destination, reason, next_attempt_at, last_error)
             VALUES ('down', 'unavailable', now() + interval '1 hour', 'down for the test')",
            &[],
        )
        .await?;
    let mut config = db.config();
    config.application_name("following-relay");
    let sink = InMemorySink::new();
    // One claim of one run at a time; no poll-driven walk during the test.
    let options = fast()
        .wakeup(Wakeup::Notify)
        .poll_interval(Duration::from_secs(60))
        .batch_size(4)
        .max_per_key(4)
        .claims_in_flight(1);
    let relay = start(Relay::connect(&config.into(), sink.clone(), options)?);
    // With hints: once the relay publishes, one message per transaction (5 ms apart) until it
    // has published half the backlog, so that every hint reaches a relay busy following.
    let mut extra = 0;
    if hints {
        eventually(20, "the relay publishes", || async { Ok(!sink.is_empty()) }).await?;
        while sink.len() < usize::try_from(backlog / 2)? {
            enqueue(db, vec![busy(backlog + extra)]).await?;
            extra += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(extra > 10, "only {extra} hints were sent");
    }
    let total = i64::from(backlog + extra);
    eventually(30, "the busy key is sent", || async {
        Ok(count(db, "state = 'sent'").await? == total)
    })
    .await?;
    relay.stop().await?;
    let delivered = sink.messages();
    let times = check_order(&delivered);
    assert_eq!(
        times.len(),
        usize::try_from(total)?,
        "no idle key was published"
    );
    assert!(times.values().all(|&n| n == 1));
    let stats = outbox_index_stats(db, "following-relay").await?;
    Ok(stats
        .iter()
        .filter(|(name, _)| name.contains("partition_key"))
        .map(|(_, (scans, _))| scans)
        .sum())
}

/// Per index of the outbox: (scans, index entries read), once the sessions named
/// `application` are gone (a backend flushes its statistics when it exits, before it leaves
/// pg_stat_activity).
async fn outbox_index_stats(
    db: &TestDb,
    application: &str,
) -> anyhow::Result<HashMap<String, (i64, i64)>> {
    let client = db.client().await?;
    eventually(20, "the relay's sessions closed", || async {
        let open: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&application],
            )
            .await?
            .get(0);
        Ok(open == 0)
    })
    .await?;
    Ok(client
        .query(
            "SELECT indexrelname::text, idx_scan, idx_tup_read FROM pg_stat_user_indexes
             WHERE schemaname = 'eventrail' AND relname = 'outbox'",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

/// On an outbox never analyzed (autovacuum off on it and its keys table: their statistics stay
/// those of empty tables),
/// claims still look each key's head up by its sequence: they do not read every pending row
/// for each claim. 50 keys of 40 messages, claimed 4 per key and 40 at a time, walking every
/// head at each claim (the 20 ms poll).
#[tokio::test]
async fn claims_on_an_outbox_never_analyzed_read_heads_not_the_backlog() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    db.pool
        .get()
        .await?
        .batch_execute(
            "ALTER TABLE eventrail.outbox SET (autovacuum_enabled = false);
             ALTER TABLE eventrail.outbox_keys SET (autovacuum_enabled = false)",
        )
        .await?;
    enqueue(&db, rounds(40, 50)).await?;
    let mut config = db.config();
    config.application_name("unanalyzed-relay");
    let sink = InMemorySink::new();
    let options = fast().batch_size(40).max_per_key(4).claims_in_flight(1);
    let relay = start(Relay::connect(&config.into(), sink.clone(), options)?);
    eventually(30, "everything is sent", || async {
        Ok(count(&db, "state = 'sent'").await? == 2000)
    })
    .await?;
    relay.stop().await?;
    let times = check_order(&sink.messages());
    assert!(times.len() == 2000 && times.values().all(|&n| n == 1));
    let stats = outbox_index_stats(&db, "unanalyzed-relay").await?;
    let read: i64 = stats
        .iter()
        .filter(|(name, _)| !name.contains("partition_key"))
        .map(|(_, (_, read))| read)
        .sum();
    eprintln!("index entries read outside the key index: {read} ({stats:?})");
    assert!(
        read > 0 && read < 20_000,
        "{read} index entries read for 2000 messages: claims read the backlog ({stats:?})"
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

/// Once PostgreSQL plans the relay's prepared statements generically (after five executions,
/// when the generic plan looks no dearer), it estimates every array parameter at a few rows: a
/// join between two of a claim's intermediate results then becomes a nested loop over every
/// pair. On a cluster of its own, with generic plans forced and every plan of the relay's
/// sessions logged with its row counts by `auto_explain`: the relay's joins filter out at most a
/// few rows per message, not the product of a claim's rows and its keys.
#[tokio::test]
async fn relay_statements_planned_generically_never_compare_every_row_with_every_key()
-> anyhow::Result<()> {
    let cluster = integration_tests::servers::Cluster::start(None).await?;
    let db = TestDb::on(&cluster.admin_url).await?;
    enqueue(&db, rounds(20, 100)).await?;
    db.log_generic_plans().await?;
    let sink = InMemorySink::new();
    // Claims of 500 messages: whole runs of 25 keys, their heads leased in the same statement.
    let options = fast().batch_size(500).max_per_key(20).claims_in_flight(1);
    let relay = start(Relay::connect(&db.config().into(), sink.clone(), options)?);
    eventually(60, "everything is sent", || async {
        Ok(count(&db, "state = 'sent'").await? == 2000)
    })
    .await?;
    relay.stop().await?;
    let times = check_order(&sink.messages());
    assert!(times.len() == 2000 && times.values().all(|&n| n == 1));

    let log = std::fs::read_to_string(cluster.data().join("server.log"))?;
    let claims = log.matches("WITH runs AS").count();
    assert!(claims > 0, "the claims' plans were logged");
    let removed = crate::harness::join_filter_rows(&log)?;
    assert!(
        removed < 2_000,
        "{removed} rows removed by join filters in {claims} claims of 2000 messages"
    );
    Ok(())
}
