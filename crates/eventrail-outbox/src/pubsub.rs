//! The Google Cloud Pub/Sub sink.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::retry_policy::RetryPolicyExt;
use google_cloud_pubsub::client::{BasePublisher, Publisher};
use google_cloud_pubsub::error::PublishError;
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::retry_policy::RetryableErrors;
use tracing::debug;

use crate::{FailureClass, OutboxMessage, Sink, SinkError};

/// Attribute carrying the message id. Pub/Sub has no publisher-side dedup id and delivers at
/// least once, so consumers deduplicate on this attribute (e.g. with [`Inbox`](crate::Inbox)).
pub const PUBSUB_MESSAGE_ID_ATTRIBUTE: &str = "eventrail-message-id";

/// Attribute carrying the content type (the name the CloudEvents Pub/Sub binding uses).
pub const PUBSUB_CONTENT_TYPE_ATTRIBUTE: &str = "content-type";

/// Where the emulator listens unless `PUBSUB_EMULATOR_HOST` says otherwise.
pub const PUBSUB_EMULATOR_DEFAULT_HOST: &str = "127.0.0.1:8085";

/// The largest payload Pub/Sub accepts (10 MB); a larger one is refused without a round trip.
const MAX_PAYLOAD_BYTES: usize = 10_000_000;

/// How long one publish may retry transient failures inside the client (below the relay's
/// default 30 s lease, so that another relay does not publish the same message meanwhile).
const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(20);

/// Publishes to Google Cloud Pub/Sub: the topic is
/// `projects/{project}/topics/{prefix}{destination}`, the partition key is the message's ordering
/// key, the message id goes in the [`PUBSUB_MESSAGE_ID_ATTRIBUTE`] attribute, the content type in
/// [`PUBSUB_CONTENT_TYPE_ATTRIBUTE`], and the headers are attributes as they are (the two
/// attributes above win over headers of the same name). A message counts as sent once Pub/Sub
/// returned its server-side id.
///
/// Pub/Sub has no dedup id for publishers: a message republished after a crash between the ack
/// and the relay's mark arrives twice, with the same [`PUBSUB_MESSAGE_ID_ATTRIBUTE`], which is
/// what consumers deduplicate on (an [`Inbox`](crate::Inbox) does it in the transaction that
/// applies the message).
///
/// Per-key order needs subscriptions created with message ordering enabled; without it, Pub/Sub
/// accepts ordering keys but delivers in any order. Pub/Sub orders messages published in the same
/// region: relays running in several regions should share a regional endpoint (see
/// [`new`](Self::new)). After a failed publish the client pauses the
/// message's ordering key; the sink resumes it at once, since the relay never has two messages of
/// one key in flight and retries only after the failure was recorded.
///
/// Failures are classified (see [`SinkError`]). Permanent for the message: what the same message
/// would meet again whatever the broker's state — a destination that is not a valid topic id, a
/// payload over 10 MB, and `INVALID_ARGUMENT` (too many or too long attributes, an ordering key
/// over its limit). A missing topic (`NOT_FOUND`) makes the destination missing: topics are often
/// created by deployment after the producers started, so it is backed off without spending
/// attempts. No answer (timeouts, IO and connection errors, `UNAVAILABLE`, `DEADLINE_EXCEEDED`),
/// `RESOURCE_EXHAUSTED` (quota, throttling) and refused credentials (`PERMISSION_DENIED`,
/// `UNAUTHENTICATED`, which an operator fixes) make it unavailable. The rest (`INTERNAL`,
/// `ABORTED`, a paused ordering key, a publisher shut down) counts against the message.
///
/// The sink keeps one [`Publisher`] per topic, created on first use and shared by its clones.
/// The client inside keeps a small task for every ordering key it has seen on a topic, for as long
/// as the sink lives: with very many distinct partition keys, its memory grows with them.
#[derive(Clone)]
pub struct PubSubSink {
    client: BasePublisher,
    project: String,
    prefix: String,
    endpoint: Option<String>,
    publishers: Arc<Mutex<HashMap<String, Publisher>>>,
}

