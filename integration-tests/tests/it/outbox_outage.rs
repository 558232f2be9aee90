//! Broker outages and the classification of publish failures: a destination that is down is
//! backed off as a whole without spending its messages' attempts; only failures attributable to
//! a message count against it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use eventrail_outbox::{
    DestinationBackoff, FailureClass, InMemorySink, NatsSink, NewMessage, OutboxAdmin,
    OutboxMessage, OutboxOptions, OutboxStatus, Relay, RetryPolicy, Sink, SinkError, Wakeup,
};
use uuid::Uuid;

use integration_tests::servers::NatsServer;

use crate::harness::{TestDb, eventually};
use crate::outbox::{claimed, count, enqueue, start};

/// Few attempts and short backoffs: an outage of a few seconds outlasts them all.
fn few_attempts() -> OutboxOptions {
    OutboxOptions::new()
        .poll_interval(Duration::from_millis(20))
        .wakeup(Wakeup::Poll)
        .retry(RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
        })
        .destination_backoff(DestinationBackoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        })
}

async fn status(db: &TestDb) -> anyhow::Result<OutboxStatus> {
    Ok(OutboxAdmin::new(db.pool.clone(), &OutboxOptions::new())?
        .status()
        .await?)
}

#[tokio::test]
async fn a_nats_outage_longer_than_the_retries_dead_letters_nothing() -> anyhow::Result<()> {
    const KEYS: usize = 4;
    const PER_KEY: usize = 5;
    let db = TestDb::new().await?;
    let mut server = NatsServer::start().await?;
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(server.url())
        .await?;
    // A short ack timeout: while the client is disconnected, a publish waits for it.
    let mut context = async_nats::jetstream::new(client.clone());
    context.set_timeout(Duration::from_secs(1));
    let sink = NatsSink::with_context(context);
    sink.jetstream()
        .create_stream(async_nats::jetstream::stream::Config {
            name: "outage".into(),
            subjects: vec!["outage.>".into()],
            ..Default::default()
        })
        .await?;
    let sink = sink.subject_prefix("outage.");
    let message = |key: usize, n: usize| {
        NewMessage::new(
            "orders",
            format!("key-{key}"),
            vec![u8::try_from(n).unwrap_or(0)],
        )
    };
    // Healthy first: one message per key goes through.
    let mut ids = enqueue(&db, (0..KEYS).map(|k| message(k, 0)).collect()).await?;
    let relay = start(Relay::new(db.pool.clone(), sink.clone(), few_attempts())?);
    eventually(30, "the first messages sent", || async {
        Ok(count(&db, "state = 'sent'").await? == KEYS as i64)
    })
    .await?;

    server.kill()?;
    ids.extend(
        enqueue(
            &db,
            (1..PER_KEY)
                .flat_map(|n| (0..KEYS).map(move |k| message(k, n)))
                .collect(),
        )
        .await?,
    );
    // The outage lasts longer than max_attempts tries: the destination is probed more often
    // than that, and no message spends an attempt on it.
    eventually(
        120,
        "the destination backed off and probed past max_attempts",
        || async {
            Ok(status(&db)
                .await?
                .backed_off
                .iter()
                .any(|d| d.destination == "orders" && d.failures > 3))
        },
    )
    .await?;
    let during = status(&db).await?;
    let orders = &during.backed_off[0];
    assert_eq!(
        orders.class,
        FailureClass::DestinationUnavailable,
        "{orders:?}"
    );
    assert!(orders.last_error.contains("timed out"), "{orders:?}");
    assert!(orders.since < orders.next_attempt_at, "{orders:?}");
    assert_eq!(orders.pending, ((PER_KEY - 1) * KEYS) as u64, "{orders:?}");
    let out = crate::cli::eventrail(&["outbox", "status", "--database-url", &db.url]).await?;
    assert!(
        out.contains("destinations backed off") && out.contains("unavailable"),
        "{out}"
    );
    assert_eq!(count(&db, "state = 'dead'").await?, 0, "no message dead");
    assert_eq!(
        count(
            &db,
            "attempts > 0 AND state = 'pending' AND lease_owner IS NULL"
        )
        .await?,
        0,
        "no attempt spent (a probe in flight holds its lease)"
    );

    server.restart().await?;
    eventually(120, "everything delivered after the restart", || async {
        Ok(count(&db, "state = 'sent'").await? == (KEYS * PER_KEY) as i64)
    })
    .await?;
    relay.stop().await?;
    assert!(status(&db).await?.backed_off.is_empty(), "healthy again");
    assert_eq!(count(&db, "attempts > 1").await?, 0, "one attempt each");

    // Once each (JetStream drops a republished id), and each key in enqueue order.
    let mut stream = sink.jetstream().get_stream("outage").await?;
    let total = stream.info().await?.state.messages;
    assert_eq!(total, (KEYS * PER_KEY) as u64, "each message stored once");
    let mut per_key: HashMap<String, Vec<u8>> = HashMap::new();
    let mut seen = Vec::new();
    for seq in 1..=total {
        let m = stream.get_raw_message(seq).await?;
        let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_owned());
        let id: Uuid = header("Nats-Msg-Id").context("Nats-Msg-Id")?.parse()?;
        let key = header(eventrail_outbox::PARTITION_KEY_HEADER).context("key")?;
        per_key.entry(key).or_default().push(m.payload[0]);
        seen.push(id);
    }
    for (key, order) in &per_key {
        assert_eq!(
            order,
            &(0..PER_KEY).map(|n| n as u8).collect::<Vec<_>>(),
            "{key}"
        );
    }
    seen.sort_unstable();
    ids.sort_unstable();
    assert_eq!(seen, ids);
    Ok(())
}

