use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{JsonData, StreamName};

/// An event payload: JSON (queryable as `jsonb`) or opaque bytes from a binary codec.
///
/// JSON read from a store is kept as text and parsed on first use (see [`JsonData`]), so a
/// consumer that skips an event does not pay for its JSON.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub enum EventData {
    /// JSON data.
    Json(JsonData),
    /// Binary data.
    Binary(Vec<u8>),
}

impl EventData {
    /// JSON data from a value.
    #[must_use]
    pub fn json(value: serde_json::Value) -> Self {
        Self::Json(value.into())
    }

    /// `"json"` or `"binary"`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Json(_) => "json",
            Self::Binary(_) => "binary",
        }
    }
}

// Payloads can hold personal data: Debug shows their size, not their content.
impl fmt::Debug for EventData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Json(_) => f.write_str("Json(..)"),
            Self::Binary(bytes) => write!(f, "Binary({} bytes)", bytes.len()),
        }
    }
}

/// Event metadata: tracing and causality, plus free key/values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Id shared by every message of one business process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Id of the message that caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// W3C trace context of the writer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Anything else.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Metadata {
    /// Sets the correlation id.
    #[must_use]
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sets the causation id.
    #[must_use]
    pub fn with_causation_id(mut self, id: impl Into<String>) -> Self {
        self.causation_id = Some(id.into());
        self
    }

    /// Sets the W3C `traceparent`.
    #[must_use]
    pub fn with_traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// Adds a free key/value.
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// Whether nothing is set.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.correlation_id.is_none()
            && self.causation_id.is_none()
            && self.traceparent.is_none()
            && self.extra.is_empty()
    }
}

/// An event to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Unique id; a UUID v7 by default, so ids sort by creation time.
    pub id: Uuid,
    /// The event's type name.
    pub event_type: String,
    /// Schema version of `data` (1 unless the type evolved).
    pub schema_version: u32,
    /// The payload.
    pub data: EventData,
    /// The metadata.
    pub metadata: Metadata,
}

impl NewEvent {
    /// A JSON event with a fresh UUID v7, schema version 1 and empty metadata.
    pub fn json(event_type: impl Into<String>, data: serde_json::Value) -> Self {
        Self::new(event_type, EventData::json(data))
    }

    /// An event with a fresh UUID v7, schema version 1 and empty metadata.
    pub fn new(event_type: impl Into<String>, data: EventData) -> Self {
        Self {
            id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version: 1,
            data,
            metadata: Metadata::default(),
        }
    }

    /// Sets the id (for idempotent retries: the same id is refused twice).
    #[must_use]
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// Sets the metadata.
    #[must_use]
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets the schema version.
    #[must_use]
    pub fn with_schema_version(mut self, version: u32) -> Self {
        self.schema_version = version;
        self
    }
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// Unique id.
    pub id: Uuid,
    /// The stream it belongs to.
    pub stream: StreamName,
    /// Its version within the stream, from 0.
    pub stream_version: u64,
    /// Its position in the whole log, from 1; increasing, with possible holes.
    pub global_position: u64,
    /// The event's type name.
    pub event_type: String,
    /// Schema version of `data`.
    pub schema_version: u32,
    /// The payload.
    pub data: EventData,
    /// The metadata.
    pub metadata: Metadata,
    /// When the appending transaction started.
    pub recorded_at: SystemTime,
    /// Id of the appending transaction (PostgreSQL `xid8`; a counter in memory).
    pub transaction_id: u64,
}
