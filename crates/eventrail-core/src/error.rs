use uuid::Uuid;

use crate::{ExpectedPosition, ExpectedVersion};

/// A boxed error from a user handler or an infrastructure layer.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A stream or category name that does not follow the `category-id` grammar.
///
/// Handle it by rejecting the input that carried the name; nothing was read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid stream name {name:?}: {reason}")]
#[non_exhaustive]
pub struct StreamNameError {
    /// The rejected name.
    pub name: String,
    /// Why it was rejected.
    pub reason: &'static str,
}

/// A value could not be encoded to, or decoded from, [`EventData`](crate::EventData).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The codec expected JSON data and got binary, or the other way round: the event was written
    /// with another codec; read it with that one.
    #[error("event data is {found}, the codec expects {expected}")]
    WrongDataKind {
        /// What the codec reads.
        expected: &'static str,
        /// What the event holds.
        found: &'static str,
    },
    /// Serialisation or deserialisation failed: the data does not match the Rust type.
    #[error("{codec} codec failed")]
    Serde {
        /// The codec's name.
        codec: &'static str,
        /// The serde error.
        #[source]
        source: BoxError,
    },
}

/// A recorded event could not be turned into the user's event type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The event type is not one of the registered types: skip it or register it.
    #[error("unknown event type {event_type:?}")]
    UnknownEventType {
        /// The stored event type.
        event_type: String,
    },
    /// The event was written with a schema version newer than this program knows: upgrade.
    #[error(
        "event type {event_type:?} has schema version {found}, this program knows up to {current}"
    )]
    UnsupportedSchemaVersion {
        /// The stored event type.
        event_type: String,
        /// The stored schema version.
        found: u32,
        /// The newest version this program knows.
        current: u32,
    },
    /// An upcaster refused the old data: fix the upcaster or the data.
    #[error("upcasting {event_type:?} from schema version {from} failed")]
    Upcast {
        /// The stored event type.
        event_type: String,
        /// The version the upcaster started from.
        from: u32,
        /// The upcaster's error.
        #[source]
        source: BoxError,
    },
    /// The data does not deserialise into the event type.
    #[error("decoding event type {event_type:?} failed")]
    Codec {
        /// The stored event type.
        event_type: String,
        /// The codec's error.
        #[source]
        source: CodecError,
    },
}

/// What a processor answers when it refuses an append or fails.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessorError {
    /// The processor refuses the events (a business rule): the append is rolled back and the
    /// caller gets [`StoreError::Vetoed`].
    #[error("vetoed: {0}")]
    Veto(String),
    /// The processor failed for another reason: the append is rolled back and the caller gets
    /// [`StoreError::Processor`].
    #[error("processor failed")]
    Failed(#[source] BoxError),
}

impl ProcessorError {
    /// A veto with a reason the caller can show.
    pub fn veto(reason: impl Into<String>) -> Self {
        Self::Veto(reason.into())
    }

    /// Wraps any error as a processor failure.
    pub fn failed(error: impl Into<BoxError>) -> Self {
        Self::Failed(error.into())
    }
}

