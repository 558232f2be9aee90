use eventrail_core::{BoxError, DatabaseError};

/// A configuration value was refused before anything touched the database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A schema, table, role or channel name is not a plain lowercase identifier: pick another.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidIdentifier {
        /// Which setting.
        what: &'static str,
        /// The refused value.
        value: String,
        /// Why.
        reason: &'static str,
    },
}

/// Applying migrations failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrationError {
    /// An applied migration's SQL differs from the embedded one: someone edited an applied
    /// migration. Restore it; never edit applied migrations.
    #[error("migration {version} ({name}) was applied with another checksum")]
    ChecksumMismatch {
        /// Its version.
        version: i32,
        /// Its name.
        name: String,
    },
    /// The database holds a migration this binary does not know: a newer eventrail migrated it.
    /// Upgrade this binary; nothing was applied.
    #[error(
        "the database holds migration {version} ({name}), unknown to this eventrail: upgrade it"
    )]
    UnknownMigration {
        /// Its version.
        version: i32,
        /// Its recorded name.
        name: String,
    },
    /// Another migrator held the schema's migration lock longer than the lock timeout.
    #[error(
        "another migrator holds the migration lock (pid {pid:?}, application {application_name:?})"
    )]
    Locked {
        /// The holder's backend pid, when it could be seen.
        pid: Option<i32>,
        /// The holder's `application_name`, when it could be seen.
        application_name: Option<String>,
    },
    /// A configuration value was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database failed: the failing migration was rolled back.
    #[error("migration failed")]
    Database(#[source] BoxError),
}

impl MigrationError {
    /// The SQLSTATE of the database error behind this one, if any.
    #[must_use]
    pub fn code(&self) -> Option<&str> {
        eventrail_core::find_database_error(self).and_then(DatabaseError::code)
    }
}

pub(crate) fn is_unique_violation(error: &tokio_postgres::Error, constraint: &str) -> bool {
    error.as_db_error().is_some_and(|db| {
        db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            && db.constraint() == Some(constraint)
    })
}

/// A PostgreSQL driver error as a [`DatabaseError`]: its SQLSTATE, the constraint it names, and
/// whether a retry may succeed.
#[must_use]
pub fn database_error(error: tokio_postgres::Error) -> DatabaseError {
    let code = error.code().map(|c| c.code().to_owned());
    let constraint = error
        .as_db_error()
        .and_then(|db| db.constraint())
        .map(str::to_owned);
    let retryable = code.as_deref().is_none_or(is_retryable_sqlstate);
    DatabaseError::new(code, constraint, retryable, error)
}

/// SQLSTATEs after which the same operation may succeed: connection exceptions (08), transaction
/// rollbacks such as serialization failures and deadlocks (40), insufficient resources (53), a
/// server shutting down or not accepting connections yet (57P01-57P03), a lock or statement
/// timeout (55P03, 57014).
#[must_use]
pub fn is_retryable_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("40")
        || code.starts_with("53")
        || matches!(code, "57P01" | "57P02" | "57P03" | "55P03" | "57014")
}

/// `error` with a PostgreSQL driver or pool error behind it wrapped as a [`DatabaseError`], so
/// that callers can read its SQLSTATE and whether to retry (see
/// [`eventrail_core::find_database_error`]); other errors unchanged.
#[must_use]
pub fn classify(error: BoxError) -> BoxError {
    let error = match error.downcast::<tokio_postgres::Error>() {
        Ok(e) => return Box::new(database_error(*e)),
        Err(other) => other,
    };
    match error.downcast::<deadpool_postgres::PoolError>() {
        Ok(pool) => match *pool {
            deadpool_postgres::PoolError::Backend(e) => Box::new(database_error(e)),
            // Timeouts and a closed pool: nothing the server said; a retry may succeed.
            other => Box::new(DatabaseError::new(None, None, true, other)),
        },
        Err(other) => other,
    }
}
