use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use uuid::Uuid;

use crate::OutboxError;

/// A message to enqueue: where it goes, its ordering key, headers and payload.
#[derive(Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Its id (uuid v7 by default): the broker's dedup handle, stable across redeliveries.
    pub id: Uuid,
    /// Messages with the same key are delivered one at a time, in enqueue order.
    pub partition_key: String,
    /// The broker-side destination (a NATS subject, an AMQP routing key, a table row's tag).
    pub destination: String,
    /// Free headers, passed to the broker as message headers.
    pub headers: BTreeMap<String, String>,
    /// The payload bytes.
    pub payload: Vec<u8>,
    /// The payload's media type (default `application/octet-stream`).
    pub content_type: String,
}

// Payloads can hold personal data: Debug shows their size only.
impl fmt::Debug for NewMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewMessage")
            .field("id", &self.id)
            .field("partition_key", &self.partition_key)
            .field("destination", &self.destination)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("payload_bytes", &self.payload.len())
            .field("content_type", &self.content_type)
            .finish()
    }
}

impl NewMessage {
    /// A binary message for `destination`, ordered by `partition_key`, with a new uuid v7.
    #[must_use]
    pub fn new(
        destination: impl Into<String>,
        partition_key: impl Into<String>,
        payload: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            id: Uuid::now_v7(),
            partition_key: partition_key.into(),
            destination: destination.into(),
            headers: BTreeMap::new(),
            payload: payload.into(),
            content_type: "application/octet-stream".into(),
        }
    }

    /// A JSON message (`application/json`).
    #[must_use]
    pub fn json(
        destination: impl Into<String>,
        partition_key: impl Into<String>,
        value: &serde_json::Value,
    ) -> Self {
        Self::new(destination, partition_key, value.to_string()).content_type("application/json")
    }

    /// Sets the id (for a producer that derives it, e.g. from an event id).
    #[must_use]
    pub fn id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Sets the content type.
    #[must_use]
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = content_type.into();
        self
    }

    pub(crate) fn validate(&self) -> Result<(), OutboxError> {
        if self.destination.is_empty() {
            return Err(OutboxError::InvalidMessage("empty destination".into()));
        }
        if self.partition_key.is_empty() {
            return Err(OutboxError::InvalidMessage("empty partition key".into()));
        }
        Ok(())
    }
}

/// A message claimed by a relay, as handed to a [`Sink`](crate::Sink).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxMessage {
    /// Its id: pass it as the broker's dedup/message id.
    pub id: Uuid,
    /// Its place in the outbox (the order within a partition key).
    pub sequence: i64,
    /// Its ordering key: pass it as the broker's ordering/partition key where there is one.
    pub partition_key: String,
    /// Where it goes.
    pub destination: String,
    /// Its headers.
    pub headers: BTreeMap<String, String>,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Its media type.
    pub content_type: String,
    /// When it was enqueued.
    pub created_at: SystemTime,
    /// Publish attempts started, this one included.
    pub attempts: u32,
}

impl OutboxMessage {
    /// `message` as a relay hands it to a sink after claiming it at `sequence` for the
    /// `attempts`-th time: to test a sink of your own.
    #[must_use]
    pub fn claimed(message: NewMessage, sequence: i64, attempts: u32) -> Self {
        Self {
            id: message.id,
            sequence,
            partition_key: message.partition_key,
            destination: message.destination,
            headers: message.headers,
            payload: message.payload,
            content_type: message.content_type,
            created_at: SystemTime::now(),
            attempts,
        }
    }
}

impl fmt::Debug for OutboxMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxMessage")
            .field("id", &self.id)
            .field("sequence", &self.sequence)
            .field("partition_key", &self.partition_key)
            .field("destination", &self.destination)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("payload_bytes", &self.payload.len())
            .field("content_type", &self.content_type)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

pub(crate) fn headers_json(headers: &BTreeMap<String, String>) -> serde_json::Value {
    serde_json::Value::Object(
        headers
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
    )
}

pub(crate) fn headers_from_json(value: &serde_json::Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_payload_and_headers_round_trip() {
        let m = NewMessage::json("orders", "order-1", &serde_json::json!({"secret": "x"}))
            .header("tenant", "t1");
        let shown = format!("{m:?}");
        assert!(!shown.contains("secret") && shown.contains("payload_bytes"));
        assert_eq!(headers_from_json(&headers_json(&m.headers)), m.headers);
        assert!(NewMessage::new("", "k", b"x".to_vec()).validate().is_err());
        assert!(NewMessage::new("d", "", b"x".to_vec()).validate().is_err());
        assert_eq!(m.id.get_version_num(), 7);
    }
}
