//! The NATS JetStream sink.

use std::fmt;

use async_nats::HeaderMap;
use async_nats::jetstream;

use crate::{OutboxMessage, Sink, SinkError};

/// Header carrying the partition key (JetStream has no ordering key of its own).
pub const PARTITION_KEY_HEADER: &str = "Eventrail-Partition-Key";

/// Publishes to NATS JetStream: the subject is the message's destination (after an optional
/// prefix), the message id goes in `Nats-Msg-Id` (JetStream drops a duplicate inside the
/// stream's duplicate window), the partition key in [`PARTITION_KEY_HEADER`], the content type
/// in `Content-Type`, and the headers as they are. A message counts as sent once JetStream
/// acknowledged it.
#[derive(Clone)]
pub struct NatsSink {
    jetstream: jetstream::Context,
    prefix: String,
}

impl fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSink")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl NatsSink {
    /// A sink on a connected client.
    #[must_use]
    pub fn new(client: async_nats::Client) -> Self {
        Self {
            jetstream: jetstream::new(client),
            prefix: String::new(),
        }
    }

    /// Puts `prefix` before every destination (e.g. `outbox.`).
    #[must_use]
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The JetStream context, to create streams.
    #[must_use]
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }
}

impl Sink for NatsSink {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &message.headers {
            headers.insert(name.as_str(), value.as_str());
        }
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            message.id.to_string().as_str(),
        );
        headers.insert(PARTITION_KEY_HEADER, message.partition_key.as_str());
        headers.insert("Content-Type", message.content_type.as_str());
        let subject = format!("{}{}", self.prefix, message.destination);
        let ack = self
            .jetstream
            .publish_with_headers(subject, headers, message.payload.clone().into())
            .await
            .map_err(classify)?;
        ack.await.map_err(classify)?;
        Ok(())
    }
}

/// Every JetStream publish failure (a timeout, no stream listening on the subject yet, a broken
/// connection) may heal: all are transient, and the attempts limit dead-letters the rest.
fn classify(error: jetstream::context::PublishError) -> SinkError {
    SinkError::transient(error)
}
