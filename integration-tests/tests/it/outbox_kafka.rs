//! The outbox's Kafka sink against a real broker speaking Kafka's protocol: nisshi, on
//! 127.0.0.1:9092 (`KAFKA_BOOTSTRAP_SERVERS` to use another; started by
//! `scripts/ensure-kafka.sh`), and brokers of the tests' own for the outages. Records are read
//! back with an rdkafka consumer. The tests fail when the broker is unreachable.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use eventrail_outbox::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use eventrail_outbox::rdkafka::client::DefaultClientContext;
use eventrail_outbox::rdkafka::consumer::{BaseConsumer, Consumer};
use eventrail_outbox::rdkafka::message::{Headers, Message};
use eventrail_outbox::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use eventrail_outbox::{
    FailureClass, KAFKA_CONTENT_TYPE_HEADER, KAFKA_MESSAGE_ID_HEADER, KafkaSink, KafkaSinkConfig,
    NewMessage, OutboxAdmin, OutboxMessage, OutboxOptions, Relay, RetryPolicy, Sink, SinkError,
};
use integration_tests::servers::KafkaServer;
use uuid::Uuid;

use crate::harness::{TestDb, eventually};
use crate::outbox::{claimed, count, enqueue, fast, relay_all, start};

/// The shared broker's bootstrap servers.
fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "127.0.0.1:9092".into())
}

/// Fails clearly when nothing listens at `bootstrap` (instead of librdkafka's retries).
async fn reachable(bootstrap: &str) -> anyhow::Result<()> {
    let first = bootstrap.split(',').next().unwrap_or(bootstrap);
    tokio::net::TcpStream::connect(first).await.with_context(|| {
        format!(
            "a Kafka broker must be running on {first} for this test: bash scripts/ensure-kafka.sh"
        )
    })?;
    Ok(())
}

fn unique_topic() -> String {
    format!("outbox-test-{}", Uuid::now_v7().simple())
}

/// Creates `topic` with `partitions` partitions and the topic settings `configs`.
async fn create_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (name, value) in configs {
        new = new.set(name, value);
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics([&new], &options).await? {
        result.map_err(|(topic, code)| anyhow::anyhow!("creating {topic}: {code:?}"))?;
    }
    Ok(())
}

/// One record as a consumer read it.
#[derive(Debug, Clone)]
struct Record {
    partition: i32,
    offset: i64,
    key: String,
    payload: Vec<u8>,
    headers: Vec<(String, String)>,
}

impl Record {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn id(&self) -> anyhow::Result<Uuid> {
        Ok(self
            .header(KAFKA_MESSAGE_ID_HEADER)
            .context("message id header")?
            .parse()?)
    }
}

fn consumer(bootstrap: &str) -> anyhow::Result<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("outbox-test-{}", Uuid::now_v7().simple()),
        )
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false")
        .create()?)
}

/// Whether `topic` exists (asked without creating it).
async fn topic_exists(bootstrap: &str, topic: &str) -> anyhow::Result<bool> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let metadata =
            consumer(&bootstrap)?.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        Ok(metadata
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
    })
    .await?
}

/// Every record of `topic`, partition by partition in offset order, up to the high watermarks
/// of the moment.
async fn read_topic(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<Record>> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || read_topic_blocking(&bootstrap, &topic)).await?
}

fn read_topic_blocking(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<Record>> {
    let consumer = consumer(bootstrap)?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .context("topic in the metadata")?
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut assignment = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        if high > low {
            assignment.add_partition_offset(topic, p, Offset::Offset(low))?;
            ends.insert(p, high);
        }
    }
    consumer.assign(&assignment)?;
    let mut records: Vec<Record> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !ends.is_empty() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{} records read in 30 s, partitions {ends:?} not to their end",
            records.len()
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        let text =
            |bytes: Option<&[u8]>| String::from_utf8_lossy(bytes.unwrap_or_default()).into_owned();
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), text(h.value)))
                    .collect()
            })
            .unwrap_or_default();
        records.push(Record {
            partition: message.partition(),
            offset: message.offset(),
            key: text(message.key()),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers,
        });
        if ends.get(&message.partition()) == Some(&(message.offset() + 1)) {
            ends.remove(&message.partition());
        }
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    Ok(records)
}

