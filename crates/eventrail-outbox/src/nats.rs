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
///
/// Failures are classified (see [`SinkError`]): a message over the server's `max_payload` or
/// the stream's size limits is dead at once; no stream on the subject backs the destination off
/// as missing; timeouts and connection failures back it off as unavailable. While the client is
/// disconnected a publish waits for the context's ack timeout (5 s unless set on the
/// [`jetstream::Context`] given to [`NatsSink::with_context`]).
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

    /// A sink on a JetStream context of yours (for example with its own ack timeout, or a
    /// domain).
    #[must_use]
    pub fn with_context(jetstream: jetstream::Context) -> Self {
        Self {
            jetstream,
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

/// Classifies a JetStream publish failure.
///
/// - The message's own fault, permanent: over the server's `max_payload` (the client refuses it
///   before sending), over the stream's maximum message or header size, an invalid subject.
/// - The destination missing: no stream listens on the subject (no responders, stream not
///   found) — an operator may create it, so the destination is backed off, not the message
///   dead-lettered.
/// - The destination unavailable: timeouts (also what a publish meets while the client is
///   disconnected), a broken connection, too many acks pending, a stream that is offline,
///   sealed, full or cannot store.
/// - Anything else (an unexpected JetStream error, a garbled ack) counts against the message.
fn classify(error: jetstream::context::PublishError) -> SinkError {
    use jetstream::ErrorCode;
    use jetstream::context::PublishErrorKind as Kind;

    match error.kind() {
        Kind::MaxPayloadExceeded | Kind::WrongLastMessageId | Kind::WrongLastSequence => {
            SinkError::permanent(error)
        }
        Kind::StreamNotFound => SinkError::missing(error),
        Kind::TimedOut | Kind::BrokenPipe | Kind::MaxAckPending => SinkError::unavailable(error),
        _ => {
            let source = std::error::Error::source(&error);
            if source.is_some_and(|s| s.is::<async_nats::SubjectError>()) {
                return SinkError::permanent(error);
            }
            let code = source
                .and_then(|s| s.downcast_ref::<jetstream::Error>())
                .map(jetstream::Error::error_code);
            match code {
                Some(
                    ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM
                    | ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM,
                ) => SinkError::permanent(error),
                Some(ErrorCode::STREAM_NOT_FOUND) => SinkError::missing(error),
                Some(
                    ErrorCode::STREAM_OFFLINE
                    | ErrorCode::STREAM_SEALED
                    | ErrorCode::STREAM_STORE_FAILED
                    | ErrorCode::STREAM_LIMITS,
                ) => SinkError::unavailable(error),
                _ => SinkError::transient(error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use async_nats::jetstream::context::{PublishError, PublishErrorKind};

    use super::*;
    use crate::FailureClass;

    #[test]
    fn publish_failures_are_classified_by_whom_they_are_about() {
        let class = |kind| classify(PublishError::new(kind)).class();
        assert_eq!(
            class(PublishErrorKind::MaxPayloadExceeded),
            FailureClass::MessagePermanent
        );
        assert_eq!(
            class(PublishErrorKind::StreamNotFound),
            FailureClass::DestinationMissing
        );
        for kind in [
            PublishErrorKind::TimedOut,
            PublishErrorKind::BrokenPipe,
            PublishErrorKind::MaxAckPending,
        ] {
            assert_eq!(class(kind), FailureClass::DestinationUnavailable);
        }
        assert_eq!(
            class(PublishErrorKind::Other),
            FailureClass::MessageTransient
        );
        let subject = PublishError::with_source(
            PublishErrorKind::Other,
            async_nats::SubjectError::InvalidFormat,
        );
        assert_eq!(classify(subject).class(), FailureClass::MessagePermanent);
    }
}