#[tokio::test]
async fn a_message_over_the_nats_max_payload_goes_dead_at_once() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let client = async_nats::connect(crate::outbox::nats_url())
        .await
        .context("NATS JetStream must be running for this test")?;
    let max_payload = client.server_info().max_payload;
    let sink = NatsSink::new(client);
    let name = format!("outbox_test_{}", Uuid::now_v7().simple());
    sink.jetstream()
        .create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            ..Default::default()
        })
        .await?;
    let sink = sink.subject_prefix(format!("{name}."));
    let mut messages = vec![NewMessage::new("orders", "big", vec![7; max_payload + 1])];
    messages.extend((0..9u8).map(|i| NewMessage::new("orders", format!("key-{}", i % 3), vec![i])));
    enqueue(&db, messages).await?;
    let options = OutboxOptions::new()
        .poll_interval(Duration::from_millis(20))
        .wakeup(Wakeup::Poll)
        .retry(RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(300),
            max_backoff: Duration::from_secs(2),
        });
    let relay = start(Relay::new(db.pool.clone(), sink.clone(), options)?);
    eventually(60, "the others sent and the big one dead", || async {
        Ok(count(&db, "state = 'sent'").await? == 9 && count(&db, "state = 'dead'").await? == 1)
    })
    .await?;
    relay.stop().await?;
    assert_eq!(
        count(
            &db,
            "state = 'dead' AND partition_key = 'big' AND attempts = 1"
        )
        .await?,
        1,
        "dead after its first attempt, not retried"
    );
    sink.jetstream().delete_stream(&name).await?;
    Ok(())
}

/// Forwards TCP connections to `target` until dropped; then its port refuses connections.
struct Forwarder {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn to(target: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let target = target.to_owned();
        let task = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                links.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(Self { port, task })
    }

