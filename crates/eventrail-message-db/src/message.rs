use std::fmt;
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{DecodeError, EncodeError};

/// What a writer believes about the stream's version (the position of its last message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ExpectedVersion {
    /// No check (Message DB's `NULL`).
    #[default]
    Any,
    /// The stream must have no message (Message DB's `-1`).
    NoStream,
    /// The stream's last message must be at this position.
    Exact(u64),
}

impl ExpectedVersion {
    /// The value sent as `write_message`'s `expected_version`.
    pub(crate) fn to_sql(self) -> Result<Option<i64>, crate::InvalidArgument> {
        match self {
            Self::Any => Ok(None),
            Self::NoStream => Ok(Some(-1)),
            Self::Exact(v) => crate::options::to_bigint("expected version", v).map(Some),
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::NoStream => f.write_str("-1 (no stream)"),
            Self::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// A message to write: type, JSON data and metadata, id (random v4 unless set) and the expected
/// version of the stream (none unless set).
#[derive(Clone, PartialEq)]
#[must_use]
pub struct NewMessage {
    pub(crate) id: Uuid,
    pub(crate) message_type: String,
    pub(crate) data: serde_json::Value,
    pub(crate) metadata: Option<serde_json::Value>,
    pub(crate) expected_version: ExpectedVersion,
}

impl fmt::Debug for NewMessage {
    // Payloads stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewMessage")
            .field("id", &self.id)
            .field("message_type", &self.message_type)
            .field("expected_version", &self.expected_version)
            .finish_non_exhaustive()
    }
}

impl NewMessage {
    /// A message of `message_type` with JSON `data`.
    pub fn new(message_type: impl Into<String>, data: serde_json::Value) -> Self {
        Self {
            id: Uuid::new_v4(),
            message_type: message_type.into(),
            data,
            metadata: None,
            expected_version: ExpectedVersion::Any,
        }
    }

    /// A message whose data is `data` serialized to JSON.
    ///
    /// # Errors
    /// [`EncodeError`] when `data` does not serialize to JSON.
    pub fn serialize<T: Serialize + ?Sized>(
        message_type: impl Into<String>,
        data: &T,
    ) -> Result<Self, EncodeError> {
        let message_type = message_type.into();
        let data = serde_json::to_value(data).map_err(|source| EncodeError {
            what: "data",
            message_type: message_type.clone(),
            source,
        })?;
        Ok(Self::new(message_type, data))
    }

    /// The message id (default: a random v4 UUID). Writing the same id twice fails with
    /// [`MessageDbError::DuplicateMessageId`](crate::MessageDbError::DuplicateMessageId), which
    /// makes retries safe.
    pub fn id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// JSON metadata (default: none, stored as `NULL`).
    pub fn metadata(mut self, metadata: serde_json::Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Metadata serialized from `metadata`, for example a [`MessageMetadata`].
    ///
    /// # Errors
    /// [`EncodeError`] when `metadata` does not serialize to JSON.
    pub fn serialize_metadata<T: Serialize + ?Sized>(
        mut self,
        metadata: &T,
    ) -> Result<Self, EncodeError> {
        self.metadata = Some(
            serde_json::to_value(metadata).map_err(|source| EncodeError {
                what: "metadata",
                message_type: self.message_type.clone(),
                source,
            })?,
        );
        Ok(self)
    }

    /// The version the stream must be at for the write to happen (default: no check).
    pub fn expected_version(mut self, expected: ExpectedVersion) -> Self {
        self.expected_version = expected;
        self
    }

    /// The message id.
    #[must_use]
    pub fn message_id(&self) -> Uuid {
        self.id
    }

    /// The message type.
    #[must_use]
    pub fn message_type(&self) -> &str {
        &self.message_type
    }
}

/// The metadata fields the Eventide toolkit writes, plus any others.
///
/// `correlation_stream_name` is what `get_category_messages`' correlation filter looks at.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct MessageMetadata {
    /// The stream whose category a correlation filter matches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_stream_name: Option<String>,
    /// The stream of the message that caused this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub causation_message_stream_name: Option<String>,
    /// The position of the message that caused this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub causation_message_position: Option<u64>,
    /// The global position of the message that caused this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub causation_message_global_position: Option<u64>,
    /// Where replies go.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_stream_name: Option<String>,
    /// Every other key.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl MessageMetadata {
    /// Empty metadata.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the correlation stream name.
    #[must_use]
    pub fn correlation_stream_name(mut self, stream: impl Into<String>) -> Self {
        self.correlation_stream_name = Some(stream.into());
        self
    }

    /// Records `cause` as the message that caused this one (stream, position, global position),
    /// and carries its correlation over.
    #[must_use]
    pub fn caused_by(mut self, cause: &Message) -> Self {
        self.causation_message_stream_name = Some(cause.stream_name.clone());
        self.causation_message_position = Some(cause.position);
        self.causation_message_global_position = Some(cause.global_position);
        if self.correlation_stream_name.is_none()
            && let Ok(meta) = cause.metadata::<Self>()
        {
            self.correlation_stream_name = meta.correlation_stream_name;
        }
        self
    }
}

/// A stored message, as Message DB returns it.
///
/// Data and metadata are kept as the JSON text Message DB returns and decoded on demand with
/// [`data`](Self::data) and [`metadata`](Self::metadata), so reading a batch costs no JSON
/// parsing until a handler asks for it.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct Message {
    /// The message id.
    pub id: Uuid,
    /// The stream it belongs to.
    pub stream_name: String,
    /// Its type.
    pub message_type: String,
    /// Its position in the stream (0 for the first message).
    pub position: u64,
    /// Its position in the whole store.
    pub global_position: u64,
    /// When it was written (Message DB's UTC timestamp).
    pub time: SystemTime,
    pub(crate) data: Option<String>,
    pub(crate) metadata: Option<String>,
}

impl fmt::Debug for Message {
    // Payloads stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("stream_name", &self.stream_name)
            .field("message_type", &self.message_type)
            .field("position", &self.position)
            .field("global_position", &self.global_position)
            .field("time", &self.time)
            .finish_non_exhaustive()
    }
}

