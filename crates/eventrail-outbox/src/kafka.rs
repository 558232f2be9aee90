//! The Apache Kafka sink.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::{Deserialize, Serialize};
use tracing::{debug, trace, warn};

use crate::{OutboxMessage, Sink, SinkError};

/// Record header carrying the message id (the same on every republish of the message).
pub const KAFKA_MESSAGE_ID_HEADER: &str = "eventrail-message-id";

/// Record header carrying the content type.
pub const KAFKA_CONTENT_TYPE_HEADER: &str = "content-type";

/// Properties the sink sets unless the configuration does, and why.
const DEFAULTS: &[(&str, &str)] = &[
    // A publish that the broker has not acknowledged within 20 s fails (as unavailable), below
    // the relay's default 30 s lease, so that another relay does not publish the message
    // meanwhile. librdkafka's own default is 5 minutes.
    ("message.timeout.ms", "20000"),
    // Like the other sinks, the sink does not create destinations: a missing topic is reported
    // (and backed off) instead of being created with the broker's defaults.
    ("allow.auto.create.topics", "false"),
    // A topic still unknown after 5 s is reported missing (librdkafka waits 30 s by default, in
    // case a topic just created has not reached every broker yet).
    ("topic.metadata.propagation.max.ms", "5000"),
    // The relay has one message of a key in flight at a time, so every millisecond a record
    // waits for its batch delays the key's next message; thousands of keys in flight still fill
    // batches. librdkafka waits 5 ms by default; 1 ms relayed about a third more messages a
    // second in `eventrail-bench outbox`.
    ("linger.ms", "1"),
    // The partitioner of the Java client (murmur2 of the key), so that a key lands on the
    // partition where Java producers put it.
    ("partitioner", "murmur2_random"),
];

/// Properties the sink's guarantees rest on: always these values.
const REQUIRED: &[(&str, &str)] = &[("enable.idempotence", "true"), ("acks", "all")];

/// Properties that would change what a publish means (transactions need commits the sink does not
/// make).
const REFUSED: &[&str] = &["transactional.id"];

/// How long a publish waits for room in librdkafka's local queue before it reports the
/// destination unavailable.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of a [`KafkaSink`]: the bootstrap servers, a topic prefix, and librdkafka client
/// properties (TLS, SASL, timeouts, batching: see librdkafka's `CONFIGURATION.md`). Loadable with
/// serde:
///
/// ```json
/// { "bootstrap_servers": "kafka-1:9092,kafka-2:9092", "topic_prefix": "shop.",
///   "properties": { "security.protocol": "sasl_ssl", "sasl.mechanism": "SCRAM-SHA-512",
///                   "sasl.username": "relay", "sasl.password": "…" } }
/// ```
///
/// `Debug` shows the property names, never their values (they may be passwords).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[must_use]
pub struct KafkaSinkConfig {
    bootstrap_servers: String,
    #[serde(default)]
    topic_prefix: String,
    #[serde(default)]
    properties: BTreeMap<String, String>,
}

impl fmt::Debug for KafkaSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSinkConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("topic_prefix", &self.topic_prefix)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KafkaSinkConfig {
    /// Publishes through `bootstrap_servers` (`host:port`, comma-separated).
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            topic_prefix: String::new(),
            properties: BTreeMap::new(),
        }
    }

    /// Puts `prefix` before every destination to name its topic (e.g. `shop.`).
    pub fn topic_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.topic_prefix = prefix.into();
        self
    }

    /// Sets a librdkafka client property (`security.protocol`, `sasl.mechanism`,
    /// `ssl.ca.location`, `linger.ms`, `message.max.bytes`…).
    pub fn property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }

    /// The bootstrap servers.
    #[must_use]
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// The client configuration the producer is made of: the sink's defaults, then the
    /// properties, then the required settings.
    ///
    /// # Errors
    /// [`KafkaSinkError::Refused`] for a property that turns off idempotence or `acks=all`, or
    /// that asks for transactions.
    pub fn client_config(&self) -> Result<ClientConfig, KafkaSinkError> {
        let mut config = ClientConfig::new();
        for (name, value) in DEFAULTS {
            config.set(*name, *value);
        }
        for (name, value) in &self.properties {
            if REFUSED.contains(&name.as_str()) {
                return Err(KafkaSinkError::Refused {
                    property: name.clone(),
                    reason: "the sink publishes outside transactions",
                });
            }
            if let Some((_, required)) = REQUIRED.iter().find(|(n, _)| n == name)
                && !same_setting(name, value, required)
            {
                return Err(KafkaSinkError::Refused {
                    property: name.clone(),
                    reason: "the sink needs an idempotent producer with acks=all",
                });
            }
            config.set(name, value);
        }
        config.set("bootstrap.servers", &self.bootstrap_servers);
        for (name, value) in REQUIRED {
            config.set(*name, *value);
        }
        Ok(config)
    }
}

