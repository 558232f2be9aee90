use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Category;

/// The stream version a writer expects before its append (optimistic concurrency).
///
/// Versions count from 0: the first event of a stream has version 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum ExpectedVersion {
    /// No check.
    #[default]
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream's last event must have this version.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream whose current version is `actual` satisfies this expectation.
    #[must_use]
    pub fn is_satisfied_by(self, actual: Option<u64>) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => actual.is_none(),
            Self::StreamExists => actual.is_some(),
            Self::Exact(v) => actual == Some(v),
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::NoStream => f.write_str("no stream"),
            Self::StreamExists => f.write_str("stream exists"),
            Self::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// Which events a position precondition looks at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PositionScope {
    /// Every event of the log.
    All,
    /// Events of one category.
    Category(Category),
}

/// A global precondition: append only if no event in `scope` was appended after position `after`.
///
/// A caller whose in-memory state was built from the log up to `after` uses it to append only if
/// the log has not moved in the part it looked at. `after = None` means "the scope must be empty".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExpectedPosition {
    /// The part of the log that is checked.
    pub scope: PositionScope,
    /// The newest global position the caller has seen in that scope.
    pub after: Option<u64>,
}

impl ExpectedPosition {
    /// No event at all was appended after `after`.
    #[must_use]
    pub fn all(after: Option<u64>) -> Self {
        Self {
            scope: PositionScope::All,
            after,
        }
    }

    /// No event of `category` was appended after `after`.
    #[must_use]
    pub fn category(category: Category, after: Option<u64>) -> Self {
        Self {
            scope: PositionScope::Category(category),
            after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations() {
        assert!(ExpectedVersion::Any.is_satisfied_by(None));
        assert!(ExpectedVersion::NoStream.is_satisfied_by(None));
        assert!(!ExpectedVersion::NoStream.is_satisfied_by(Some(0)));
        assert!(ExpectedVersion::StreamExists.is_satisfied_by(Some(0)));
        assert!(!ExpectedVersion::StreamExists.is_satisfied_by(None));
        assert!(ExpectedVersion::Exact(3).is_satisfied_by(Some(3)));
        assert!(!ExpectedVersion::Exact(3).is_satisfied_by(Some(4)));
    }
}
