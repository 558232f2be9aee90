//! The Apache Kafka sink.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::{Deserialize, Serialize};
use tracing::{trace, warn};

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
/// `topic.metadata.propagation.max.ms=5000` and `partitioner=murmur2_random` (the Java client's
/// partitioner). TLS and SASL (PLAIN, SCRAM, OAUTHBEARER; not GSSAPI) are client properties
/// (`security.protocol`, `ssl.*`, `sasl.*`). Set `message.max.bytes` to the topics'
/// `max.message.bytes`, so that an oversized message is refused on its own before it is sent
/// (see below).
///
/// # Failures
/// Classified (see [`SinkError`]) by librdkafka's error code. Permanent for the message: larger
/// than `message.max.bytes` (refused before it is sent), an invalid record, topic name or
/// timestamp. The destination missing: an unknown topic or partition — an operator may create
/// it, so the destination is backed off without spending attempts. The destination unavailable:
/// no acknowledgement in time (`message.timeout.ms`: the broker down or partitioned), transport,
/// name resolution, TLS and authentication failures, refused authorization, leader elections,
/// too few in-sync replicas, throttling, a full local queue, and the idempotent producer's fatal
/// errors (after which the sink makes a new producer). The rest counts against the message,
/// including a broker's "message too large": the broker refuses the whole batch the record came
/// in, which may hold other keys' messages, so the messages are retried (a message that really
/// is too large goes dead when its attempts run out).
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
        Ok(Self {
            inner: Arc::new(Inner {
                config: client,
                prefix: config.topic_prefix.clone(),
                producer: Mutex::new((0, producer)),
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
                warn!(
                    generation,
                    "replaced the Kafka producer after a fatal error"
                );
                // Dropping a producer purges and flushes it (up to 500 ms): not on this thread.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn_blocking(move || drop(old));
                }
            }
            Err(error) => warn!(%error, "could not replace the Kafka producer"),
        }
    }
}

fn create(config: &ClientConfig) -> Result<FutureProducer, KafkaSinkError> {
    config.create().map_err(KafkaSinkError::Client)
}

/// A librdkafka failure with the client's fatal-error text when there is one.
#[derive(Debug, thiserror::Error)]
#[error("{error}{}", detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
struct Failed {
    #[source]
    error: KafkaError,
    detail: Option<String>,
}

impl Sink for KafkaSink {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        let topic = self.topic_name(&message.destination);
        let id = message.id.to_string();
        let mut headers = OwnedHeaders::new_with_capacity(message.headers.len() + 2)
            .insert(Header {
                key: KAFKA_MESSAGE_ID_HEADER,
                value: Some(id.as_str()),
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
        let record = FutureRecord::to(&topic)
            .key(message.partition_key.as_bytes())
            .payload(message.payload.as_slice())
            .headers(headers);
        let (generation, producer) = self.current();
        match producer.send(record, QUEUE_TIMEOUT).await {
            Ok(delivery) => {
                trace!(
                    topic,
                    partition = delivery.partition,
                    offset = delivery.offset,
                    "delivered"
                );
                Ok(())
            }
            Err((error, _)) => {
                let fatal = producer.client().fatal_error();
                if fatal.is_some() {
                    self.replace(generation);
                }
                let class = classify(&error);
                let failed = Failed {
                    error,
                    detail: fatal.map(|(code, text)| format!("fatal {code:?}: {text}")),
                };
                Err(class(failed))
            }
        }
    }
}

/// Classifies a failed publish by librdkafka's error code (see [`KafkaSink`]); returns the
/// constructor of the [`SinkError`].
fn classify(error: &KafkaError) -> fn(Failed) -> SinkError {
    match error.rdkafka_error_code() {
        Some(code) => by_code(code),
        // A producer that cannot be reached (dropped, a runtime shutting down).
        None => SinkError::unavailable,
    }
}

fn by_code(code: Code) -> fn(Failed) -> SinkError {
    match code {
        // This record will never be accepted: over message.max.bytes (refused before sending),
        // malformed, a name that is no topic, a timestamp the broker refuses.
        Code::MessageSizeTooLarge
        | Code::InvalidMessageSize
        | Code::BadMessage
        | Code::InvalidRecord
        | Code::InvalidTopic
        | Code::InvalidTimestamp
        | Code::InvalidArgument
        | Code::UnsupportedForMessageFormat => SinkError::permanent,
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
        // Counts against the message: a broker's "message too large" (it refuses the whole
        // batch, which may hold other keys' messages), a corrupt record, anything unexpected.
        _ => SinkError::transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FailureClass;

    fn class(code: Code) -> FailureClass {
        let failed = Failed {
            error: KafkaError::MessageProduction(code),
            detail: None,
        };
        by_code(code)(failed).class()
    }

    #[test]
    fn delivery_failures_are_classified_by_whom_they_are_about() {
        for code in [
            Code::MessageSizeTooLarge,
            Code::InvalidRecord,
            Code::InvalidTopic,
        ] {
            assert_eq!(class(code), FailureClass::MessagePermanent, "{code:?}");
        }
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