    /// Closes the listener and every forwarded connection.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

#[tokio::test]
async fn rabbitmq_missing_exchange_and_refused_connection_are_classified_apart()
-> anyhow::Result<()> {
    use eventrail_outbox::AmqpSink;

    let message = || claimed(&NewMessage::new("orders", "k", vec![1]), 1);
    // The exchange does not exist: the broker is up and refuses this destination.
    let name = format!("outbox_test_{}", Uuid::now_v7().simple());
    let missing = AmqpSink::connect(&crate::outbox::amqp_url(), name)
        .await
        .context("RabbitMQ must be running for this test")?
        .publish(&message())
        .await
        .err()
        .context("a publish to a missing exchange fails")?;
    // The broker's port refuses connections: the sink's connection is gone and reconnecting
    // is refused.
    let forwarder = Forwarder::to("127.0.0.1:5672").await?;
    let sink = AmqpSink::connect(
        &format!("amqp://guest:guest@127.0.0.1:{}/%2f", forwarder.port),
        "",
    )
    .await?;
    forwarder.stop().await;
    eventually(30, "the sink's connection lost", || async {
        Ok(!sink.channel().status().connected())
    })
    .await?;
    let refused = sink
        .publish(&message())
        .await
        .err()
        .context("a publish with the broker unreachable fails")?;
    assert_ne!(
        std::mem::discriminant(&missing),
        std::mem::discriminant(&refused),
        "missing exchange {missing:?} vs refused connection {refused:?}"
    );
    assert_eq!(
        missing.class(),
        FailureClass::DestinationMissing,
        "{missing:?}"
    );
    assert_eq!(
        refused.class(),
        FailureClass::DestinationUnavailable,
        "{refused:?}"
    );
    Ok(())
}

/// A sink whose destination can be switched down; counts its publishes.
#[derive(Clone, Default)]
pub(crate) struct Switch {
    pub(crate) inner: InMemorySink,
    pub(crate) down: Arc<AtomicBool>,
    pub(crate) calls: Arc<AtomicUsize>,
}

impl Sink for Switch {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(SinkError::unavailable("connection refused"));
        }
        self.inner.publish(message).await
    }
}

async fn destination_failures(db: &TestDb) -> anyhow::Result<Option<i32>> {
    Ok(db
        .pool
        .get()
        .await?
        .query_opt(
            "SELECT failures FROM eventrail.outbox_destinations WHERE destination = 'orders'",
            &[],
        )
        .await?
        .map(|r| r.get(0)))
}

