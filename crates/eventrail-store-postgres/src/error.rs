use eventrail_core::BoxError;

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

pub(crate) fn is_unique_violation(error: &tokio_postgres::Error, constraint: &str) -> bool {
    error.as_db_error().is_some_and(|db| {
        db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            && db.constraint() == Some(constraint)
    })
}