/// Whether `value` means `required` (`acks=-1` is `acks=all`; booleans in any case).
fn same_setting(name: &str, value: &str, required: &str) -> bool {
    let value = value.trim().to_ascii_lowercase();
    value == required || (name == "acks" && value == "-1")
}

/// A [`KafkaSink`] could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaSinkError {
    /// A property would take away what the sink relies on (idempotence, `acks=all`, no
    /// transactions): remove it from the configuration.
    #[error("kafka property {property} refused: {reason}")]
    Refused {
        /// The property's name.
        property: String,
        /// Why it cannot be set.
        reason: &'static str,
    },
    /// librdkafka refused the configuration (an unknown property, a bad value, TLS files it
    /// cannot read): fix the property it names.
    #[error("kafka producer could not be created")]
    Client(#[source] KafkaError),
}

/// Publishes to Apache Kafka (or a broker speaking its protocol) with an idempotent producer
/// (`enable.idempotence=true`, `acks=all`): the topic is the message's destination after an
/// optional prefix, the record key is the partition key — so a key's messages go to one
/// partition, in order — and the record headers are [`KAFKA_MESSAGE_ID_HEADER`],
/// [`KAFKA_CONTENT_TYPE_HEADER`] and the message's headers (a header of the message with one of
/// those two names is left out). A message counts as sent once its delivery report says the
/// in-sync replicas have it.
///
/// # What is deduplicated, and what is not
/// The idempotent producer drops the duplicates of its own retries: a produce request that
/// librdkafka sends again after a lost response or a reconnection is written once, in order. It
/// does so within one producer session (producer id and sequence numbers) only. Kafka has no
/// message-id deduplication: when the relay publishes a message again — after a crash between the
/// broker's acknowledgement and the relay's mark, an expired lease, a delivery report lost to a
/// timeout — the topic holds it twice, with the same [`KAFKA_MESSAGE_ID_HEADER`], on the same
/// partition, after the first copy. Consumers deduplicate on that header (an
/// [`Inbox`](crate::Inbox) does it in the transaction that applies the message).
///
/// # Settings
/// Made from a [`KafkaSinkConfig`]; unless its properties say otherwise, the sink sets
/// `message.timeout.ms=20000` (a publish reports failure within 20 s, below the relay's default
/// 30 s lease: keep it below the lease), `allow.auto.create.topics=false` (topics are not
/// created by publishing; a missing one is reported),
/// `topic.metadata.propagation.max.ms=5000`, `linger.ms=1` (a key's next message waits for the
/// previous one's report, so batching delays add up per key) and `partitioner=murmur2_random`
/// (the Java client's partitioner). TLS and SASL (PLAIN, SCRAM, OAUTHBEARER; not GSSAPI) are client properties
/// (`security.protocol`, `ssl.*`, `sasl.*`). Setting `message.max.bytes` to the topics'
/// `max.message.bytes` refuses an oversized message before it is sent (see below).
///
/// # Failures
/// Classified (see [`SinkError`]) by librdkafka's error code. Permanent for the message: what
/// librdkafka refuses before sending, for this record alone (larger than `message.max.bytes`,
/// malformed), and a name that is no valid topic. The destination missing: an unknown topic or partition — an operator may create
/// it, so the destination is backed off without spending attempts. The destination unavailable:
/// no acknowledgement in time (`message.timeout.ms`: the broker down or partitioned), transport,
/// name resolution, TLS and authentication failures, refused authorization, leader elections,
/// too few in-sync replicas, throttling, a full local queue, and the idempotent producer's fatal
/// errors (after which the sink makes a new producer; it also makes one when nothing was delivered
/// for two delivery timeouts, which is how librdkafka can be left by a broker that lost the
/// idempotent producer's state). The rest counts against the message.
///
/// A broker judges a whole produce request ("message too large" against the topic's
/// `max.message.bytes`, an invalid record or timestamp), and a request carries the records of
/// many keys. When it refuses one, the sink sends the record again in a request of its own (on a
/// second producer, made on first use, that sends one record per request): refused again, it is
/// permanent; accepted, it was another record's fault and it is sent. So one oversized message
/// does not take down the messages it was batched with.
///
/// Clones share one producer (one connection per broker, with its own polling thread).
#[derive(Clone)]
pub struct KafkaSink {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    prefix: String,
    /// The producer and its generation, which counts replacements after fatal errors.
    producer: Mutex<(u64, FutureProducer)>,
    /// A producer that sends one record per request, to put a record refused in a batch to the
    /// test alone; made on first use.
    alone: Mutex<Option<FutureProducer>>,
    /// When the sink was made: the origin of `last_delivery`.
    origin: Instant,
    /// Milliseconds from `origin` to the last delivery (or the last new producer).
    last_delivery: AtomicU64,
    /// `message.timeout.ms`.
    delivery_timeout: Duration,
}

