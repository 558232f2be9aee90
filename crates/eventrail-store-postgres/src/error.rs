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
    /// A partition size of zero or below, or beyond `i64::MAX` positions.
    #[error(
        "invalid partition size {size}: give the number of positions per partition, at least 1"
    )]
    InvalidPartitionSize {
        /// The refused size.
        size: u64,
    },
    /// The log is already partitioned, with another partition size; nothing was changed.
    #[error("the log is already partitioned with {partition_size} positions per partition")]
    PartitionedDifferently {
        /// The size it was partitioned with.
        partition_size: u64,
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

/// Opening a connection (or taking one from a pool) failed, or its settings were refused.
///
/// Settings are checked before anything connects; [`is_retryable`](Self::is_retryable) tells a
/// passing condition (a timeout, an unreachable server) from a mistake to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL or connection string does not parse: fix it. It is not repeated here: it may hold
    /// a password.
    #[error("invalid database URL")]
    InvalidUrl(#[source] BoxError),
    /// A connection parameter has a value this library does not accept (an unknown `sslmode`):
    /// fix it.
    #[error("invalid connection parameter {name}={value:?}: {reason}")]
    InvalidParameter {
        /// The parameter.
        name: &'static str,
        /// The refused value.
        value: String,
        /// What is accepted.
        reason: &'static str,
    },
    /// The CA file named by `sslrootcert` cannot be read or holds no usable certificate: fix the
    /// path or the file.
    #[error("cannot use the CA certificates in {}", path.display())]
    RootCert {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The client certificate (`sslcert`) or its key (`sslkey`) cannot be read or used: fix the
    /// path or the file (PEM; the key unencrypted).
    #[error("cannot use the client certificate or key in {}", path.display())]
    ClientCert {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// `verify-ca` or `verify-full` without `sslrootcert`, and no system root certificate could
    /// be loaded: name a CA file with `sslrootcert`.
    #[error("no system root certificates could be loaded ({})", errors.join("; "))]
    NoSystemRoots {
        /// What failed while loading them.
        errors: Vec<String>,
    },
    /// rustls refused the TLS configuration: report it.
    #[error("tls configuration failed")]
    TlsConfig(#[source] rustls::Error),
    /// No connection was established within the connect timeout (TCP, TLS and authentication
    /// together): the server is unreachable, overloaded, or not answering. Retry later.
    #[error("connecting to the database timed out after {after:?}")]
    Timeout {
        /// The connect timeout.
        after: std::time::Duration,
    },
    /// No pooled connection became free within the pool's acquire timeout: every connection is
    /// busy. Retry later, or give the pool more connections.
    #[error("no pooled connection became free within {}", after.map_or_else(|| "the acquire timeout".to_owned(), |a| format!("{a:?}")))]
    AcquireTimeout {
        /// The acquire timeout, when known.
        after: Option<std::time::Duration>,
    },
    /// The TLS handshake failed: the server's certificate is not trusted, or not for the host
    /// name connected to (`verify-full`). The cause says which; fix the CA file, the host name or
    /// the `sslmode`.
    #[error("tls handshake with the database failed")]
    Tls(#[source] tokio_postgres::Error),
    /// The server refused the connection (authentication, `pg_hba.conf`, an unknown database or
    /// role): see the cause and its SQLSTATE ([`code`](Self::code)).
    #[error("the database refused the connection")]
    Refused(#[source] tokio_postgres::Error),
    /// The connection failed otherwise (TCP refused or reset, a name that does not resolve, a
    /// server without TLS under `sslmode=require`): see the cause; retry later.
    #[error("connecting to the database failed")]
    Failed(#[source] tokio_postgres::Error),
    /// An established connection (a LISTEN connection) ended: the cause says why, when known.
    /// Reconnect; whatever it was waiting for may have happened meanwhile.
    #[error("the database connection was lost")]
    Lost(#[source] Option<tokio_postgres::Error>),
    /// The pool could not be built, or is closed.
    #[error("connection pool failed")]
    Pool(#[source] BoxError),
}

impl ConnectError {
    /// Whether trying again later may succeed without changing the settings.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        use tokio_postgres::error::SqlState;
        match self {
            Self::Timeout { .. }
            | Self::AcquireTimeout { .. }
            | Self::Failed(_)
            | Self::Lost(_) => true,
            // The server is starting, shutting down or out of connection slots: it may let us
            // in later. Authentication and pg_hba.conf refusals stay refused.
            Self::Refused(e) => e.code().is_some_and(|code| {
                [
                    SqlState::TOO_MANY_CONNECTIONS,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                ]
                .contains(code)
            }),
            _ => false,
        }
    }

    /// Whether the settings themselves are wrong (a malformed URL, an unknown `sslmode`, an
    /// unreadable CA file): no retry can succeed until they are fixed.
    #[must_use]
    pub fn is_setting(&self) -> bool {
        matches!(
            self,
            Self::InvalidUrl(_)
                | Self::InvalidParameter { .. }
                | Self::RootCert { .. }
                | Self::ClientCert { .. }
                | Self::NoSystemRoots { .. }
                | Self::TlsConfig(_)
        )
    }

    /// The SQLSTATE the server sent when it refused the connection.
    #[must_use]
    pub fn code(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            Self::Refused(e) | Self::Failed(e) | Self::Tls(e) | Self::Lost(Some(e)) => e.code(),
            _ => None,
        }
    }

    /// Classifies a failed connection attempt.
    #[must_use]
    pub fn from_connect(error: tokio_postgres::Error) -> Self {
        if error.as_db_error().is_some() {
            return Self::Refused(error);
        }
        if has_tls_error(&error) {
            return Self::Tls(error);
        }
        Self::Failed(error)
    }

    /// Classifies a failure to take a connection from a deadpool pool: a wait past the acquire
    /// timeout is [`AcquireTimeout`](Self::AcquireTimeout), a connection not made within the
    /// create timeout is [`Timeout`](Self::Timeout), a failed connect is classified as by
    /// [`from_connect`](Self::from_connect).
    #[must_use]
    pub fn from_pool(error: deadpool_postgres::PoolError, pool: &deadpool_postgres::Pool) -> Self {
        use deadpool_postgres::{PoolError, TimeoutType};
        let timeouts = pool.timeouts();
        match error {
            PoolError::Timeout(TimeoutType::Wait) => Self::AcquireTimeout {
                after: timeouts.wait,
            },
            PoolError::Timeout(TimeoutType::Create | TimeoutType::Recycle) => Self::Timeout {
                after: timeouts.create.unwrap_or_default(),
            },
            PoolError::Backend(e) => Self::from_connect(e),
            other => Self::Pool(other.into()),
        }
    }
}

/// Whether rustls failed somewhere in `error`'s chain (tokio-rustls wraps rustls errors in an
/// `io::Error`, whose `source()` skips the wrapped error itself).
fn has_tls_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>() || has_tls_error(inner))
        {
            return true;
        }
        next = e.source();
    }
    false
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
    // A connection that could not be made or taken: its own classification decides.
    let error = match error.downcast::<ConnectError>() {
        Ok(e) => {
            let code = e.code().map(|c| c.code().to_owned());
            let retryable = e.is_retryable();
            return Box::new(DatabaseError::new(code, None, retryable, *e));
        }
        Err(other) => other,
    };
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