fn sink(
    bootstrap: &str,
    configure: impl FnOnce(KafkaSinkConfig) -> KafkaSinkConfig,
) -> anyhow::Result<KafkaSink> {
    Ok(KafkaSink::new(&configure(KafkaSinkConfig::new(bootstrap)))?)
}

fn message(destination: &str, key: &str, payload: Vec<u8>) -> OutboxMessage {
    claimed(&NewMessage::new(destination, key, payload), 1)
}

/// Per key, in offset order: each record is either a copy of one seen before (a redelivery) or
/// the next of the key's messages in enqueue order (`order`: per key, the payloads in enqueue
/// order). Returns how many copies of earlier records were seen.
fn check_key_order(
    records: &[Record],
    order: &HashMap<String, Vec<Vec<u8>>>,
) -> anyhow::Result<usize> {
    let mut next: HashMap<&str, usize> = HashMap::new();
    let mut partition: HashMap<&str, i32> = HashMap::new();
    let mut copies = 0;
    for r in records {
        let expected = order
            .get(&r.key)
            .with_context(|| format!("unknown key {}", r.key))?;
        let p = *partition.entry(&r.key).or_insert(r.partition);
        anyhow::ensure!(
            p == r.partition,
            "key {} on partitions {p} and {}",
            r.key,
            r.partition
        );
        let n = next.entry(&r.key).or_insert(0);
        if expected[..*n].contains(&r.payload) {
            copies += 1;
        } else {
            anyhow::ensure!(
                expected.get(*n) == Some(&r.payload),
                "key {} at offset {}: {:?} where {:?} was next",
                r.key,
                r.offset,
                r.payload,
                expected.get(*n)
            );
            *n += 1;
        }
    }
    for (key, expected) in order {
        let got = next.get(key.as_str()).copied().unwrap_or(0);
        anyhow::ensure!(
            got == expected.len(),
            "key {key}: {got} of {} arrived",
            expected.len()
        );
    }
    Ok(copies)
}

#[tokio::test]
async fn kafka_sink_keeps_each_key_in_order_on_one_partition_with_ids_and_headers()
-> anyhow::Result<()> {
    let bootstrap = bootstrap();
    reachable(&bootstrap).await?;
    let db = TestDb::new().await?;
    let prefix = format!("{}.", unique_topic());
    let sink = sink(&bootstrap, |c| c.topic_prefix(prefix.clone()))?;
    let topic = sink.topic_name("orders");
    assert_eq!(topic, format!("{prefix}orders"));
    create_topic(&bootstrap, &topic, 3, &[]).await?;

    const KEYS: usize = 6;
    const N: usize = 60;
    let messages: Vec<NewMessage> = (0..N)
        .map(|i| {
            let m = NewMessage::new(
                "orders",
                format!("key-{}", i % KEYS),
                vec![u8::try_from(i).unwrap_or(0)],
            )
            .header("n", i.to_string())
            .header("tenant", "t1");
            match i % 3 {
                0 => m.content_type("application/json"),
                // A header with a reserved name is left out: the record's own wins.
                1 => m.header(KAFKA_CONTENT_TYPE_HEADER, "text/forged"),
                _ => m,
            }
        })
        .collect();
    let ids = enqueue(&db, messages).await?;
    relay_all(&db, sink, N as i64).await?;

    let records = read_topic(&bootstrap, &topic).await?;
    assert_eq!(records.len(), N, "each message once");
    let mut order: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    for i in 0..N {
        order
            .entry(format!("key-{}", i % KEYS))
            .or_default()
            .push(vec![u8::try_from(i)?]);
    }
    assert_eq!(check_key_order(&records, &order)?, 0, "no copies");
    let partitions: HashSet<i32> = records.iter().map(|r| r.partition).collect();
    assert!(
        partitions.len() > 1,
        "the keys spread over partitions: {partitions:?}"
    );
    for r in &records {
        let n = usize::from(r.payload[0]);
        assert_eq!(r.id()?, ids[n]);
        assert_eq!(r.key, format!("key-{}", n % KEYS));
        assert_eq!(r.header("n"), Some(n.to_string().as_str()));
        assert_eq!(r.header("tenant"), Some("t1"));
        let content_type = if n % 3 == 0 {
            "application/json"
        } else {
            "application/octet-stream"
        };
        assert_eq!(
            r.header(KAFKA_CONTENT_TYPE_HEADER),
            Some(content_type),
            "{r:?}"
        );
        let names: Vec<&str> = r.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                KAFKA_MESSAGE_ID_HEADER,
                KAFKA_CONTENT_TYPE_HEADER,
                "n",
                "tenant"
            ],
            "each header once"
        );
    }
    Ok(())
}

