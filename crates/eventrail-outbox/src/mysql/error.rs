//! MySQL failures as the crate's errors: the SQLSTATE kept reachable, retryable ones marked.

use eventrail_core::{BoxError, DatabaseError};

use crate::OutboxError;

/// MySQL's error codes a retry may get past: a deadlock victim (1213), a lock wait timeout
/// (1205), the server shutting down (1053), too many connections (1040).
const RETRYABLE: [u16; 4] = [1213, 1205, 1053, 1040];

/// The MySQL error code of a duplicate key.
pub(crate) const DUPLICATE_KEY: u16 = 1062;

/// A failure as [`OutboxError::Database`]: a server error with its SQLSTATE; a lost connection
/// or a pool failure retryable.
pub(crate) fn db(error: impl Into<BoxError>) -> OutboxError {
    let error: BoxError = error.into();
    let error = match error.downcast::<mysql_async::Error>() {
        Ok(e) => Box::new(database_error(*e)),
        Err(other) => other,
    };
    OutboxError::Database(error)
}

fn database_error(error: mysql_async::Error) -> DatabaseError {
    match &error {
        mysql_async::Error::Server(server) => {
            let retryable = RETRYABLE.contains(&server.code) || server.state.starts_with("08");
            DatabaseError::new(Some(server.state.clone()), None, retryable, error)
        }
        // The connection, not the server, failed: a retry may succeed.
        mysql_async::Error::Io(_) | mysql_async::Error::Driver(_) => {
            DatabaseError::new(None, None, true, error)
        }
        _ => DatabaseError::new(None, None, false, error),
    }
}

/// The server's error code, if the server reported `error`.
pub(crate) fn server_code(error: &mysql_async::Error) -> Option<u16> {
    match error {
        mysql_async::Error::Server(server) => Some(server.code),
        _ => None,
    }
}
