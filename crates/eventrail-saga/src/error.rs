use eventrail_core::{BoxError, StoreError};
use eventrail_store_postgres::{ConfigError, ConnectError};
use uuid::Uuid;

/// What is wrong with a saga definition; found when it is built, before anything runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DefinitionError {
    /// The document could not be read (malformed JSON or YAML, an unknown field): fix it.
    #[error("saga definition could not be read: {0}")]
    Parse(String),
    /// A definition or step name is empty or longer than 100 characters.
    #[error("invalid name {0:?}")]
    InvalidName(String),
    /// A definition needs at least one step.
    #[error("a saga definition needs at least one step")]
    NoSteps,
    /// Two steps have this name.
    #[error("two steps are named {0:?}")]
    DuplicateStep(String),
    /// A step depends on a step that does not exist.
    #[error("step {step:?} depends on unknown step {dependency:?}")]
    UnknownDependency {
        /// The step.
        step: String,
        /// The name it depends on.
        dependency: String,
    },
    /// The dependencies form a cycle through these steps.
    #[error("the dependencies form a cycle through {0:?}")]
    Cycle(Vec<String>),
    /// More than one pivot step (the point of no return is one step).
    #[error("more than one pivot step: {0:?} and {1:?}")]
    SeveralPivots(String, String),
    /// A step that is not an ancestor of the pivot could fail after the pivot succeeded, which
    /// would need compensation past the point of no return: make it retriable, or an ancestor.
    #[error("step {step:?} is not before pivot {pivot:?}, so it must be retriable")]
    NotRetriableAfterPivot {
        /// The step.
        step: String,
        /// The pivot.
        pivot: String,
    },
    /// A step's settings are inconsistent (a missing handler, timer length or signal name).
    #[error("step {step:?}: {reason}")]
    InvalidStep {
        /// The step.
        step: String,
        /// What is wrong.
        reason: String,
    },
    /// A condition refers to something a step cannot see.
    #[error("condition of step {step:?}: {reason}")]
    InvalidCondition {
        /// The step.
        step: String,
        /// What is wrong.
        reason: String,
    },
}

/// Errors of starting, signalling, running and administering sagas.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SagaError {
    /// A table, schema or channel name was refused: pick another.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The definition is invalid: fix it.
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    /// The saga input (or a step output) could not be serialized or deserialized: fix the type.
    #[error("saga input or output could not be encoded: {0}")]
    Encode(String),
    /// No saga has this id.
    #[error("no saga {0}")]
    NotFound(Uuid),
    /// The saga has no step of this name.
    #[error("saga {saga} has no step {step:?}")]
    NoSuchStep {
        /// The saga.
        saga: Uuid,
        /// The name asked for.
        step: String,
    },
    /// No definition of this name and version is registered in the database.
    #[error("no saga definition {name:?} version {version}")]
    UnknownDefinition {
        /// Its name.
        name: String,
        /// Its version.
        version: u32,
    },
    /// A different definition is already registered under this name and version: give the new
    /// one a new version (instances in flight keep the graph they started with).
    #[error("saga definition {name:?} version {version} is already registered with another graph")]
    DefinitionChanged {
        /// Its name.
        name: String,
        /// Its version.
        version: u32,
    },
    /// The operation does not apply to a saga in this state (cancelling a completed saga,
    /// retrying one that is not stuck): look at it first.
    #[error("saga {saga} is {state}: {operation} does not apply")]
    InvalidState {
        /// The saga.
        saga: Uuid,
        /// Its state.
        state: String,
        /// What was asked.
        operation: &'static str,
    },
    /// The saga passed its pivot: it cannot be cancelled or compensated any more.
    #[error("saga {0} passed its pivot step and only goes forward")]
    PastPivot(Uuid),
    /// Recording the saga's events failed (see [`StoreError`]); nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A connection could not be opened or taken from the pool: see [`ConnectError`].
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The database or the connection failed: retry later.
    #[error("saga database operation failed")]
    Database(#[source] BoxError),
}

pub(crate) fn db(error: impl Into<BoxError>) -> SagaError {
    SagaError::Database(eventrail_store_postgres::classify(error.into()))
}

pub(crate) fn encode(error: impl std::fmt::Display) -> SagaError {
    SagaError::Encode(error.to_string())
}

impl SagaError {
    /// The database error behind this one, if a database reported it.
    #[must_use]
    pub fn database_error(&self) -> Option<&eventrail_core::DatabaseError> {
        eventrail_core::find_database_error(self)
    }

    /// The SQLSTATE of the database error behind this one, if any.
    #[must_use]
    pub fn code(&self) -> Option<&str> {
        self.database_error()
            .and_then(eventrail_core::DatabaseError::code)
    }

    /// Whether trying again later may succeed (a lost connection, a serialization failure), as
    /// opposed to a mistake that must be fixed first.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store(e) => e.is_retryable(),
            Self::Connect(e) => e.is_retryable(),
            Self::Database(_) => self
                .database_error()
                .is_none_or(eventrail_core::DatabaseError::is_retryable),
            _ => false,
        }
    }
}