#[tokio::test]
async fn kafka_republish_of_an_id_is_stored_again_behind_the_first_copy() -> anyhow::Result<()> {
    let bootstrap = bootstrap();
    reachable(&bootstrap).await?;
    let topic = unique_topic();
    create_topic(&bootstrap, &topic, 3, &[]).await?;
    let sink = sink(&bootstrap, |c| c)?;
    let first = message(&topic, "order-7", b"paid".to_vec());
    sink.publish(&first).await?;
    sink.publish(&message(&topic, "order-7", b"shipped".to_vec()))
        .await?;
    // The relay publishes a message again after a crash between the ack and its mark: Kafka has
    // no id dedup (the idempotent producer drops only its own retries of one request), so the
    // topic holds it twice, with the same id header, on the key's partition, after the first.
    sink.publish(&first).await?;
    let records = read_topic(&bootstrap, &topic).await?;
    let payloads: Vec<&[u8]> = records.iter().map(|r| r.payload.as_slice()).collect();
    assert_eq!(payloads, [&b"paid"[..], b"shipped", b"paid"]);
    assert_eq!(records[0].id()?, first.id);
    assert_eq!(records[2].id()?, first.id);
    assert_ne!(records[1].id()?, first.id);
    assert!(records.iter().all(|r| r.partition == records[0].partition));
    assert!(records[0].offset < records[2].offset);
    Ok(())
}

#[tokio::test]
async fn kafka_missing_topic_is_backed_off_not_created_then_delivered_once_created()
-> anyhow::Result<()> {
    let bootstrap = bootstrap();
    reachable(&bootstrap).await?;
    let db = TestDb::new().await?;
    let topic = unique_topic();
    let sink = sink(&bootstrap, |c| c)?;
    let missing = sink.publish(&message(&topic, "k", vec![0])).await;
    assert!(
        matches!(&missing, Err(SinkError::Missing(_))),
        "{missing:?}"
    );
    assert!(
        !topic_exists(&bootstrap, &topic).await?,
        "publishing did not create the topic"
    );

    enqueue(
        &db,
        (0..3u8)
            .map(|i| NewMessage::new(topic.clone(), "k", vec![i]))
            .collect(),
    )
    .await?;
    let running = start(Relay::new(db.pool.clone(), sink.clone(), fast())?);
    eventually(60, "the relay probing the missing topic", || async {
        Ok(count(
            &db,
            "EXISTS (SELECT 1 FROM eventrail.outbox_destinations
                     WHERE reason = 'missing' AND failures >= 2)",
        )
        .await?
            >= 1)
    })
    .await?;
    assert_eq!(
        count(&db, "state <> 'pending'").await?,
        0,
        "none sent nor dead"
    );
    assert_eq!(count(&db, "attempts > 1").await?, 0, "no attempt spent");
    create_topic(&bootstrap, &topic, 1, &[]).await?;
    eventually(60, "the backlog sent once the topic exists", || async {
        Ok(count(&db, "state = 'sent'").await? == 3)
    })
    .await?;
    running.stop().await?;
    let records = read_topic(&bootstrap, &topic).await?;
    let payloads: Vec<Vec<u8>> = records.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(payloads, [vec![0], vec![1], vec![2]]);
    Ok(())
}

