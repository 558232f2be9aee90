use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::ExpectedVersion;

/// A boxed error (the one type of the eventrail crates).
pub use eventrail_core::BoxError;

/// An argument refused before any query was sent.
///
/// Handle it by fixing the call: nothing was read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidArgument {
    /// A stream name was expected and a category (no `-`) was given: add the id part.
    #[error("{0:?} is a category, not a stream name")]
    NotAStreamName(String),
    /// A category was expected and a stream name (with `-`) was given: drop the id part.
    #[error("{0:?} is a stream name, not a category")]
    NotACategory(String),
    /// A correlation filter must be a category (no `-`): pass the correlation stream's category.
    #[error("correlation {0:?} is not a category")]
    CorrelationNotACategory(String),
    /// The consumer group member or size is out of Message DB's range: use `0 <= member < size <= 32767`.
    #[error("invalid consumer group (member {member}, size {size}): {reason}")]
    ConsumerGroup {
        /// The member index.
        member: u64,
        /// The group size.
        size: u64,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A batch size of zero reads nothing: use a positive size or `unlimited`.
    #[error("batch size must be positive")]
    ZeroBatchSize,
    /// A position or count does not fit Message DB's `bigint`: use a smaller value.
    #[error("{what} {value} is larger than Message DB's bigint")]
    OutOfRange {
        /// Which argument.
        what: &'static str,
        /// The refused value.
        value: u64,
    },
    /// A polling or retry setting makes no sense (for example `min > max`): fix the setting.
    #[error("invalid {what}: {reason}")]
    Setting {
        /// Which setting.
        what: &'static str,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A consumer id for the position stream is empty: name the consumer.
    #[error("consumer id must not be empty")]
    EmptyConsumerId,
}

/// A stored message could not be turned into the requested Rust value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The message's data does not deserialize into the requested type: read it as another type
    /// (or as `serde_json::Value`), or skip the message.
    #[error("data of message {id} ({message_type}) does not decode into {target}")]
    Data {
        /// The message id.
        id: Uuid,
        /// The message type.
        message_type: String,
        /// The Rust type asked for.
        target: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// The message's metadata does not deserialize into the requested type: read it as another
    /// type, or skip the message.
    #[error("metadata of message {id} ({message_type}) does not decode into {target}")]
    Metadata {
        /// The message id.
        id: Uuid,
        /// The message type.
        message_type: String,
        /// The Rust type asked for.
        target: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// A row's id is not a UUID (Message DB stores UUIDs, so the row was written around it): fix
    /// the row.
    #[error("message id {value:?} is not a uuid")]
    Id {
        /// The stored id.
        value: String,
        /// The parse error.
        #[source]
        source: uuid::Error,
    },
    /// A row's position is negative: fix the row.
    #[error("message {id} has a negative {what}: {value}")]
    Position {
        /// The message id.
        id: Uuid,
        /// `position` or `global_position`.
        what: &'static str,
        /// The stored value.
        value: i64,
    },
}

/// Data or metadata could not be serialized to JSON for writing.
///
/// Handle it by fixing the value's `Serialize` implementation (for example a map with non-string
/// keys); nothing was written.
#[derive(Debug, thiserror::Error)]
#[error("{what} of a {message_type} message does not serialize to json")]
#[non_exhaustive]
pub struct EncodeError {
    /// `data` or `metadata`.
    pub what: &'static str,
    /// The message type.
    pub message_type: String,
    /// The serde error.
    #[source]
    pub source: serde_json::Error,
}

/// A Message DB operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MessageDbError {
    /// The stream is not at the expected version: reload it and decide again (or retry with the
    /// version reported here).
    #[error("wrong expected version for stream {stream}: expected {expected}, stream version {}", fmt_version(*actual))]
    WrongExpectedVersion {
        /// The stream written to.
        stream: String,
        /// The expectation sent.
        expected: ExpectedVersion,
        /// The stream's version when the write was refused; `None` when the stream had no message.
        actual: Option<u64>,
    },
    /// A message with this id is already stored: the write happened before (treat a retry as
    /// done) or pick a fresh id.
    #[error("a message with id {id} is already stored")]
    DuplicateMessageId {
        /// The id.
        id: Uuid,
    },
    /// An argument was refused before any query: fix the call.
    #[error(transparent)]
    InvalidArgument(#[from] InvalidArgument),
    /// A query with a SQL condition ran where conditions are off: enable them with
    /// [`MessageDbOptions::sql_condition`](crate::MessageDbOptions::sql_condition).
    #[error("retrieval with a sql condition is not activated")]
    ConditionNotActivated,
    /// A stored row could not be read: see the cause.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Data or metadata could not be encoded: fix the value.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// Message DB refused the call with an exception this client does not know: see the message.
    #[error("message db refused the call: {message}")]
    Refused {
        /// Message DB's exception text.
        message: String,
    },
    /// No connection could be opened or taken from the pool (timed out, TLS refused, refused by
    /// the server), or the connection settings are wrong: see [`ConnectError`](eventrail_store_postgres::ConnectError).
    #[error(transparent)]
    Connect(#[from] eventrail_store_postgres::ConnectError),
    /// No connection could be taken from the pool: retry later.
    #[error("no connection from the pool")]
    Pool(#[source] BoxError),
    /// The database failed (connection lost, timeout, invalid condition SQL…): retry or give up.
    #[error("message db query failed")]
    Database(#[source] tokio_postgres::Error),
}

impl MessageDbError {
    /// The SQLSTATE of the database error behind this one (such as `40001`), if any.
    #[must_use]
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Database(e) => e.code().map(SqlState::code),
            Self::Connect(e) => e.code().map(SqlState::code),
            _ => None,
        }
    }

    /// Whether trying again later may succeed: a pool timeout, a lost connection, a
    /// serialization failure or deadlock, a server restarting; not a refused call or bad input.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Pool(_) => true,
            Self::Connect(e) => e.is_retryable(),
            Self::Database(e) => e
                .code()
                .is_none_or(|c| eventrail_store_postgres::is_retryable_sqlstate(c.code())),
            _ => false,
        }
    }
}

fn fmt_version(version: Option<u64>) -> String {
    version.map_or_else(|| "-1 (no stream)".to_owned(), |v| v.to_string())
}

impl From<deadpool_postgres::PoolError> for MessageDbError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        Self::Pool(Box::new(error))
    }
}

