//! A pooled connection that goes back to the pool only when its work ended.
//!
//! A future dropped mid-statement (a caller's timeout, an aborted task) would otherwise hand the
//! pool a connection whose statement still runs, or whose transaction is still open: the next
//! user's statements would queue behind it, waiting for whatever it waits for (a lock held by
//! someone else), or run inside it. Such a connection is closed instead; the server then rolls
//! back an open transaction. (A statement already sent in autocommit may still commit: the
//! server finishes it before it notices the client is gone.)

use std::sync::atomic::{AtomicBool, Ordering};

use deadpool_postgres::Object;
use tracing::debug;

/// A connection checked out of the pool for one operation: closed when dropped before
/// [`release`](Self::release), or while a transaction the operation started on it is open.
pub(super) struct Checkout {
    client: Option<Object>,
    /// Set by `release`: the operation ended with the connection outside any statement.
    released: bool,
    /// Between the start of a transaction the operation manages itself and its end.
    in_transaction: AtomicBool,
}

impl Checkout {
    pub(super) fn new(client: Object) -> Self {
        Self {
            client: Some(client),
            released: false,
            in_transaction: AtomicBool::new(false),
        }
    }

    pub(super) fn client(&self) -> &Object {
        self.client
            .as_ref()
            .expect("a checkout holds its connection until dropped")
    }

    pub(super) fn client_mut(&mut self) -> &mut Object {
        self.client
            .as_mut()
            .expect("a checkout holds its connection until dropped")
    }

    /// A transaction's start is about to go out: until [`transaction_ended`](Self::transaction_ended),
    /// no one else may inherit the connection.
    pub(super) fn transaction_started(&self) {
        self.in_transaction.store(true, Ordering::Relaxed);
    }

    /// The transaction committed or rolled back.
    pub(super) fn transaction_ended(&self) {
        self.in_transaction.store(false, Ordering::Relaxed);
    }

    /// Whether a transaction started on the connection has not ended (it could not be rolled
    /// back): the connection is closed however the operation ends.
    pub(super) fn in_transaction(&self) -> bool {
        self.in_transaction.load(Ordering::Relaxed)
    }

    /// The operation ended: the connection goes back to the pool when dropped (unless still in
    /// a transaction).
    pub(super) fn release(mut self) {
        self.released = true;
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if (!self.released || *self.in_transaction.get_mut())
            && let Some(client) = self.client.take()
        {
            debug!("an append stopped mid-statement or mid-transaction: closing its connection");
            drop(Object::take(client));
        }
    }
}