#[tokio::test]
async fn kafka_oversized_messages_are_classified() -> anyhow::Result<()> {
    let bootstrap = bootstrap();
    reachable(&bootstrap).await?;
    let db = TestDb::new().await?;
    let topic = unique_topic();
    // The topic takes batches of up to 20 kB; the client sends messages of up to 100 kB.
    create_topic(&bootstrap, &topic, 1, &[("max.message.bytes", "20000")]).await?;
    let sink = sink(&bootstrap, |c| c.property("message.max.bytes", "100000"))?;

    // Over the client's message.max.bytes: refused before it is sent, permanent.
    let huge = sink.publish(&message(&topic, "k", vec![1; 200_000])).await;
    assert!(matches!(&huge, Err(SinkError::Permanent(_))), "{huge:?}");
    // Over the topic's limit only: the broker refuses the request it went in; sent again in a
    // request of its own, refused again: permanent.
    let large = sink.publish(&message(&topic, "k", vec![2; 50_000])).await;
    assert!(matches!(&large, Err(SinkError::Permanent(_))), "{large:?}");
    sink.publish(&message(&topic, "k", vec![3; 100])).await?;

    // Through the relay, which publishes the keys concurrently, so that librdkafka batches the
    // large one with others that the broker then refuses with it: both big ones dead at their
    // first attempt, the others sent at theirs (sent again alone, they pass).
    let mut messages = vec![
        NewMessage::new(topic.clone(), "huge", vec![1; 200_000]),
        NewMessage::new(topic.clone(), "large", vec![2; 50_000]),
    ];
    messages.extend(
        (0..6u8).map(|i| NewMessage::new(topic.clone(), format!("key-{}", i % 2), vec![i])),
    );
    enqueue(&db, messages).await?;
    let options = fast().retry(RetryPolicy {
        max_attempts: 5,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
    });
    let running = start(Relay::new(db.pool.clone(), sink.clone(), options)?);
    eventually(60, "the small ones sent and the big ones dead", || async {
        Ok(count(&db, "state = 'sent'").await? == 6 && count(&db, "state = 'dead'").await? == 2)
    })
    .await?;
    running.stop().await?;
    assert_eq!(
        count(
            &db,
            "state = 'dead' AND partition_key = 'huge' AND attempts = 1"
        )
        .await?,
        1
    );
    assert_eq!(
        count(
            &db,
            "state = 'dead' AND partition_key = 'large' AND attempts = 1"
        )
        .await?,
        1
    );
    assert_eq!(
        count(&db, "state = 'sent' AND attempts = 1").await?,
        6,
        "the others sent at their first attempt"
    );
    Ok(())
}

/// Records every message the sink acknowledged.
#[derive(Clone)]
struct Acked<S> {
    inner: S,
    acked: Arc<Mutex<HashSet<Uuid>>>,
}

impl<S: Sink> Sink for Acked<S> {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        self.inner.publish(message).await?;
        self.acked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(message.id);
        Ok(())
    }
}

