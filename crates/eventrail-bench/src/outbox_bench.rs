//! `eventrail-bench outbox`: relay throughput to NATS JetStream, to RabbitMQ and to Kafka against
//! a bare client publish loop of the same messages (the physical limit), and with the in-memory
//! sink (the database side alone). It works in a database of its own, `eventrail_bench_outbox`,
//! created afresh, a JetStream stream `OUTBOX_BENCH`, a RabbitMQ queue `outbox_bench` and the
//! Kafka topics `outbox_bench.raw` and `outbox_bench.bench` (`KAFKA_BOOTSTRAP_SERVERS`, by
//! default 127.0.0.1:9092).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use deadpool_postgres::Pool;
use eventrail_outbox::async_nats::{self, jetstream};
use eventrail_outbox::lapin::options::{
    BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use eventrail_outbox::lapin::types::{AMQPValue, FieldTable, LongString};
use eventrail_outbox::lapin::{BasicProperties, Confirmation};
use eventrail_outbox::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use eventrail_outbox::rdkafka::client::DefaultClientContext;
use eventrail_outbox::rdkafka::message::{Header, OwnedHeaders};
use eventrail_outbox::rdkafka::producer::FutureRecord;
use eventrail_outbox::{
    AMQP_PARTITION_KEY_HEADER, AmqpSink, InMemorySink, KAFKA_CONTENT_TYPE_HEADER,
    KAFKA_MESSAGE_ID_HEADER, KafkaSink, KafkaSinkConfig, NatsSink, NewMessage, Outbox,
    OutboxMessage, OutboxOptions, OutboxTables, PARTITION_KEY_HEADER, Relay, Sink, SinkError,
    outbox_migrator,
};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::cpu::{CpuMeter, CpuUse};

const STREAM: &str = "OUTBOX_BENCH";
const QUEUE: &str = "outbox_bench";
const KAFKA_PREFIX: &str = "outbox_bench.";
/// Partitions of each Kafka topic.
const KAFKA_PARTITIONS: i32 = 8;

fn messages(n: usize, keys: usize) -> Vec<NewMessage> {
    (0..n)
        .map(|i| {
            NewMessage::json(
                "bench",
                format!("key-{}", i % keys),
                &serde_json::json!({ "n": i, "sku": "tea-earl-grey", "qty": 2, "note": "a small message of typical size" }),
            )
        })
        .collect()
}

async fn enqueue(pool: &Pool, n: usize, keys: usize) -> anyhow::Result<f64> {
    let outbox = Outbox::new(&OutboxOptions::new())?;
    let started = Instant::now();
    for chunk in messages(n, keys).chunks(1000) {
        let mut client = pool.get().await?;
        let tx = client.transaction().await?;
        outbox.enqueue_batch(&tx, chunk.to_vec()).await?;
        tx.commit().await?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Counts acknowledged publishes, so that the measurement asks the database whether the
/// outbox is drained only once every message was published.
#[derive(Clone)]
struct Counted<S> {
    inner: S,
    acked: Arc<AtomicUsize>,
}

impl<S: Sink> Sink for Counted<S> {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        self.inner.publish(message).await?;
        self.acked.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// What a relay keeps of sent messages: the default retention (marked sent, deleted later by the
/// cleanup), or none (deleted by the settle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum History {
    Kept,
    None,
}

/// What each relay measurement relays, and how.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    pub(crate) messages: usize,
    pub(crate) keys: usize,
    pub(crate) relays: usize,
    /// Most messages one claim takes.
    pub(crate) batch: usize,
    /// Keys parked by a dead message beside the load: no relay publishes them, but a walk that
    /// meets them before the keys it takes looks up their heads.
    pub(crate) parked_keys: usize,
}

/// Enqueues the load's messages (and parks its parked keys), then relays them with its relays
/// (as deployed: `Relay::run`) until none is pending.
async fn relay<S: Sink + Clone>(
    pool: &Pool,
    sink: S,
    load: Load,
    history: History,
) -> anyhow::Result<(f64, CpuUse)> {
    let Load {
        messages: n,
        keys,
        relays,
        batch,
        parked_keys,
    } = load;
    enqueue(pool, n, keys).await?;
    // A thousand keys per transaction: each inserted key takes its enqueue lock until commit, and
    // the server's lock table holds a few thousand.
    let client = pool.get().await?;
    for first in (0..parked_keys).step_by(1000) {
        let last = (first + 1000).min(parked_keys);
        client
            .execute(
                "INSERT INTO eventrail.outbox (message_id, partition_key, destination, payload, content_type, state)
                 SELECT gen_random_uuid(), 'parked-' || i, 'parked', '\\x00', 'application/octet-stream', 'dead'
                 FROM generate_series($1::int8, $2::int8 - 1) AS i",
                &[&i64::try_from(first)?, &i64::try_from(last)?],
            )
            .await?;
    }
    drop(client);
    let options = match history {
        History::Kept => OutboxOptions::new(),
        History::None => OutboxOptions::new().retention(Duration::ZERO),
    };
    // The default poll interval (500 ms): a relay that found every key held claims again when
    // its own settles free keys. A short poll makes every relay walk the keys many times a
    // second for nothing (a poll of 10 ms made five times the claims).
    let options = options
        .batch_size(batch)
        .max_per_key(16)
        .max_in_flight(keys);
    let client = pool.get().await?;
    let pending = client
        .prepare(
            "SELECT EXISTS (
                 SELECT FROM eventrail.outbox_keys AS k JOIN eventrail.outbox AS o
                     ON o.partition_key = k.partition_key AND o.sequence > k.sent_through
                 WHERE o.state = 'pending'
             )",
        )
        .await?;
    let acked = Arc::new(AtomicUsize::new(0));
    let sink = Counted {
        inner: sink,
        acked: Arc::clone(&acked),
    };
    let stop = CancellationToken::new();
    let meter = CpuMeter::start();
    let started = Instant::now();
    let tasks: Vec<_> = (0..relays)
        .map(|_| {
            let relay = Relay::new(pool.clone(), sink.clone(), options.clone());
            let stop = stop.clone();
            tokio::spawn(async move { anyhow::Ok(relay?.run(stop).await?) })
        })
        .collect();
    while acked.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    while client.query_one(&pending, &[]).await?.get::<_, bool>(0) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let cpu = meter.stop();
    stop.cancel();
    for t in tasks {
        t.await??;
    }
    client
        .batch_execute("TRUNCATE eventrail.outbox, eventrail.outbox_keys")
        .await?;
    Ok((rate, cpu))
}

/// The bare client: publish every message with its dedup id, `window` acks outstanding.
async fn bare_nats(
    js: &jetstream::Context,
    n: usize,
    keys: usize,
    window: usize,
) -> anyhow::Result<f64> {
    let all = messages(n, keys);
    let started = Instant::now();
    let mut acks = futures::stream::iter(all.iter().map(|m| async move {
        // The headers `NatsSink` sends: the same message as the relay's.
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            m.id.to_string().as_str(),
        );
        headers.insert(PARTITION_KEY_HEADER, m.partition_key.as_str());
        headers.insert("Content-Type", m.content_type.as_str());
        let ack = js
            .publish_with_headers("bench.raw", headers, m.payload.clone().into())
            .await?;
        ack.await?;
        anyhow::Ok(())
    }))
    .buffer_unordered(window);
    while let Some(r) = acks.next().await {
        r?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The AMQP headers table of a message's partition key, as `AmqpSink` sends it.
fn partition_key_header(key: &str) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(
        AMQP_PARTITION_KEY_HEADER.into(),
        AMQPValue::LongString(LongString::from(key)),
    );
    headers
}

async fn bare_amqp(sink: &AmqpSink, n: usize, keys: usize, window: usize) -> anyhow::Result<f64> {
    let all = messages(n, keys);
    let channel = &sink.channel();
    let started = Instant::now();
    let mut acks = futures::stream::iter(all.iter().map(|m| async move {
        let confirm = channel
            .basic_publish(
                "".into(),
                QUEUE.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &m.payload,
                // The properties `AmqpSink` sends: the same message as the relay's.
                BasicProperties::default()
                    .with_message_id(m.id.to_string().into())
                    .with_content_type(m.content_type.as_str().into())
                    .with_delivery_mode(2)
                    .with_headers(partition_key_header(&m.partition_key)),
            )
            .await?
            .await?;
        anyhow::ensure!(matches!(confirm, Confirmation::Ack(None)), "not confirmed");
        anyhow::Ok(())
    }))
    .buffer_unordered(window);
    while let Some(r) = acks.next().await {
        r?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The bare producer, with the sink's settings (idempotent, `acks=all`): every message with its
/// key and id header, `window` delivery reports outstanding.
async fn bare_kafka(sink: &KafkaSink, n: usize, keys: usize, window: usize) -> anyhow::Result<f64> {
    let all = messages(n, keys);
    let producer = &sink.producer();
    let topic = &sink.topic_name("raw");
    let started = Instant::now();
    let mut acks = futures::stream::iter(all.iter().map(|m| async move {
        let id = m.id.to_string();
        // The headers `KafkaSink` sends: the same message as the relay's.
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: KAFKA_MESSAGE_ID_HEADER,
                value: Some(id.as_str()),
            })
            .insert(Header {
                key: KAFKA_CONTENT_TYPE_HEADER,
                value: Some(m.content_type.as_str()),
            });
        let record = FutureRecord::to(topic)
            .key(m.partition_key.as_bytes())
            .payload(m.payload.as_slice())
            .headers(headers);
        producer
            .send(record, Duration::from_secs(5))
            .await
            .map_err(|(e, _)| e)?;
        anyhow::Ok(())
    }))
    .buffer_unordered(window);
    while let Some(r) = acks.next().await {
        r?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Deletes and creates the bench's Kafka topics.
async fn kafka_topics(bootstrap: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = eventrail_outbox::rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let names = [format!("{KAFKA_PREFIX}raw"), format!("{KAFKA_PREFIX}bench")];
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    // Absent topics are fine: only a fresh, empty pair matters.
    let _ = admin.delete_topics(&names, &options).await?;
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| NewTopic::new(name, KAFKA_PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
    for result in admin.create_topics(&topics, &options).await? {
        result.map_err(|(topic, code)| anyhow::anyhow!("creating {topic}: {code:?}"))?;
    }
    Ok(())
}

/// What one run of the relay benchmark measured, in messages/s.
pub(crate) struct RelayFigures {
    pub(crate) enqueue: f64,
    pub(crate) memory: f64,
    pub(crate) nats_bare: f64,
    pub(crate) nats_relay: f64,
    /// The relay with a retention of zero (a settle deletes what was sent).
    pub(crate) nats_relay_deleting: f64,
    pub(crate) amqp_bare: f64,
    pub(crate) amqp_relay: f64,
    /// The relay with a retention of zero.
    pub(crate) amqp_relay_deleting: f64,
    /// Bare loop and relay, when Kafka was measured.
    pub(crate) kafka: Option<(f64, f64)>,
    /// Where the CPU of each phase went (the in-memory sink, NATS and RabbitMQ).
    pub(crate) cpu: Vec<(&'static str, CpuUse)>,
}

impl RelayFigures {
    /// The mean of each rate over `runs` (Kafka's when every run measured it), with the last
    /// run's CPU figures; `None` without runs.
    pub(crate) fn mean(runs: &[Self]) -> Option<Self> {
        let n = runs.len() as f64;
        let mean = |rate: fn(&Self) -> f64| runs.iter().map(rate).sum::<f64>() / n;
        let kafka = runs
            .iter()
            .map(|r| r.kafka)
            .collect::<Option<Vec<_>>>()
            .map(|k| {
                let sum = k
                    .iter()
                    .fold((0.0, 0.0), |(b, r), (kb, kr)| (b + kb, r + kr));
                (sum.0 / n, sum.1 / n)
            });
        Some(Self {
            enqueue: mean(|r| r.enqueue),
            memory: mean(|r| r.memory),
            nats_bare: mean(|r| r.nats_bare),
            nats_relay: mean(|r| r.nats_relay),
            nats_relay_deleting: mean(|r| r.nats_relay_deleting),
            amqp_bare: mean(|r| r.amqp_bare),
            amqp_relay: mean(|r| r.amqp_relay),
            amqp_relay_deleting: mean(|r| r.amqp_relay_deleting),
            kafka,
            cpu: runs.last()?.cpu.clone(),
        })
    }
}

/// Measures the relay to each broker beside its bare publish loop (Kafka when `with_kafka`).
pub(crate) async fn measure(load: Load, with_kafka: bool) -> anyhow::Result<RelayFigures> {
    let (n, keys) = (load.messages, load.keys);
    let admin_url = eventrail_devdb::database_url().await?;
    let url = eventrail_devdb::recreate_database(&admin_url, "eventrail_bench_outbox").await?;
    let mut client = crate::connect(&url).await?;
    outbox_migrator("eventrail", &OutboxTables::default())?
        .run(&mut client)
        .await?;
    let pool = eventrail_devdb::pool(&url, 16)?;

    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let nats = NatsSink::new(
        async_nats::connect(&nats_url)
            .await
            .context("NATS JetStream must be running")?,
    );
    let _ = nats.jetstream().delete_stream(STREAM).await;
    nats.jetstream()
        .create_stream(jetstream::stream::Config {
            name: STREAM.into(),
            subjects: vec!["bench.>".into()],
            ..Default::default()
        })
        .await?;
    let nats = nats.subject_prefix("bench.");
    let amqp_url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let amqp = AmqpSink::connect(&amqp_url, "")
        .await
        .context("RabbitMQ must be running")?;
    amqp.channel()
        .queue_declare(
            QUEUE.into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await?;

    let enqueue_rate = enqueue(&pool, n, keys).await?;
    pool.get()
        .await?
        .batch_execute("TRUNCATE eventrail.outbox, eventrail.outbox_keys")
        .await?;
    let mut cpu = Vec::new();
    let mut phase = |label: &'static str, (rate, use_): (f64, CpuUse)| {
        cpu.push((label, use_));
        rate
    };
    let memory = phase(
        "relay → in-memory sink",
        relay(&pool, Arc::new(InMemorySink::new()), load, History::Kept).await?,
    );
    let meter = CpuMeter::start();
    let nats_bare = bare_nats(nats.jetstream(), n, keys, 1000).await?;
    let nats_bare = phase("bare JetStream loop", (nats_bare, meter.stop()));
    let nats_relay = phase(
        "relay → NATS",
        relay(&pool, nats.clone(), load, History::Kept).await?,
    );
    let nats_relay_deleting = phase(
        "relay → NATS, retention 0",
        relay(&pool, nats.clone(), load, History::None).await?,
    );
    let meter = CpuMeter::start();
    let amqp_bare = bare_amqp(&amqp, n, keys, 1000).await?;
    let amqp_bare = phase("bare RabbitMQ loop", (amqp_bare, meter.stop()));
    amqp.channel()
        .queue_declare(
            "bench".into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await?;
    let amqp_relay = phase(
        "relay → RabbitMQ",
        relay(&pool, amqp.clone(), load, History::Kept).await?,
    );
    let amqp_relay_deleting = phase(
        "relay → RabbitMQ, retention 0",
        relay(&pool, amqp.clone(), load, History::None).await?,
    );
    let kafka = if with_kafka {
        let bootstrap = std::env::var("KAFKA_BOOTSTRAP_SERVERS")
            .ok()
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| "127.0.0.1:9092".into());
        kafka_topics(&bootstrap)
            .await
            .context("a Kafka broker must be running (bash scripts/ensure-kafka.sh)")?;
        let kafka = KafkaSink::new(&KafkaSinkConfig::new(&bootstrap).topic_prefix(KAFKA_PREFIX))?;
        let bare = bare_kafka(&kafka, n, keys, 1000).await?;
        Some((bare, relay(&pool, kafka, load, History::Kept).await?.0))
    } else {
        None
    };
    let _ = nats.jetstream().delete_stream(STREAM).await;
    for q in [QUEUE, "bench"] {
        amqp.channel()
            .queue_purge(q.into(), QueuePurgeOptions::default())
            .await?;
        amqp.channel()
            .queue_delete(q.into(), QueueDeleteOptions::default())
            .await?;
    }
    Ok(RelayFigures {
        enqueue: enqueue_rate,
        memory,
        nats_bare,
        nats_relay,
        nats_relay_deleting,
        amqp_bare,
        amqp_relay,
        amqp_relay_deleting,
        kafka,
        cpu,
    })
}

pub(crate) async fn run(load: Load) -> anyhow::Result<()> {
    let Load {
        messages: n,
        keys,
        relays,
        batch,
        parked_keys,
    } = load;
    println!(
        "{n} messages over {keys} partition keys ({parked_keys} more keys parked), {relays} relays, claims of {batch}"
    );
    let RelayFigures {
        enqueue: enqueue_rate,
        memory,
        nats_bare,
        nats_relay,
        nats_relay_deleting,
        amqp_bare,
        amqp_relay,
        amqp_relay_deleting,
        kafka,
        cpu,
    } = measure(load, true).await?;
    let (kafka_bare, kafka_relay) = kafka.unwrap_or((f64::NAN, f64::NAN));

    println!(
        "| {:<36} | {:>12} | {:>12} |",
        "scenario", "messages/s", "vs bare loop"
    );
    println!("|{:-<38}|{:-<14}|{:-<14}|", "", "", "");
    println!(
        "| {:<36} | {:>12.0} | {:>12} |",
        "enqueue (batches of 1000)", enqueue_rate, "-"
    );
    println!(
        "| {:<36} | {:>12.0} | {:>12} |",
        "relay → in-memory sink (db side)", memory, "-"
    );
    println!(
        "| {:<36} | {:>12.0} | {:>12} |",
        "bare JetStream publish loop", nats_bare, "1.00"
    );
    println!(
        "| {:<36} | {:>12.0} | {:>12.2} |",
        "relay → NATS JetStream",
        nats_relay,
        nats_relay / nats_bare
    );
    println!(
        "| {:<36} | {:>12.0} | {:>12.2} |",
        "relay → NATS, retention 0",
        nats_relay_deleting,
        nats_relay_deleting / nats_bare
    );
    println!(
        "| {:<36} | {:>12.0} | {:>12} |",
        "bare RabbitMQ publish loop (confirms)", amqp_bare, "1.00"
    );
    println!(
        "| {:<36} | {:>12.0} | {:>12.2} |",
        "relay → RabbitMQ",
        amqp_relay,
        amqp_relay / amqp_bare
    );
    println!(
        "| {:<36} | {:>12.0} | {:>12.2} |",
        "relay → RabbitMQ, retention 0",
        amqp_relay_deleting,
        amqp_relay_deleting / amqp_bare
    );
    println!(
        "| {:<36} | {:>12.0} | {:>12} |",
        "bare Kafka producer loop (idempotent)", kafka_bare, "1.00"
    );
    println!(
        "| {:<36} | {:>12.0} | {:>12.2} |",
        "relay → Kafka",
        kafka_relay,
        kafka_relay / kafka_bare
    );
    print_cpu(&cpu, n);
    println!(
        "targets: ≥ 20,000 messages/s to NATS ({}), ≥ 0.5× the bare loop ({})",
        if nats_relay >= 20_000.0 { "ok" } else { "MISS" },
        if nats_relay >= 0.5 * nats_bare {
            "ok"
        } else {
            "MISS"
        }
    );
    Ok(())
}

/// The processes a relay phase's CPU goes to: PostgreSQL's backends, the brokers, this process.
const SERVERS: [&str; 4] = ["postgres", "nats-server", "beam.smp", crate::cpu::BENCH];

/// Prints where each phase's CPU went, in µs per message, and how many cores were busy: a
/// relay shares the machine with PostgreSQL, a bare loop does not.
pub(crate) fn print_cpu(cpu: &[(&'static str, CpuUse)], messages: usize) {
    println!();
    println!(
        "CPU per message (µs), by process, and cores busy (of {}):",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    println!(
        "| {:<30} | {:>8} | {:>8} | {:>8} | {:>8} | {:>8} | {:>6} |",
        "phase", "postgres", "nats", "rabbitmq", "bench", "other", "cores"
    );
    println!(
        "|{:-<32}|{:-<10}|{:-<10}|{:-<10}|{:-<10}|{:-<10}|{:-<8}|",
        "", "", "", "", "", "", ""
    );
    for (label, use_) in cpu {
        let each = |name: &str| use_.micros_per_message(name, messages);
        println!(
            "| {:<30} | {:>8.1} | {:>8.1} | {:>8.1} | {:>8.1} | {:>8.1} | {:>6.2} |",
            label,
            each(SERVERS[0]),
            each(SERVERS[1]),
            each(SERVERS[2]),
            each(SERVERS[3]),
            use_.others_per_message(&SERVERS, messages),
            use_.cores()
        );
    }
}