/// Ends the backoff of `orders` now, as if its time had come.
async fn end_backoff(db: &TestDb) -> anyhow::Result<()> {
    db.pool
        .get()
        .await?
        .execute(
            "UPDATE eventrail.outbox_destinations SET next_attempt_at = now() WHERE destination = 'orders'",
            &[],
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_backed_off_destination_is_left_alone_then_probed_once() -> anyhow::Result<()> {
    const KEYS: usize = 5;
    let db = TestDb::new().await?;
    let sink = Switch::default();
    sink.down.store(true, Ordering::SeqCst);
    let ids = enqueue(
        &db,
        (0..3u8)
            .flat_map(|n| {
                (0..KEYS).map(move |k| NewMessage::new("orders", format!("key-{k}"), vec![n]))
            })
            .collect(),
    )
    .await?;
    // A backoff far longer than the test: only `end_backoff` ends it.
    let options = crate::outbox::fast().destination_backoff(DestinationBackoff {
        initial: Duration::from_secs(3600),
        max: Duration::from_secs(3600),
    });
    let relay = start(Relay::new(db.pool.clone(), sink.clone(), options)?);
    eventually(
        30,
        "the destination backed off, every key settled",
        || async {
            Ok(destination_failures(&db).await? == Some(1)
                && count(&db, "lease_owner IS NOT NULL").await? == 0)
        },
    )
    .await?;
    let first = sink.calls.load(Ordering::SeqCst);
    assert!(
        (1..=KEYS).contains(&first),
        "one publish per key head at most: {first}"
    );
    // Nothing to await here: the claim the relay repeats every poll interval must stay empty.
    // A window of about 50 poll intervals shows that it neither publishes nor leases.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        sink.calls.load(Ordering::SeqCst),
        first,
        "no publish while backed off"
    );
    assert_eq!(
        count(&db, "lease_owner IS NOT NULL OR attempts > 0").await?,
        0
    );

    // The backoff ends: one publish probes the destination, the other keys wait for its result
    // and go back untried.
    end_backoff(&db).await?;
    eventually(
        30,
        "the probe failed and backed the destination off again",
        || async {
            Ok(destination_failures(&db).await? == Some(2)
                && count(&db, "lease_owner IS NOT NULL").await? == 0)
        },
    )
    .await?;
    assert_eq!(sink.calls.load(Ordering::SeqCst), first + 1, "one probe");
    assert_eq!(count(&db, "attempts > 0 OR state <> 'pending'").await?, 0);

    // The broker is back: the next probe succeeds and everything drains, in per-key order.
    sink.down.store(false, Ordering::SeqCst);
    end_backoff(&db).await?;
    eventually(30, "everything sent", || async {
        Ok(count(&db, "state = 'sent'").await? == (3 * KEYS) as i64)
    })
    .await?;
    relay.stop().await?;
    assert_eq!(destination_failures(&db).await?, None, "healthy again");
    let mut last: HashMap<String, i64> = HashMap::new();
    let delivered = sink.inner.messages();
    for m in &delivered {
        let previous = last.insert(m.partition_key.clone(), m.sequence);
        assert!(
            previous.is_none_or(|p| p < m.sequence),
            "{} out of order",
            m.partition_key
        );
    }
    let mut got: Vec<Uuid> = delivered.iter().map(|m| m.id).collect();
    got.sort_unstable();
    let mut ids = ids;
    ids.sort_unstable();
    assert_eq!(got, ids, "each once");
    Ok(())
}

#[tokio::test]
async fn status_tells_messages_blocked_behind_a_dead_one_from_the_backlog() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let ids = enqueue(
        &db,
        vec![
            NewMessage::new("orders", "a", b"1".to_vec()),
            NewMessage::new("orders", "a", b"2".to_vec()),
            NewMessage::new("orders", "a", b"3".to_vec()),
            NewMessage::new("orders", "b", b"4".to_vec()),
            NewMessage::new("payments", "c", b"5".to_vec()),
            NewMessage::new("payments", "c", b"6".to_vec()),
        ],
    )
    .await?;
    // The heads of `a` and `c` are dead: the two behind `a` and the one behind `c` are blocked.
    db.pool
        .get()
        .await?
        .execute(
            "UPDATE eventrail.outbox SET state = 'dead', attempts = 1, last_error = 'too large'
             WHERE message_id = ANY($1)",
            &[&vec![ids[0], ids[4]]],
        )
        .await?;
    let s = status(&db).await?;
    assert_eq!((s.pending, s.blocked, s.blocked_keys), (4, 3, 2), "{s:?}");
    let out = crate::cli::eventrail(&["outbox", "status", "--database-url", &db.url]).await?;
    assert!(out.contains("backlog    1"), "{out}");
    assert!(out.contains("blocked    3 on 2 keys"), "{out}");
    Ok(())
}

#[tokio::test]
async fn cleanup_forgets_a_backed_off_destination_with_nothing_pending() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    enqueue(&db, vec![NewMessage::new("orders", "a", b"1".to_vec())]).await?;
    db.pool
        .get()
        .await?
        .batch_execute(
            "INSERT INTO eventrail.outbox_destinations (destination, reason, next_attempt_at, last_error)
             VALUES ('orders', 'unavailable', now() + interval '1 hour', 'connection refused'),
                    ('gone', 'missing', now() + interval '1 hour', 'no such queue')",
        )
        .await?;
    let relay = Relay::new(db.pool.clone(), Switch::default(), OutboxOptions::new())?;
    relay.cleanup().await?;
    let left: Vec<String> = status(&db)
        .await?
        .backed_off
        .into_iter()
        .map(|d| d.destination)
        .collect();
    assert_eq!(left, ["orders"], "the one with a pending message stays");
    Ok(())
}