impl fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSink")
            .field(
                "bootstrap_servers",
                &self.inner.config.get("bootstrap.servers"),
            )
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// A sink with its own producer. The producer connects in the background: a broker that is
    /// down shows as unavailable publishes, not as an error here.
    ///
    /// # Errors
    /// [`KafkaSinkError::Refused`] for a property the sink cannot honour,
    /// [`KafkaSinkError::Client`] when librdkafka refuses the configuration.
    pub fn new(config: &KafkaSinkConfig) -> Result<Self, KafkaSinkError> {
        let client = config.client_config()?;
        let producer = create(&client)?;
        let delivery_timeout = ["message.timeout.ms", "delivery.timeout.ms"]
            .iter()
            .find_map(|name| client.get(name)?.trim().parse().ok())
            .map_or(Duration::from_secs(20), Duration::from_millis);
        Ok(Self {
            inner: Arc::new(Inner {
                config: client,
                prefix: config.topic_prefix.clone(),
                producer: Mutex::new((0, producer)),
                alone: Mutex::new(None),
                origin: Instant::now(),
                last_delivery: AtomicU64::new(0),
                delivery_timeout,
            }),
        })
    }

    /// The topic messages for `destination` go to.
    #[must_use]
    pub fn topic_name(&self, destination: &str) -> String {
        format!("{}{}", self.inner.prefix, destination)
    }

    /// The producer (a handle on the sink's: to flush it, read its metadata, or publish records
    /// of your own with the same settings).
    pub fn producer(&self) -> FutureProducer {
        self.current().1
    }

    /// Notes a delivery (or a new producer) now.
    fn delivered(&self) {
        let now = u64::try_from(self.inner.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.inner.last_delivery.store(now, Ordering::Relaxed);
    }

    /// How long since the last delivery (or new producer).
    fn since_delivery(&self) -> Duration {
        let last = Duration::from_millis(self.inner.last_delivery.load(Ordering::Relaxed));
        self.inner.origin.elapsed().saturating_sub(last)
    }

    fn current(&self) -> (u64, FutureProducer) {
        self.inner
            .producer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// After a fatal error of the idempotent producer (its producer id fenced, sequence numbers
    /// out of step after a broker lost its state), nothing can be published with it again:
    /// replaces the producer of `generation` with a new one, once.
    fn replace(&self, generation: u64) {
        let mut current = self
            .inner
            .producer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if current.0 != generation {
            return; // another publish replaced it already
        }
        match create(&self.inner.config) {
            Ok(producer) => {
                let old = std::mem::replace(&mut *current, (generation + 1, producer));
                drop(current);
                self.delivered();
                warn!(generation, "replaced the Kafka producer");
                drop_elsewhere(old);
            }
            Err(error) => warn!(%error, "could not replace the Kafka producer"),
        }
    }
}

fn create(config: &ClientConfig) -> Result<FutureProducer, KafkaSinkError> {
    config.create().map_err(KafkaSinkError::Client)
}

/// A librdkafka failure, with the client's fatal-error text when there is one.
#[derive(Debug, thiserror::Error)]
#[error("{}{}", stage.describe(), detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
struct Failed {
    stage: Stage,
    #[source]
    error: KafkaError,
    detail: Option<String>,
}

impl Stage {
    fn describe(self) -> &'static str {
        match self {
            Self::Enqueue => "librdkafka refused the record",
            Self::Delivery => "the delivery report is a failure",
            Self::Alone => "refused again when sent alone",
        }
    }
}

