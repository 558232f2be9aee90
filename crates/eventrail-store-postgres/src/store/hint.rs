//! The wake-up hint of the store's own appends, sent after the commit.
//!
//! A `pg_notify` inside the appending transaction makes PostgreSQL serialise the commits of
//! notifying transactions (they queue on one global lock), which defeats group commit. The
//! store's own appends therefore commit without it, and a background task sends the newest
//! committed position on a pooled connection, coalescing: while one hint is on its way, later
//! ones collapse into the next. A lost hint (a crash between commit and hint) costs subscribers
//! one poll of the head, which they run anyway.

use std::sync::OnceLock;
use std::time::Duration;

use deadpool_postgres::Pool;
use postgres_types::Type;
use tokio::sync::watch;
use tracing::debug;

/// Sends coalesced hints for one store (and its clones).
pub(super) struct Hinter {
    channel: String,
    pool: Pool,
    /// Started on the first hint, inside the runtime.
    sender: OnceLock<watch::Sender<u64>>,
}

impl Hinter {
    pub(super) fn new(channel: String, pool: Pool) -> Self {
        Self {
            channel,
            pool,
            sender: OnceLock::new(),
        }
    }

    /// Announces that `position` is committed.
    pub(super) fn hint(&self, position: u64) {
        let sender = self.sender.get_or_init(|| {
            let (tx, rx) = watch::channel(0);
            tokio::spawn(send_hints(self.channel.clone(), self.pool.clone(), rx));
            tx
        });
        sender.send_if_modified(|newest| {
            let newer = position > *newest;
            if newer {
                *newest = position;
            }
            newer
        });
    }
}

/// The hint's statement: the notification, committed without waiting for its WAL flush.
const HINT: &str = "SELECT pg_notify($1, $2), set_config('synchronous_commit', 'off', true)";

/// The shortest gap between two hints: appends in that window share one (a few milliseconds
/// of wake-up latency against a statement per append on a busy single writer).
const MIN_GAP: Duration = Duration::from_millis(5);

/// Until every store clone is gone: wait for a newer position, send it, repeat.
async fn send_hints(channel: String, pool: Pool, mut newest: watch::Receiver<u64>) {
    while newest.changed().await.is_ok() {
        let next = tokio::time::Instant::now() + MIN_GAP;
        let position = newest.borrow_and_update().to_string();
        let sent = async {
            let client = pool.get().await?;
            // Unnamed: works behind PgBouncer in transaction mode as well. A notification needs
            // a transaction id, so its commit would wait for a WAL flush like an append's and
            // take a place in every group commit; a wake-up need not survive a crash, so this
            // one transaction commits asynchronously.
            client
                .query_typed(HINT, &[(&channel, Type::TEXT), (&position, Type::TEXT)])
                .await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        };
        if let Err(e) = sent.await {
            debug!(error = %eventrail_core::error_chain(&*e), "the wake-up hint was not sent; subscribers poll");
        }
        tokio::time::sleep_until(next).await;
    }
}