/// Enqueues batches of `KEYS` × 2 messages every 20 ms until stopped; returns each key's payloads
/// in enqueue order.
fn load(
    db: &TestDb,
    topic: &str,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<anyhow::Result<HashMap<String, Vec<Vec<u8>>>>> {
    const KEYS: usize = 8;
    let pool = db.pool.clone();
    let topic = topic.to_owned();
    tokio::spawn(async move {
        let outbox = eventrail_outbox::Outbox::new(&OutboxOptions::new())?;
        let mut order: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
        let mut n: u32 = 0;
        while !stop.is_cancelled() {
            let mut batch = Vec::new();
            for _ in 0..KEYS * 2 {
                let key = format!("key-{}", n as usize % KEYS);
                let payload = n.to_be_bytes().to_vec();
                order.entry(key.clone()).or_default().push(payload.clone());
                batch.push(NewMessage::new(topic.clone(), key, payload));
                n += 1;
            }
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            outbox.enqueue_batch(&tx, batch).await?;
            tx.commit().await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(order)
    })
}

async fn backed_off(db: &TestDb, class: FailureClass) -> anyhow::Result<bool> {
    Ok(OutboxAdmin::new(db.pool.clone(), &OutboxOptions::new())?
        .status()
        .await?
        .backed_off
        .iter()
        .any(|d| d.class == class))
}

/// Waits until `more` messages beyond those sent now are sent.
async fn flowing(db: &TestDb, more: i64) -> anyhow::Result<()> {
    let before = count(db, "state = 'sent'").await?;
    eventually(60, "messages flowing", || async {
        Ok(count(db, "state = 'sent'").await? >= before + more)
    })
    .await
}

/// Stops the load, waits until everything it enqueued is sent and stops the relay, which must
/// have sent everything (nothing dead); returns each key's payloads in enqueue order.
async fn drain(
    db: &TestDb,
    stop: tokio_util::sync::CancellationToken,
    load: tokio::task::JoinHandle<anyhow::Result<HashMap<String, Vec<Vec<u8>>>>>,
    relay: crate::outbox::Running,
) -> anyhow::Result<HashMap<String, Vec<Vec<u8>>>> {
    stop.cancel();
    let order = load.await??;
    let total: usize = order.values().map(Vec::len).sum();
    eventually(60, "everything sent", || async {
        Ok(count(db, "state = 'sent'").await? == total as i64)
    })
    .await?;
    relay.stop().await?;
    assert_eq!(count(db, "state = 'dead'").await?, 0);
    Ok(order)
}

#[tokio::test]
async fn kafka_broker_frozen_under_load_loses_nothing_and_keeps_key_order() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let server = KafkaServer::start().await?;
    let bootstrap = server.bootstrap();
    let topic = unique_topic();
    create_topic(&bootstrap, &topic, 3, &[]).await?;
    let sink = sink(&bootstrap, |c| c.property("message.timeout.ms", "3000"))?;
    let running = start(Relay::new(db.pool.clone(), sink, fast())?);
    let stop = tokio_util::sync::CancellationToken::new();
    let producer = load(&db, &topic, stop.clone());

    flowing(&db, 100).await?;
    server.signal("STOP")?;
    eventually(
        60,
        "the frozen broker backed off as unavailable",
        || async { backed_off(&db, FailureClass::DestinationUnavailable).await },
    )
    .await?;
    server.signal("CONT")?;
    flowing(&db, 100).await?;
    let order = drain(&db, stop, producer, running).await?;
    let total: usize = order.values().map(Vec::len).sum();

    let records = read_topic(&bootstrap, &topic).await?;
    let copies = check_key_order(&records, &order)?;
    println!(
        "{total} messages, {} records, {copies} copies",
        records.len()
    );
    Ok(())
}

#[tokio::test]
async fn kafka_broker_killed_and_restarted_under_load_gets_everything_not_yet_acknowledged()
-> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let mut server = KafkaServer::start().await?;
    let bootstrap = server.bootstrap();
    let topic = unique_topic();
    create_topic(&bootstrap, &topic, 3, &[]).await?;
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let sink = Acked {
        inner: sink(&bootstrap, |c| c.property("message.timeout.ms", "3000"))?,
        acked: Arc::clone(&acked),
    };
    let running = start(Relay::new(db.pool.clone(), sink, fast())?);
    let stop = tokio_util::sync::CancellationToken::new();
    let producer = load(&db, &topic, stop.clone());

    flowing(&db, 100).await?;
    server.kill()?;
    eventually(60, "the dead broker backed off as unavailable", || async {
        backed_off(&db, FailureClass::DestinationUnavailable).await
    })
    .await?;
    // The old broker is dead: whatever it acknowledged is known now (and gone with its memory
    // storage); everything else must reach the new one.
    let acked_by_old: HashSet<Uuid> = acked.lock().unwrap_or_else(PoisonError::into_inner).clone();
    server.restart().await?;
    // The new broker starts empty: the topic is missing until an operator creates it again. It
    // does not know the idempotent producer's id either: librdkafka raises a fatal error
    // (UNKNOWN_PRODUCER_ID) on the first produce to it, and the sink replaces its producer.
    eventually(
        60,
        "the restarted broker's missing topic backed off",
        || async { backed_off(&db, FailureClass::DestinationMissing).await },
    )
    .await?;
    assert_eq!(count(&db, "state = 'dead'").await?, 0);
    create_topic(&bootstrap, &topic, 3, &[]).await?;
    flowing(&db, 100).await?;
    let order = drain(&db, stop, producer, running).await?;
    let total: usize = order.values().map(Vec::len).sum();

    // Per key, what the new broker must hold: the messages the old one did not acknowledge.
    let client = db.pool.get().await?;
    let ids: HashMap<Vec<u8>, Uuid> = client
        .query("SELECT payload, message_id FROM eventrail.outbox", &[])
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let remaining: HashMap<String, Vec<Vec<u8>>> = order
        .into_iter()
        .map(|(key, payloads)| {
            let left = payloads
                .into_iter()
                .filter(|p| ids.get(p).is_none_or(|id| !acked_by_old.contains(id)))
                .collect();
            (key, left)
        })
        .collect();
    let records = read_topic(&bootstrap, &topic).await?;
    let copies = check_key_order(&records, &remaining)?;
    println!(
        "{total} messages, {} acknowledged by the killed broker, {} records after the restart, {copies} copies",
        acked_by_old.len(),
        records.len()
    );
    Ok(())
}