/// The record of `message` for `topic`.
fn record<'a>(
    topic: &'a str,
    id: &'a str,
    message: &'a OutboxMessage,
) -> FutureRecord<'a, [u8], [u8]> {
    let mut headers = OwnedHeaders::new_with_capacity(message.headers.len() + 2)
        .insert(Header {
            key: KAFKA_MESSAGE_ID_HEADER,
            value: Some(id),
        })
        .insert(Header {
            key: KAFKA_CONTENT_TYPE_HEADER,
            value: Some(message.content_type.as_str()),
        });
    for (name, value) in &message.headers {
        if name != KAFKA_MESSAGE_ID_HEADER && name != KAFKA_CONTENT_TYPE_HEADER {
            headers = headers.insert(Header {
                key: name.as_str(),
                value: Some(value.as_str()),
            });
        }
    }
    FutureRecord::to(topic)
        .key(message.partition_key.as_bytes())
        .payload(message.payload.as_slice())
        .headers(headers)
}

/// Sends `record` and waits for its delivery report; a failure says at which stage.
async fn send(
    producer: &FutureProducer,
    mut record: FutureRecord<'_, [u8], [u8]>,
) -> Result<(), (KafkaError, Stage)> {
    let started = Instant::now();
    let delivery = loop {
        match producer.send_result(record) {
            Ok(delivery) => break delivery,
            // librdkafka's local queue is full: wait for room, for a while.
            Err((KafkaError::MessageProduction(Code::QueueFull), back))
                if started.elapsed() < QUEUE_TIMEOUT =>
            {
                record = back;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err((error, _)) => return Err((error, Stage::Enqueue)),
        }
    };
    match delivery.await {
        Ok(Ok(delivery)) => {
            trace!(
                partition = delivery.partition,
                offset = delivery.offset,
                "delivered"
            );
            Ok(())
        }
        Ok(Err((error, _))) => Err((error, Stage::Delivery)),
        // The producer went away with the report (replaced after a fatal error).
        Err(_) => Err((KafkaError::Canceled, Stage::Delivery)),
    }
}

/// What a broker refuses for a whole produce request, which may carry other keys' records.
fn refuses_the_request(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            Code::MessageSizeTooLarge
                | Code::MessageBatchTooLarge
                | Code::InvalidRecord
                | Code::InvalidTimestamp
        )
    )
}

impl Sink for KafkaSink {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        let topic = self.topic_name(&message.destination);
        let id = message.id.to_string();
        let (generation, producer) = self.current();
        match send(&producer, record(&topic, &id, message)).await {
            Ok(()) => {
                self.delivered();
                Ok(())
            }
            // The broker refused the request the record went in, perhaps for another record of
            // it: the record alone, in a request of its own, tells whose fault it was. (Nothing of
            // this key is in flight meanwhile: the relay publishes a key's messages one by one.)
            Err((error, Stage::Delivery)) if refuses_the_request(&error) => {
                let alone = self.alone().map_err(SinkError::unavailable)?;
                debug!(topic, %error, "refused in a batch; sending the record alone");
                match send(&alone, record(&topic, &id, message)).await {
                    Ok(()) => {
                        self.delivered();
                        Ok(())
                    }
                    Err((error, Stage::Delivery)) if refuses_the_request(&error) => {
                        Err(SinkError::permanent(Failed {
                            stage: Stage::Alone,
                            error,
                            detail: None,
                        }))
                    }
                    Err((error, stage)) => Err(self.failed(None, &alone, error, stage)),
                }
            }
            Err((error, stage)) => Err(self.failed(Some(generation), &producer, error, stage)),
        }
    }
}

impl KafkaSink {
    /// The producer that sends one record per request (made on first use).
    fn alone(&self) -> Result<FutureProducer, KafkaSinkError> {
        let mut alone = self
            .inner
            .alone
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(producer) = alone.as_ref() {
            return Ok(producer.clone());
        }
        let mut config = self.inner.config.clone();
        config.set("batch.num.messages", "1").set("linger.ms", "0");
        let producer = create(&config)?;
        *alone = Some(producer.clone());
        Ok(producer)
    }

