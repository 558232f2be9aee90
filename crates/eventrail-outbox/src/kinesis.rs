//! The Amazon Kinesis Data Streams sink.

use std::fmt;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;

use crate::{OutboxMessage, Sink, SinkError};

/// Error codes of requests that will never succeed as they are.
const PERMANENT: &[&str] = &["ValidationException", "InvalidArgumentException"];

/// Error codes of a stream that does not exist (yet).
const MISSING: &[&str] = &["ResourceNotFoundException"];

/// Publishes to Amazon Kinesis Data Streams with `PutRecord`: the destination is the stream
/// name, the partition key is the record's partition key (so a key's records land on one shard,
/// in order: the relay never has two of a key in flight), and the record's data is the payload.
///
/// Kinesis records carry no id or headers, and Kinesis does not deduplicate: a message the relay
/// publishes again after a crash between the ack and the mark is a second record. Producers that
/// need to deduplicate downstream put an id in the payload (e.g. the event id the message was
/// derived from, also usable as its [`NewMessage::id`](crate::NewMessage::id)). A message counts
/// as sent once `PutRecord` returned its sequence number.
///
/// A stream that does not exist makes the destination missing and backs it off without
/// spending attempts; timeouts, connection failures, throttling
/// (`ProvisionedThroughputExceededException`) and 5xx make it unavailable.
///
/// Build the client with `aws-config` (credentials, region, endpoint) as usual.
#[derive(Clone)]
pub struct KinesisSink {
    client: Client,
}

impl fmt::Debug for KinesisSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KinesisSink").finish_non_exhaustive()
    }
}

impl KinesisSink {
    /// A sink on a configured client.
    #[must_use]
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// The client (to create streams).
    #[must_use]
    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl Sink for KinesisSink {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        self.client
            .put_record()
            .stream_name(&message.destination)
            .partition_key(&message.partition_key)
            .data(Blob::new(message.payload.clone()))
            .send()
            .await
            .map_err(|e| crate::aws::classify(e, PERMANENT, MISSING))?;
        Ok(())
    }
}
