//! The Amazon SQS sink.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::MessageAttributeValue;

use crate::{OutboxMessage, Sink, SinkError};

/// Message attribute carrying the message id (also the FIFO deduplication id).
pub const SQS_MESSAGE_ID_ATTRIBUTE: &str = "eventrail-message-id";
/// Message attribute carrying the partition key (also the FIFO message group id).
pub const SQS_PARTITION_KEY_ATTRIBUTE: &str = "eventrail-partition-key";
/// Message attribute carrying the content type.
pub const SQS_CONTENT_TYPE_ATTRIBUTE: &str = "content-type";
/// Message attribute set to `base64` when the body is the base64 of a payload that is not
/// UTF-8 text (SQS bodies are text).
pub const SQS_BODY_ENCODING_ATTRIBUTE: &str = "eventrail-body-encoding";

/// SQS allows this many message attributes; the sink uses three (four for a binary payload).
const MAX_ATTRIBUTES: usize = 10;

/// Error codes of requests that will never succeed as they are.
const PERMANENT: &[&str] = &[
    "InvalidMessageContents",
    "InvalidParameterValue",
    "InvalidAttributeName",
    "InvalidAttributeValue",
    "MissingParameter",
    "UnsupportedOperation",
    "AWS.SimpleQueueService.UnsupportedOperation",
];

/// Error codes of a queue that does not exist (yet).
const MISSING: &[&str] = &[
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
];

/// Publishes to Amazon SQS with `SendMessage`. The destination is a queue name (resolved to its
/// URL once, with `GetQueueUrl`) or a queue URL.
///
/// On a FIFO queue (name ending in `.fifo`) the partition key is the `MessageGroupId`, so SQS
/// keeps each key in order, and the message id is the `MessageDeduplicationId`, so SQS drops a
/// redelivery inside its five-minute deduplication interval. On a standard queue neither is set
/// (SQS does not order or deduplicate there): consumers deduplicate by the
/// [`SQS_MESSAGE_ID_ATTRIBUTE`] attribute, for example with the [`Inbox`](crate::Inbox).
///
/// Every message carries the attributes [`SQS_MESSAGE_ID_ATTRIBUTE`],
/// [`SQS_PARTITION_KEY_ATTRIBUTE`] and [`SQS_CONTENT_TYPE_ATTRIBUTE`], and its headers as
/// further string attributes (SQS allows ten in all: more is a permanent failure). A payload
/// that is not UTF-8 goes as base64 with [`SQS_BODY_ENCODING_ATTRIBUTE`] set. A message counts
/// as sent once `SendMessage` returned.
///
/// A queue that does not exist makes the destination missing and backs it off without
/// spending attempts; timeouts, connection failures, throttling and 5xx make it unavailable;
/// an oversized or malformed message is permanent.
///
/// Build the client with `aws-config` (credentials, region, endpoint) as usual.
#[derive(Clone)]
pub struct SqsSink {
    client: Client,
    urls: Arc<Mutex<HashMap<String, String>>>,
}

impl fmt::Debug for SqsSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsSink")
            .field(
                "queues",
                &self
                    .urls
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .len(),
            )
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("{0} message attributes: SQS allows {MAX_ATTRIBUTES}")]
    TooManyAttributes(usize),
    #[error("SQS returned no URL for queue {0}")]
    NoQueueUrl(String),
}

impl SqsSink {
    /// A sink on a configured client.
    #[must_use]
    pub fn new(client: Client) -> Self {
        Self {
            client,
            urls: Arc::default(),
        }
    }

    /// The client (to create queues).
    #[must_use]
    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn queue_url(&self, destination: &str) -> Result<String, SinkError> {
        if destination.starts_with("https://") || destination.starts_with("http://") {
            return Ok(destination.to_owned());
        }
        if let Some(url) = self
            .urls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(destination)
        {
            return Ok(url.clone());
        }
        let url = self
            .client
            .get_queue_url()
            .queue_name(destination)
            .send()
            .await
            .map_err(|e| crate::aws::classify(e, PERMANENT, MISSING))?
            .queue_url
            .ok_or_else(|| SinkError::transient(Refused::NoQueueUrl(destination.to_owned())))?;
        self.urls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(destination.to_owned(), url.clone());
        Ok(url)
    }
}

fn text(value: &str) -> Result<MessageAttributeValue, SinkError> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(SinkError::permanent)
}

impl Sink for SqsSink {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        let url = self.queue_url(&message.destination).await?;
        let id = message.id.to_string();
        let (body, encoded) = match std::str::from_utf8(&message.payload) {
            Ok(body) => (body.to_owned(), false),
            Err(_) => (aws_smithy_types::base64::encode(&message.payload), true),
        };
        let attributes = message.headers.len() + 3 + usize::from(encoded);
        if attributes > MAX_ATTRIBUTES {
            return Err(SinkError::permanent(Refused::TooManyAttributes(attributes)));
        }
        let mut request = self
            .client
            .send_message()
            .queue_url(&url)
            .message_body(body)
            .message_attributes(SQS_MESSAGE_ID_ATTRIBUTE, text(&id)?)
            .message_attributes(SQS_PARTITION_KEY_ATTRIBUTE, text(&message.partition_key)?)
            .message_attributes(SQS_CONTENT_TYPE_ATTRIBUTE, text(&message.content_type)?);
        if encoded {
            request = request.message_attributes(SQS_BODY_ENCODING_ATTRIBUTE, text("base64")?);
        }
        for (name, value) in &message.headers {
            request = request.message_attributes(name, text(value)?);
        }
        if url.ends_with(".fifo") {
            request = request
                .message_group_id(&message.partition_key)
                .message_deduplication_id(&id);
        }
        request
            .send()
            .await
            .map_err(|e| crate::aws::classify(e, PERMANENT, MISSING))?;
        Ok(())
    }
}