// No credentials in here: the client keeps them and this prints neither it nor them.
impl fmt::Debug for PubSubSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubSubSink")
            .field("project", &self.project)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("topics", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl PubSubSink {
    /// A sink on a client of yours (endpoint, credentials, retry policy of your choice) for the
    /// topics of `project`. The client's retry policy bounds how long a publish may take: keep it
    /// below the relay's lease.
    #[must_use]
    pub fn new(client: BasePublisher, project: impl Into<String>) -> Self {
        Self {
            client,
            project: project.into(),
            prefix: String::new(),
            endpoint: None,
            publishers: Arc::default(),
        }
    }

    /// A sink on Google Cloud for the topics of `project`, with Application Default Credentials
    /// (`GOOGLE_APPLICATION_CREDENTIALS`, the gcloud user's, or the metadata server's), retrying a
    /// publish's transient failures for up to 20 s.
    ///
    /// # Errors
    /// The client builder's error when the credentials cannot be found or loaded.
    pub async fn gcp(
        project: impl Into<String>,
    ) -> Result<Self, google_cloud_gax::client_builder::Error> {
        let client = BasePublisher::builder()
            .with_retry_policy(RetryableErrors.with_time_limit(DEFAULT_PUBLISH_TIMEOUT))
            .build()
            .await?;
        Ok(Self::new(client, project))
    }

    /// A sink on the Pub/Sub emulator at `PUBSUB_EMULATOR_HOST` (`host:port`), or
    /// [`PUBSUB_EMULATOR_DEFAULT_HOST`], with anonymous credentials, for the topics of `project`
    /// (the emulator accepts any project). Connecting is lazy: an emulator that is down shows as
    /// transient publish failures.
    ///
    /// # Errors
    /// The client builder's error (not expected with anonymous credentials).
    pub async fn emulator(
        project: impl Into<String>,
    ) -> Result<Self, google_cloud_gax::client_builder::Error> {
        Self::emulator_at(&emulator_endpoint(), project).await
    }

    /// A sink on the Pub/Sub emulator at `endpoint` (`http://host:port`), with anonymous
    /// credentials, for the topics of `project`.
    ///
    /// # Errors
    /// The client builder's error (not expected with anonymous credentials).
    pub async fn emulator_at(
        endpoint: &str,
        project: impl Into<String>,
    ) -> Result<Self, google_cloud_gax::client_builder::Error> {
        let client = BasePublisher::builder()
            .with_endpoint(endpoint)
            .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
            .with_retry_policy(RetryableErrors.with_time_limit(DEFAULT_PUBLISH_TIMEOUT))
            .build()
            .await?;
        let mut sink = Self::new(client, project);
        sink.endpoint = Some(endpoint.to_owned());
        Ok(sink)
    }

    /// Puts `prefix` before every destination to make the topic id (e.g. `outbox-`).
    #[must_use]
    pub fn topic_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The full name of the topic a destination publishes to:
    /// `projects/{project}/topics/{prefix}{destination}`.
    #[must_use]
    pub fn topic_name(&self, destination: &str) -> String {
        format!(
            "projects/{}/topics/{}{destination}",
            self.project, self.prefix
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Publisher>> {
        self.publishers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn publisher(&self, topic: &str) -> Publisher {
        self.lock()
            .entry(topic.to_owned())
            .or_insert_with(|| {
                // The relay sends one message per ordering key at a time, and the client batches
                // per ordering key: waiting for more messages would only add latency.
                self.client
                    .publisher(topic)
                    .set_message_count_threshold(1)
                    .build()
            })
            .clone()
    }
}

/// The emulator's endpoint: `http://` and `PUBSUB_EMULATOR_HOST`, or the default host.
fn emulator_endpoint() -> String {
    let host = std::env::var("PUBSUB_EMULATOR_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| PUBSUB_EMULATOR_DEFAULT_HOST.to_owned());
    format!("http://{host}")
}

/// A message that Pub/Sub can never accept.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("not a valid Pub/Sub topic id: {0:?}")]
    TopicId(String),
    #[error("payload of {0} bytes is over Pub/Sub's limit of 10 MB")]
    TooLarge(usize),
}

impl Sink for PubSubSink {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        let topic_id = format!("{}{}", self.prefix, message.destination);
        if !is_topic_id(&topic_id) {
            return Err(SinkError::permanent(Refused::TopicId(topic_id)));
        }
        if message.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(SinkError::permanent(Refused::TooLarge(
                message.payload.len(),
            )));
        }
        let topic = self.topic_name(&message.destination);
        let publisher = self.publisher(&topic);
        let id = message.id.to_string();
        let attributes = message
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain([
                (PUBSUB_CONTENT_TYPE_ATTRIBUTE, message.content_type.as_str()),
                (PUBSUB_MESSAGE_ID_ATTRIBUTE, id.as_str()),
            ])
            .collect::<HashMap<_, _>>();
        let outgoing = Message::new()
            .set_data(message.payload.clone())
            .set_attributes(attributes)
            .set_ordering_key(message.partition_key.as_str());
        match publisher.publish(outgoing).await {
            Ok(_server_id) => Ok(()),
            Err(error) => {
                // The client paused the key so that later messages would not overtake this one;
                // the relay's retry of this very message is the next one, so let it through.
                publisher.resume_publish(message.partition_key.as_str());
                if matches!(error, PublishError::Shutdown) {
                    // The publisher's background task is gone: build a new one next time.
                    self.lock().remove(&topic);
                }
                debug!(topic, error = %eventrail_core::error_chain(&error), "pubsub publish failed");
                Err(classify(error))
            }
        }
    }
}

/// Whom a failure is about; see [`PubSubSink`].
fn classify(error: PublishError) -> SinkError {
    let class = match &error {
        PublishError::Rpc(rpc) => {
            let code = rpc.status().map(|s| s.code);
            if rpc.is_serialization() || rpc.is_binding() || code == Some(Code::InvalidArgument) {
                FailureClass::MessagePermanent
            } else if code == Some(Code::NotFound) {
                FailureClass::DestinationMissing
            } else if rpc.is_timeout()
                || rpc.is_io()
                || rpc.is_connect()
                || rpc.is_transport()
                || rpc.is_authentication()
                || code.is_some_and(|c| {
                    matches!(
                        c,
                        Code::Unavailable
                            | Code::DeadlineExceeded
                            | Code::ResourceExhausted
                            | Code::PermissionDenied
                            | Code::Unauthenticated
                    )
                })
            {
                FailureClass::DestinationUnavailable
            } else {
                FailureClass::MessageTransient
            }
        }
        _ => FailureClass::MessageTransient,
    };
    match class {
        FailureClass::MessagePermanent => SinkError::permanent(error),
        FailureClass::DestinationMissing => SinkError::missing(error),
        FailureClass::DestinationUnavailable => SinkError::unavailable(error),
        _ => SinkError::transient(error),
    }
}

/// Pub/Sub's topic id rules: 3 to 255 characters, a letter first, then letters, digits and
/// `-_.~+%`, not starting with `goog`.
fn is_topic_id(id: &str) -> bool {
    (3..=255).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_alphabetic())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.~+%".contains(c))
        && !id.starts_with("goog")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use google_cloud_gax::error::rpc::Status;
    use google_cloud_pubsub::Error;

    use super::*;

    #[test]
    fn topic_ids_follow_pubsub_rules() {
        for ok in ["orders", "abc", "a-b_c.d~e+f%20", &"t".repeat(255)] {
            assert!(is_topic_id(ok), "{ok}");
        }
        for bad in [
            "",
            "ab",
            "1orders",
            "-orders",
            "orders/x",
            "or ders",
            "ordérs",
            "google-things",
            "goog1",
            &"t".repeat(256),
        ] {
            assert!(!is_topic_id(bad), "{bad}");
        }
    }

    fn rpc(code: Code) -> PublishError {
        PublishError::Rpc(Arc::new(Error::service(Status::default().set_code(code))))
    }

    #[test]
    fn only_what_the_same_message_meets_again_is_permanent() {
        assert!(classify(rpc(Code::InvalidArgument)).is_permanent());
        for code in [
            Code::NotFound,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::FailedPrecondition,
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Internal,
            Code::Aborted,
        ] {
            assert!(!classify(rpc(code)).is_permanent(), "{code:?}");
        }
        assert!(!classify(PublishError::OrderingKeyPaused).is_permanent());
        assert!(!classify(PublishError::Shutdown).is_permanent());
        let io = PublishError::Rpc(Arc::new(Error::io("connection reset")));
        assert!(!classify(io).is_permanent());
    }

    #[test]
    fn the_destination_is_blamed_for_what_is_about_it() {
        let class = |code| classify(rpc(code)).class();
        assert_eq!(class(Code::NotFound), FailureClass::DestinationMissing);
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::PermissionDenied,
            Code::Unauthenticated,
        ] {
            assert_eq!(
                class(code),
                FailureClass::DestinationUnavailable,
                "{code:?}"
            );
        }
        for code in [Code::Internal, Code::Aborted, Code::FailedPrecondition] {
            assert_eq!(class(code), FailureClass::MessageTransient, "{code:?}");
        }
        let io = PublishError::Rpc(Arc::new(Error::io("connection reset")));
        assert_eq!(classify(io).class(), FailureClass::DestinationUnavailable);
    }
}