impl Message {
    /// The data decoded into `T` (a `NULL` data decodes like JSON `null`).
    ///
    /// # Errors
    /// [`DecodeError::Data`] when the data does not fit `T`.
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        serde_json::from_str(self.data.as_deref().unwrap_or("null")).map_err(|source| {
            DecodeError::Data {
                id: self.id,
                message_type: self.message_type.clone(),
                target: std::any::type_name::<T>(),
                source,
            }
        })
    }

    /// The metadata decoded into `T` (a `NULL` metadata decodes like JSON `null`; decode into
    /// `Option<T>` to tell it apart, or into [`MessageMetadata`] via
    /// [`standard_metadata`](Self::standard_metadata)).
    ///
    /// # Errors
    /// [`DecodeError::Metadata`] when the metadata does not fit `T`.
    pub fn metadata<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        serde_json::from_str(self.metadata.as_deref().unwrap_or("null")).map_err(|source| {
            DecodeError::Metadata {
                id: self.id,
                message_type: self.message_type.clone(),
                target: std::any::type_name::<T>(),
                source,
            }
        })
    }

    /// The metadata as [`MessageMetadata`] (empty when `NULL`).
    ///
    /// # Errors
    /// [`DecodeError::Metadata`] when the metadata is not a JSON object of that shape.
    pub fn standard_metadata(&self) -> Result<MessageMetadata, DecodeError> {
        Ok(self
            .metadata::<Option<MessageMetadata>>()?
            .unwrap_or_default())
    }

    /// The data as Message DB returned it (JSON text), `None` when `NULL`.
    #[must_use]
    pub fn raw_data(&self) -> Option<&str> {
        self.data.as_deref()
    }

    /// The metadata as Message DB returned it (JSON text), `None` when `NULL`.
    #[must_use]
    pub fn raw_metadata(&self) -> Option<&str> {
        self.metadata.as_deref()
    }

    /// Reads a row of Message DB's `message` type (columns in its order).
    pub(crate) fn from_row(row: &tokio_postgres::Row) -> Result<Self, DecodeError> {
        let raw_id: String = row.get(0);
        let id = Uuid::parse_str(&raw_id).map_err(|source| DecodeError::Id {
            value: raw_id.clone(),
            source,
        })?;
        let unsigned = |what, value: i64| {
            u64::try_from(value).map_err(|_| DecodeError::Position { id, what, value })
        };
        Ok(Self {
            id,
            stream_name: row.get(1),
            message_type: row.get(2),
            position: unsigned("position", row.get(3))?,
            global_position: unsigned("global_position", row.get(4))?,
            data: row.get(5),
            metadata: row.get(6),
            time: row.get(7),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(data: Option<&str>, metadata: Option<&str>) -> Message {
        Message {
            id: Uuid::nil(),
            stream_name: "a-1".into(),
            message_type: "T".into(),
            position: 0,
            global_position: 1,
            time: SystemTime::UNIX_EPOCH,
            data: data.map(Into::into),
            metadata: metadata.map(Into::into),
        }
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Deposited {
        amount: u32,
    }

    #[test]
    fn decodes_and_reports_bad_data() {
        let m = message(Some(r#"{"amount":5}"#), None);
        assert_eq!(m.data::<Deposited>().unwrap(), Deposited { amount: 5 });
        assert_eq!(m.standard_metadata().unwrap(), MessageMetadata::default());
        let bad = message(Some(r#"{"amount":"five"}"#), Some("[1]"));
        assert!(matches!(
            bad.data::<Deposited>(),
            Err(DecodeError::Data { target, .. }) if target.ends_with("Deposited")
        ));
        assert!(matches!(
            bad.standard_metadata(),
            Err(DecodeError::Metadata { .. })
        ));
        let debug = format!("{bad:?}");
        assert!(!debug.contains("five"), "{debug}");
    }

    #[test]
    fn metadata_uses_eventide_keys() {
        let meta = MessageMetadata::new().correlation_stream_name("saga-1");
        let json = serde_json::to_value(&meta).unwrap();
        assert_eq!(
            json,
            serde_json::json!({ "correlationStreamName": "saga-1" })
        );
        let m = message(
            None,
            Some(r#"{"correlationStreamName":"x-1","schemaVersion":"2"}"#),
        );
        let meta = m.standard_metadata().unwrap();
        assert_eq!(meta.correlation_stream_name.as_deref(), Some("x-1"));
        assert_eq!(meta.other["schemaVersion"], "2");
        let caused = MessageMetadata::new().caused_by(&m);
        assert_eq!(caused.correlation_stream_name.as_deref(), Some("x-1"));
        assert_eq!(caused.causation_message_global_position, Some(1));
    }
}