/// A wrong-expected-version exception of Message DB's `write_message`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WrongVersionText {
    /// The expected version named in the text (`-1`: no stream).
    pub expected: i64,
    /// The stream name.
    pub stream: String,
    /// The stream's actual version (`-1`: no stream).
    pub actual: i64,
}

const WRONG_VERSION_PREFIX: &str = "Wrong expected version: ";
const WRONG_VERSION_STREAM: &str = " (Stream: ";
const WRONG_VERSION_ACTUAL: &str = ", Stream Version: ";

/// Parses the text of Message DB's wrong-expected-version exception,
/// `Wrong expected version: E (Stream: S, Stream Version: A)`.
///
/// Versions may have any number of digits and be `-1` (no stream). The stream name may itself
/// contain `, Stream Version: ` or parentheses: the actual version is taken from the *last*
/// separator and the expected version from the first, so the name in between is kept whole.
/// Returns `None` for any other text.
#[must_use]
pub fn parse_wrong_expected_version(text: &str) -> Option<WrongVersionText> {
    let rest = text.strip_prefix(WRONG_VERSION_PREFIX)?;
    let (expected, rest) = rest.split_once(WRONG_VERSION_STREAM)?;
    let rest = rest.strip_suffix(')')?;
    let (stream, actual) = rest.rsplit_once(WRONG_VERSION_ACTUAL)?;
    let number = |s: &str| -> Option<i64> {
        let digits = s.strip_prefix('-').unwrap_or(s);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    Some(WrongVersionText {
        expected: number(expected)?,
        stream: stream.to_owned(),
        actual: number(actual)?,
    })
}

/// Turns a failed write into the typed outcome. `expected` and `stream` are what was sent; they
/// are preferred to the parsed text, which only supplies the actual version.
pub(crate) fn classify_write(
    error: tokio_postgres::Error,
    stream: &str,
    expected: ExpectedVersion,
    id: Uuid,
) -> MessageDbError {
    if let Some(db) = error.as_db_error() {
        if db.code() == &SqlState::RAISE_EXCEPTION {
            // Message DB signals a version conflict only through its exception text (SQLSTATE
            // P0001, like every RAISE EXCEPTION), so the text is all there is to go on.
            if let Some(parsed) = parse_wrong_expected_version(db.message()) {
                return MessageDbError::WrongExpectedVersion {
                    stream: stream.to_owned(),
                    expected,
                    actual: u64::try_from(parsed.actual).ok(),
                };
            }
        }
        if db.code() == &SqlState::UNIQUE_VIOLATION && db.constraint() == Some("messages_id") {
            return MessageDbError::DuplicateMessageId { id };
        }
    }
    classify(error)
}

/// Classifies a failed read or function call.
pub(crate) fn classify(error: tokio_postgres::Error) -> MessageDbError {
    if let Some(db) = error.as_db_error()
        && db.code() == &SqlState::RAISE_EXCEPTION
    {
        // As above: Message DB's exceptions carry no SQLSTATE of their own.
        if db.message() == "Retrieval with SQL condition is not activated" {
            return MessageDbError::ConditionNotActivated;
        }
        return MessageDbError::Refused {
            message: db.message().to_owned(),
        };
    }
    MessageDbError::Database(error)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_message_db_texts() {
        let p = parse_wrong_expected_version(
            "Wrong expected version: 12 (Stream: account-123, Stream Version: 4567)",
        )
        .unwrap();
        assert_eq!(
            p,
            WrongVersionText {
                expected: 12,
                stream: "account-123".into(),
                actual: 4567
            }
        );
        let p = parse_wrong_expected_version(
            "Wrong expected version: -1 (Stream: a-b, Stream Version: 0)",
        )
        .unwrap();
        assert_eq!((p.expected, p.actual), (-1, 0));
        let p = parse_wrong_expected_version(
            "Wrong expected version: 3 (Stream: a-b, Stream Version: -1)",
        )
        .unwrap();
        assert_eq!(p.actual, -1);
        for bad in [
            "",
            "Wrong expected version: x (Stream: a-b, Stream Version: 1)",
            "Wrong expected version: 1 (Stream: a-b, Stream Version: 1",
            "Wrong expected version: 1 (Stream: a-b, Stream Version: )",
            "Wrong expected version: 1 (Stream: a-b, Stream Version: --1)",
            "Must be a category: a-b",
        ] {
            assert!(parse_wrong_expected_version(bad).is_none(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn round_trips_any_stream_name(
            expected in -1i64..i64::MAX,
            actual in -1i64..i64::MAX,
            stream in "\\PC*",
        ) {
            let text = format!(
                "Wrong expected version: {expected} (Stream: {stream}, Stream Version: {actual})"
            );
            let parsed = parse_wrong_expected_version(&text).unwrap();
            prop_assert_eq!(parsed.expected, expected);
            prop_assert_eq!(parsed.actual, actual);
            // Versions are digits, so the first " (Stream: " and the last ", Stream Version: "
            // are Message DB's own, whatever the name holds.
            prop_assert_eq!(parsed.stream, stream);
        }
    }
}