    /// Classifies a failure at `stage`; when `producer` hit a fatal error, replaces it (the main
    /// producer of `generation`, or the one that sends records alone).
    fn failed(
        &self,
        generation: Option<u64>,
        producer: &FutureProducer,
        error: KafkaError,
        stage: Stage,
    ) -> SinkError {
        let fatal = producer.client().fatal_error();
        if let Some(generation) = generation
            && fatal.is_none()
            && error.rdkafka_error_code() == Some(Code::MessageTimedOut)
            && self.since_delivery() > 2 * self.inner.delivery_timeout
        {
            // Nothing delivered for two delivery timeouts. A broker that lost the idempotent
            // producer's state (restarted without its log) can leave librdkafka timing out every
            // record without raising a fatal error: a new producer starts afresh. While the
            // broker is really down, this makes a new producer every other timeout, at no harm.
            warn!(
                since = ?self.since_delivery(),
                "no Kafka delivery for two delivery timeouts: replacing the producer"
            );
            self.replace(generation);
        }
        if fatal.is_some() {
            match generation {
                Some(generation) => self.replace(generation),
                None => {
                    let old = self
                        .inner
                        .alone
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .take();
                    drop_elsewhere(old);
                }
            }
        }
        let class = classify(&error, stage);
        class(Failed {
            stage,
            error,
            detail: fatal.map(|(code, text)| format!("fatal {code:?}: {text}")),
        })
    }
}

/// Dropping a producer purges and flushes it (up to 500 ms) and joins its thread: not on a
/// runtime's worker thread.
fn drop_elsewhere<T: Send + 'static>(old: T) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || drop(old))),
        Err(_) => drop(old),
    }
}

/// Where a publish failed: librdkafka refused to enqueue the record (about this record alone), or
/// the delivery report said so (about the produce request, which may carry other records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Enqueue,
    Delivery,
    /// Sent again in a request of its own, after the broker refused a whole request.
    Alone,
}

/// Classifies a failed publish by librdkafka's error code (see [`KafkaSink`]); returns the
/// constructor of the [`SinkError`].
fn classify(error: &KafkaError, stage: Stage) -> fn(Failed) -> SinkError {
    match error.rdkafka_error_code() {
        Some(code) => by_code(code, stage),
        // A producer that cannot be reached (dropped, a runtime shutting down).
        None => SinkError::unavailable,
    }
}

