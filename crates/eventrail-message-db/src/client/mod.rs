//! The Message DB client, one concern per module:
//!
//! - `sql`: the SQL text of every call;
//! - `conn`: the executor (pooled connection or caller's transaction) and each call's one
//!   implementation;
//! - `pooled`: [`MessageDb`]'s calls on its pool;
//! - `tx`: the same calls on a caller's transaction (`_in`).
//!
//! This module holds the client itself, its constructors and accessors.

use std::fmt;

use deadpool_postgres::Pool;
use eventrail_store_postgres::{ConnectError, PgConnectOptions};

use crate::{MessageDbError, MessageDbOptions};

mod conn;
mod pooled;
mod sql;
mod tx;

/// A Message DB client over a deadpool-postgres pool.
///
/// Every call sets Message DB's search path itself (for its own statement only), so the pool can
/// be shared with other code. The `_in` methods (such as
/// [`write_message_in`](Self::write_message_in)) make the same calls on a caller's transaction.
///
/// Cloning is cheap: clones share the pool.
#[derive(Clone)]
pub struct MessageDb {
    pool: Pool,
    options: MessageDbOptions,
}

impl fmt::Debug for MessageDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageDb")
            .field("pool", &self.pool.status())
            .field("options", &self.options)
            .finish()
    }
}

impl MessageDb {
    /// A client on `pool`, with default options.
    pub fn new(pool: Pool) -> Self {
        Self::with_options(pool, MessageDbOptions::default())
    }

    /// A client on `pool`.
    pub fn with_options(pool: Pool, options: MessageDbOptions) -> Self {
        Self { pool, options }
    }

    /// A client with a pool of its own on `url`, for example
    /// `postgres://message_store@localhost/message_store?sslmode=verify-full`: TLS, timeouts and
    /// the pool size as [`PgConnectOptions`] reads them. Its connections start with
    /// `message_store, public` as their search path (as Eventide's clients do), so calls need not
    /// set it, and are named `eventrail-message-db` unless the URL sets an `application_name`.
    ///
    /// # Errors
    /// [`MessageDbError::Connect`] when the URL does not parse or its TLS settings cannot work.
    /// No connection is opened yet.
    pub fn connect(url: &str) -> Result<Self, MessageDbError> {
        Self::connect_with(&PgConnectOptions::from_url(url)?)
    }

    /// [`connect`](Self::connect) with connection options built in code.
    ///
    /// # Errors
    /// [`MessageDbError::Connect`] when its TLS settings cannot work (an unreadable CA file).
    pub fn connect_with(connect: &PgConnectOptions) -> Result<Self, MessageDbError> {
        let pool = connect.pool_adjusted("eventrail-message-db", |config| {
            let options = match config.get_options() {
                Some(given) => format!("{given} -c search_path=message_store,public"),
                None => "-c search_path=message_store,public".to_owned(),
            };
            config.options(options);
        })?;
        Ok(Self::new(pool))
    }

    /// The pool.
    #[must_use]
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The options.
    pub fn options(&self) -> &MessageDbOptions {
        &self.options
    }

    async fn conn(&self) -> Result<deadpool_postgres::Object, MessageDbError> {
        self.pool
            .get()
            .await
            .map_err(|e| ConnectError::from_pool(e, &self.pool).into())
    }
}
