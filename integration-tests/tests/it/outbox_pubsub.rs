//! The outbox's Google Cloud Pub/Sub sink against the Pub/Sub emulator (started by
//! `scripts/ensure-pubsub-emulator.sh`; `PUBSUB_EMULATOR_HOST` to use another): ordering keys,
//! attributes, and which failures are permanent. The tests fail when the emulator is unreachable.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use eventrail_outbox::{
    NewMessage, OutboxMessage, PUBSUB_CONTENT_TYPE_ATTRIBUTE, PUBSUB_EMULATOR_DEFAULT_HOST,
    PUBSUB_MESSAGE_ID_ATTRIBUTE, PubSubSink, Relay, Sink, SinkError,
};
use google_cloud_auth::credentials::anonymous;
use google_cloud_pubsub::client::{Subscriber, SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::subscriber::MessageStream;
use uuid::Uuid;

use crate::harness::{TestDb, eventually};
use crate::outbox::{claimed, count, enqueue, fast, relay_all, start};

const PROJECT: &str = "eventrail-test";

/// The emulator's `host:port`.
fn emulator_host() -> String {
    std::env::var("PUBSUB_EMULATOR_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| PUBSUB_EMULATOR_DEFAULT_HOST.into())
}

/// The emulator's admin and subscriber clients, once it answers on its port (a clear failure
/// instead of the clients' retries when it is down).
struct Emulator {
    endpoint: String,
    topics: TopicAdmin,
    subscriptions: SubscriptionAdmin,
    subscriber: Subscriber,
}

impl Emulator {
    async fn connect() -> anyhow::Result<Self> {
        let host = emulator_host();
        tokio::net::TcpStream::connect(&host)
            .await
            .with_context(|| {
                format!(
                    "the Pub/Sub emulator must be running on {host} for this test: \
                 bash scripts/ensure-pubsub-emulator.sh"
                )
            })?;
        let endpoint = format!("http://{host}");
        Ok(Self {
            topics: TopicAdmin::builder()
                .with_endpoint(&endpoint)
                .with_credentials(anonymous::Builder::new().build())
                .build()
                .await?,
            subscriptions: SubscriptionAdmin::builder()
                .with_endpoint(&endpoint)
                .with_credentials(anonymous::Builder::new().build())
                .build()
                .await?,
            subscriber: Subscriber::builder()
                .with_endpoint(&endpoint)
                .with_credentials(anonymous::Builder::new().build())
                .build()
                .await?,
            endpoint,
        })
    }

    async fn sink(&self, prefix: &str) -> anyhow::Result<PubSubSink> {
        Ok(PubSubSink::emulator_at(&self.endpoint, PROJECT)
            .await?
            .topic_prefix(prefix))
    }

    /// Creates `topic` and a subscription to it with message ordering on; returns the
    /// subscription's name.
    async fn topic_with_ordered_subscription(&self, topic: &str) -> anyhow::Result<String> {
        self.topics.create_topic().set_name(topic).send().await?;
        let subscription = topic.replace("/topics/", "/subscriptions/");
        self.subscriptions
            .create_subscription()
            .set_name(&subscription)
            .set_topic(topic)
            .set_enable_message_ordering(true)
            .send()
            .await?;
        Ok(subscription)
    }

    async fn delete(&self, topic: &str, subscription: &str) -> anyhow::Result<()> {
        self.subscriptions
            .delete_subscription()
            .set_subscription(subscription)
            .send()
            .await?;
        self.topics.delete_topic().set_topic(topic).send().await?;
        Ok(())
    }
}

/// One message as a subscriber saw it.
#[derive(Debug)]
struct Received {
    data: Vec<u8>,
    ordering_key: String,
    attributes: HashMap<String, String>,
}

/// Pulls and acks `n` messages from `stream`, in delivery order, within 30 s.
async fn pull(stream: &mut MessageStream, n: usize) -> anyhow::Result<Vec<Received>> {
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while received.len() < n {
        let (message, handler) = tokio::time::timeout_at(deadline, stream.next())
            .await
            .with_context(|| format!("{} of {n} messages pulled in 30 s", received.len()))?
            .context("the message stream ended")??;
        handler.ack();
        received.push(Received {
            data: message.data.to_vec(),
            ordering_key: message.ordering_key,
            attributes: message.attributes,
        });
    }
    Ok(received)
}

fn unique_prefix() -> String {
    format!("outbox-test-{}-", Uuid::now_v7().simple())
}

fn message(destination: &str, key: &str) -> OutboxMessage {
    claimed(&NewMessage::new(destination, key, vec![1]), 1)
}

#[tokio::test]
async fn pubsub_sink_delivers_in_key_order_with_ids_headers_and_content_types() -> anyhow::Result<()>
{
    let emulator = Emulator::connect().await?;
    let db = TestDb::new().await?;
    let prefix = unique_prefix();
    let sink = emulator.sink(&prefix).await?;
    let topic = sink.topic_name("orders");
    let subscription = emulator.topic_with_ordered_subscription(&topic).await?;

    let ids = enqueue(
        &db,
        (0..30u8)
            .map(|i| {
                let m = NewMessage::new("orders", format!("key-{}", i % 3), vec![i])
                    .header("n", i.to_string());
                if i % 2 == 0 {
                    m.content_type("application/json")
                } else {
                    m
                }
            })
            .collect(),
    )
    .await?;
    relay_all(&db, sink.clone(), 30).await?;

    // One stream for the whole test: acks are sent in the background, and a stream dropped
    // before they left would see its messages redelivered.
    let mut stream = emulator.subscriber.subscribe(&subscription).build();
    let received = pull(&mut stream, 30).await?;
    let mut seen = Vec::new();
    for m in &received {
        let n = usize::from(m.data[0]);
        let attribute = |name: &str| m.attributes.get(name).map(String::as_str);
        let id: Uuid = attribute(PUBSUB_MESSAGE_ID_ATTRIBUTE)
            .context("message id attribute")?
            .parse()?;
        assert_eq!(id, ids[n]);
        assert_eq!(m.ordering_key, format!("key-{}", n % 3));
        assert_eq!(attribute("n"), Some(n.to_string().as_str()));
        let content_type = if n % 2 == 0 {
            "application/json"
        } else {
            "application/octet-stream"
        };
        assert_eq!(attribute(PUBSUB_CONTENT_TYPE_ATTRIBUTE), Some(content_type));
        assert_eq!(m.attributes.len(), 3, "{:?}", m.attributes);
        seen.push(n);
    }
    for key in 0..3 {
        let order: Vec<usize> = seen.iter().copied().filter(|n| n % 3 == key).collect();
        assert!(order.is_sorted(), "key-{key}: {order:?}");
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..30).collect::<Vec<_>>(), "each message once");

    // Pub/Sub has no publisher dedup: a republish (a crash before the mark) arrives again, with
    // the same id attribute for the consumer to deduplicate on.
    let mut again = message("orders", "key-0");
    again.id = ids[0];
    again.payload = vec![0];
    sink.publish(&again).await?;
    let duplicate = pull(&mut stream, 1).await?;
    assert_eq!(
        duplicate[0].attributes.get(PUBSUB_MESSAGE_ID_ATTRIBUTE),
        Some(&ids[0].to_string())
    );
    emulator.delete(&topic, &subscription).await?;
    Ok(())
}

#[tokio::test]
async fn pubsub_sink_retries_a_missing_topic_and_refuses_what_can_never_publish()
-> anyhow::Result<()> {
    let emulator = Emulator::connect().await?;
    let db = TestDb::new().await?;
    let prefix = unique_prefix();
    let sink = emulator.sink(&prefix).await?;

    // A topic that does not exist yet: the destination is missing, so the relay backs it off
    // (and does not dead-letter, nor spend attempts) until it is created; the key the client
    // paused on the failure is resumed for the retry.
    let missing = sink.publish(&message("late", "k")).await;
    assert!(
        matches!(&missing, Err(SinkError::Missing(_))),
        "{missing:?}"
    );
    enqueue(
        &db,
        (0..3u8)
            .map(|i| NewMessage::new("late", "k", vec![i]))
            .collect(),
    )
    .await?;
    let running = start(Relay::new(db.pool.clone(), sink.clone(), fast())?);
    eventually(30, "the relay probing the missing topic", || async {
        Ok(count(
            &db,
            "EXISTS (SELECT 1 FROM eventrail.outbox_destinations
                     WHERE destination = 'late' AND reason = 'missing' AND failures >= 3)",
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
    assert_eq!(
        count(&db, "attempts > 1").await?,
        0,
        "no attempt spent (one may be in flight)"
    );
    let topic = sink.topic_name("late");
    let subscription = emulator.topic_with_ordered_subscription(&topic).await?;
    eventually(30, "the backlog sent once the topic exists", || async {
        Ok(count(&db, "state = 'sent'").await? == 3)
    })
    .await?;
    running.stop().await?;
    let last_error: Option<String> = db
        .pool
        .get()
        .await?
        .query_one(
            "SELECT last_error FROM eventrail.outbox ORDER BY sequence LIMIT 1",
            &[],
        )
        .await?
        .get(0);
    assert!(
        last_error.is_some_and(|e| e.contains("NOT_FOUND") || e.contains("not found")),
        "the head's recorded failure is the missing topic"
    );

    // Permanent, refused before a round trip: a destination that is no topic id, and a payload
    // over Pub/Sub's 10 MB limit. (The emulator checks neither message nor attribute sizes, so
    // the service's INVALID_ARGUMENT, also permanent, is covered by the sink's unit tests.)
    let bad_name = sink.publish(&message("late/x", "k")).await;
    assert!(
        matches!(&bad_name, Err(SinkError::Permanent(_))),
        "{bad_name:?}"
    );
    let mut oversized = message("late", "k");
    oversized.payload = vec![0; 10_000_001];
    let too_large = sink.publish(&oversized).await;
    assert!(
        matches!(&too_large, Err(SinkError::Permanent(_))),
        "{too_large:?}"
    );
    sink.publish(&message("late", "k")).await?;
    emulator.delete(&topic, &subscription).await?;
    Ok(())
}