fn by_code(code: Code, stage: Stage) -> fn(Failed) -> SinkError {
    match code {
        // Refused before sending, for this record alone: over message.max.bytes, malformed.
        Code::MessageSizeTooLarge
        | Code::InvalidMessageSize
        | Code::BadMessage
        | Code::InvalidRecord
        | Code::InvalidArgument
            if stage == Stage::Enqueue =>
        {
            SinkError::permanent
        }
        // A name that is no topic, a topic that cannot store records with headers: nothing
        // published there will ever be accepted.
        Code::InvalidTopic | Code::UnsupportedForMessageFormat => SinkError::permanent,
        // The topic (or partition) does not exist: an operator may create it.
        Code::UnknownTopicOrPartition | Code::UnknownTopic | Code::UnknownPartition => {
            SinkError::missing
        }
        // The broker, not the message: unreachable, too slow, electing, refusing this client,
        // short of replicas, throttling; the local queue full; the idempotent producer's fatal
        // state or its purge on replacement.
        Code::MessageTimedOut
        | Code::OperationTimedOut
        | Code::RequestTimedOut
        | Code::AllBrokersDown
        | Code::BrokerTransportFailure
        | Code::Resolve
        | Code::NetworkException
        | Code::BrokerNotAvailable
        | Code::LeaderNotAvailable
        | Code::NotLeaderForPartition
        | Code::ReplicaNotAvailable
        | Code::NotEnoughReplicas
        | Code::NotEnoughReplicasAfterAppend
        | Code::ISRInsufficient
        | Code::KafkaStorageError
        | Code::TopicAuthorizationFailed
        | Code::ClusterAuthorizationFailed
        | Code::SaslAuthenticationFailed
        | Code::Authentication
        | Code::SSL
        | Code::ThrottlingQuotaExceeded
        | Code::QueueFull
        | Code::Fatal
        | Code::Fenced
        | Code::ProducerFenced
        | Code::OutOfOrderSequenceNumber
        | Code::UnknownProducerId
        | Code::InvalidProducerEpoch
        | Code::InvalidRequiredAcks
        | Code::PurgeQueue
        | Code::PurgeInflight => SinkError::unavailable,
        // Counts against the message: what the broker refuses for a whole produce request ("too
        // large", an invalid record or timestamp: the request may carry other keys' records, so
        // they are retried, and a record that really is at fault goes dead when its attempts run
        // out), a corrupt record, anything unexpected.
        _ => SinkError::transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FailureClass;

    fn class_at(code: Code, stage: Stage) -> FailureClass {
        let failed = Failed {
            stage,
            error: KafkaError::MessageProduction(code),
            detail: None,
        };
        by_code(code, stage)(failed).class()
    }

    fn class(code: Code) -> FailureClass {
        class_at(code, Stage::Delivery)
    }

    #[test]
    fn delivery_failures_are_classified_by_whom_they_are_about() {
        for code in [
            Code::MessageSizeTooLarge,
            Code::InvalidRecord,
            Code::BadMessage,
        ] {
            assert_eq!(
                class_at(code, Stage::Enqueue),
                FailureClass::MessagePermanent,
                "{code:?} refused before sending"
            );
            assert_eq!(
                class_at(code, Stage::Delivery),
                FailureClass::MessageTransient,
                "{code:?} from the broker, for a whole request"
            );
        }
        assert_eq!(class(Code::InvalidTopic), FailureClass::MessagePermanent);
        for code in [Code::UnknownTopicOrPartition, Code::UnknownTopic] {
            assert_eq!(class(code), FailureClass::DestinationMissing, "{code:?}");
        }
        for code in [
            Code::MessageTimedOut,
            Code::AllBrokersDown,
            Code::BrokerTransportFailure,
            Code::NotEnoughReplicas,
            Code::TopicAuthorizationFailed,
            Code::Fatal,
            Code::QueueFull,
        ] {
            assert_eq!(
                class(code),
                FailureClass::DestinationUnavailable,
                "{code:?}"
            );
        }
        for code in [
            Code::MessageBatchTooLarge,
            Code::InvalidMessage,
            Code::Unknown,
        ] {
            assert_eq!(class(code), FailureClass::MessageTransient, "{code:?}");
        }
    }

    #[test]
    fn the_client_config_keeps_idempotence_and_acks_all() -> Result<(), KafkaSinkError> {
        let config = KafkaSinkConfig::new("127.0.0.1:9092")
            .property("linger.ms", "20")
            .property("message.timeout.ms", "5000")
            .property("acks", "-1")
            .client_config()?;
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("linger.ms"), Some("20"));
        assert_eq!(config.get("message.timeout.ms"), Some("5000"), "ours win");
        assert_eq!(config.get("allow.auto.create.topics"), Some("false"));
        for (name, value) in [
            ("enable.idempotence", "false"),
            ("acks", "1"),
            ("transactional.id", "relay-1"),
        ] {
            let refused = KafkaSinkConfig::new("b:9092")
                .property(name, value)
                .client_config();
            assert!(
                matches!(&refused, Err(KafkaSinkError::Refused { property, .. }) if property == name),
                "{name}={value}: {refused:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn config_loads_from_json_and_debug_hides_property_values() -> Result<(), serde_json::Error> {
        let config: KafkaSinkConfig = serde_json::from_str(
            r#"{ "bootstrap_servers": "k1:9092,k2:9092", "topic_prefix": "shop.",
                 "properties": { "security.protocol": "sasl_ssl", "sasl.password": "hunter2" } }"#,
        )?;
        assert_eq!(
            config,
            KafkaSinkConfig::new("k1:9092,k2:9092")
                .topic_prefix("shop.")
                .property("security.protocol", "sasl_ssl")
                .property("sasl.password", "hunter2")
        );
        let shown = format!("{config:?}");
        assert!(
            shown.contains("sasl.password") && !shown.contains("hunter2"),
            "{shown}"
        );
        let unknown = serde_json::from_str::<KafkaSinkConfig>(r#"{ "bootstrap": "k:9092" }"#);
        assert!(unknown.is_err());
        Ok(())
    }

    /// TLS and SASL reach librdkafka: it accepts them at creation only when it was built with
    /// OpenSSL (no connection is made here).
    #[test]
    fn tls_and_sasl_properties_pass_through() -> Result<(), KafkaSinkError> {
        let sink = KafkaSink::new(
            &KafkaSinkConfig::new("127.0.0.1:1")
                .property("security.protocol", "sasl_ssl")
                .property("sasl.mechanism", "SCRAM-SHA-256")
                .property("sasl.username", "relay")
                .property("sasl.password", "secret"),
        )?;
        assert_eq!(sink.topic_name("orders"), "orders");
        let unknown = KafkaSink::new(&KafkaSinkConfig::new("b:1").property("no.such", "1"));
        assert!(
            matches!(unknown, Err(KafkaSinkError::Client(_))),
            "{unknown:?}"
        );
        Ok(())
    }
}