/// Errors of [`EventStore`](crate::EventStore) operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The stream's version is not what the caller expected: reload the stream and decide again.
    #[error("wrong expected version for {stream}: expected {expected}, actual {}", display_version(*.actual))]
    WrongExpectedVersion {
        /// The stream appended to.
        stream: String,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// The stream's version at the time of the check (`None`: no stream).
        actual: Option<u64>,
    },
    /// An event matching the caller's position precondition was appended after the caller's
    /// position: catch up to `head` and decide again (see [`append_consistent`](crate::append_consistent)).
    #[error("events were appended after position {}: head is {head}", display_version(.expected.after))]
    PositionConflict {
        /// The caller's precondition.
        expected: ExpectedPosition,
        /// The newest global position matching the precondition's scope.
        head: u64,
    },
    /// An event with this id is already stored: the append is a retry of one that succeeded, or
    /// ids collide. Nothing was written.
    #[error("event id {} is already stored", .event_id.map_or_else(|| "(unnamed)".to_owned(), |id| id.to_string()))]
    DuplicateEventId {
        /// The duplicate id, when the database named it.
        event_id: Option<Uuid>,
    },
    /// A processor refused the append: nothing was written; show the reason to the user.
    #[error("append vetoed by {by}: {reason}")]
    Vetoed {
        /// The processor's name.
        by: String,
        /// Its reason.
        reason: String,
    },
    /// A processor failed: nothing was written; the source says why.
    #[error("processor {by} failed")]
    Processor {
        /// The processor's name.
        by: String,
        /// Its error.
        #[source]
        source: BoxError,
    },
    /// The request itself is malformed (no events, an out-of-range value): fix the caller.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// An event of the request breaks a rule reads rely on or a documented limit (see
    /// [`EventRule`](crate::EventRule)): fix the caller; nothing was written.
    #[error("event {index} of the request ({event_type:?}) is refused")]
    InvalidEvent {
        /// Its index in the request.
        index: usize,
        /// Its event type (as given, possibly the offending value).
        event_type: String,
        /// The rule it breaks.
        #[source]
        rule: crate::EventRule,
    },
    /// A stored row cannot be read as an event (written by raw SQL, by an older version or by a
    /// bug). Retrying does not help: a subscriber parks at `position` until an operator skips the
    /// event (audited) or repairs the row.
    #[error("the event at position {position} cannot be decoded")]
    Decode {
        /// Its global position.
        position: u64,
        /// What failed.
        #[source]
        source: BoxError,
    },
    /// A conditional append (an expected version other than `Any`, or a position precondition)
    /// was asked for inside a transaction above READ COMMITTED, whose snapshot may be older than
    /// appends it must see. Nothing was written and the caller's transaction is still usable:
    /// run the append in a READ COMMITTED transaction, or append unconditionally.
    #[error("conditional appends need READ COMMITTED, the transaction is {level}")]
    IsolationNotSupported {
        /// The transaction's isolation level, as PostgreSQL names it.
        level: String,
    },
    /// The caller's REPEATABLE READ or SERIALIZABLE transaction conflicts with a concurrent
    /// transaction (its snapshot is older than an append to the same stream, or PostgreSQL
    /// reported a serialization failure): the transaction is aborted; roll it back and run it
    /// again.
    #[error("the transaction conflicts with a concurrent one: roll back and retry it")]
    SerializationConflict(#[source] BoxError),
    /// Encoding or decoding event data failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The database or the connection failed: retry later or report.
    #[error("event store backend failed")]
    Backend(#[source] BoxError),
}

impl StoreError {
    /// Wraps an infrastructure error.
    pub fn backend(error: impl Into<BoxError>) -> Self {
        Self::Backend(error.into())
    }

    /// Whether trying the same operation again may succeed without changing anything (a
    /// connection or database failure). Conflicts, vetoes and bad input are not retryable as they
    /// are: the caller must decide again or fix the input.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::SerializationConflict(_) => true,
            Self::Backend(_) => self
                .database_error()
                .is_none_or(DatabaseError::is_retryable),
            _ => false,
        }
    }

    /// The database error behind this one, if a database reported it.
    #[must_use]
    pub fn database_error(&self) -> Option<&DatabaseError> {
        find_database_error(self)
    }

    /// The SQLSTATE of the database error behind this one (such as `42P01`), if any.
    #[must_use]
    pub fn code(&self) -> Option<&str> {
        self.database_error().and_then(DatabaseError::code)
    }

    /// The constraint the database named, if any.
    #[must_use]
    pub fn constraint(&self) -> Option<&str> {
        self.database_error().and_then(DatabaseError::constraint)
    }

    /// Maps a processor's answer to the store error a caller sees.
    #[must_use]
    pub fn from_processor(by: &str, error: ProcessorError) -> Self {
        match error {
            ProcessorError::Veto(reason) => Self::Vetoed {
                by: by.to_owned(),
                reason,
            },
            ProcessorError::Failed(source) => Self::Processor {
                by: by.to_owned(),
                source,
            },
        }
    }
}

/// A database's error with what an operator and a retry loop need: its SQLSTATE, the constraint
/// it names, and whether retrying may succeed (serialization failures, deadlocks, lost or
/// refused connections, a server shutting down, timeouts). Backends wrap their driver's error in
/// it; find it behind any error with [`find_database_error`].
#[derive(Debug, thiserror::Error)]
#[error("database error{}{}", .code.as_ref().map_or_else(String::new, |c| format!(" [SQLSTATE {c}]")), .constraint.as_ref().map_or_else(String::new, |c| format!(" [constraint {c}]")))]
pub struct DatabaseError {
    code: Option<String>,
    constraint: Option<String>,
    retryable: bool,
    #[source]
    source: BoxError,
}

impl DatabaseError {
    /// Wraps a driver error with its SQLSTATE (none for errors that did not come from the
    /// server), the constraint it names, and whether a retry may succeed.
    pub fn new(
        code: Option<String>,
        constraint: Option<String>,
        retryable: bool,
        source: impl Into<BoxError>,
    ) -> Self {
        Self {
            code,
            constraint,
            retryable,
            source: source.into(),
        }
    }

    /// The same error, marked retryable or not (when the caller knows better than the SQLSTATE,
    /// say after it removed the cause).
    #[must_use]
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// The SQLSTATE, such as `23505`.
    #[must_use]
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// The constraint the error names.
    #[must_use]
    pub fn constraint(&self) -> Option<&str> {
        self.constraint.as_deref()
    }

    /// Whether retrying the operation may succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

/// The first [`DatabaseError`] in `error`'s chain (itself or one of its sources).
#[must_use]
pub fn find_database_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a DatabaseError> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<DatabaseError>() {
            return Some(found);
        }
        next = e.source();
    }
    None
}

fn display_version(version: Option<u64>) -> String {
    version.map_or_else(|| "no stream".to_owned(), |v| v.to_string())
}

/// An error and its causes on one line (`outer: cause: root cause`), for logs and stored error
/// texts.
#[must_use]
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod chain_tests {
    use super::*;

    #[test]
    fn error_chain_names_every_cause_in_order() {
        #[derive(Debug, thiserror::Error)]
        #[error("append failed")]
        struct Outer(#[source] std::io::Error);
        let error = Outer(std::io::Error::other("disk full"));
        assert_eq!(error_chain(&error), "append failed: disk full");
        assert_eq!(error_chain(&std::io::Error::other("alone")), "alone");
    }
}
