//! Wakes runners after a commit, coalesced: at most one `pg_notify` every few milliseconds, on
//! a pooled connection and outside the transaction that made a step due. A `pg_notify` inside
//! a transaction would serialise the commits of every saga transition (PostgreSQL takes one
//! lock for all notifying commits); polling stays the safety net.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::Notify;
use tokio_postgres::types::Type;

/// The gap between two notifications: wake-ups in between share one.
const GAP: Duration = Duration::from_millis(5);

#[derive(Debug)]
pub(crate) struct Waker {
    pending: Arc<Notify>,
    task: OnceLock<()>,
    pool: Pool,
    channel: String,
}

impl Waker {
    pub(crate) fn new(pool: Pool, channel: String) -> Self {
        Self {
            pending: Arc::new(Notify::new()),
            task: OnceLock::new(),
            pool,
            channel,
        }
    }

    /// Asks for a notification soon.
    pub(crate) fn wake(&self) {
        self.task.get_or_init(|| {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(send(
                    Arc::downgrade(&self.pending),
                    self.pool.clone(),
                    self.channel.clone(),
                ));
            }
        });
        self.pending.notify_one();
    }
}

impl Drop for Waker {
    fn drop(&mut self) {
        // Ends the task: it holds the notify only weakly and finds it gone.
        self.pending.notify_one();
    }
}

async fn send(pending: Weak<Notify>, pool: Pool, channel: String) {
    loop {
        let Some(notify) = pending.upgrade() else {
            return;
        };
        // Re-checks now and then whether the waker is gone.
        let woken = tokio::time::timeout(Duration::from_secs(1), notify.notified())
            .await
            .is_ok();
        drop(notify);
        if !woken {
            continue;
        }
        if let Ok(client) = pool.get().await {
            let _ = client
                // Committed without waiting for its WAL flush: a wake-up need not survive a
                // crash, and a flush would take a place in every group commit.
                .query_typed(
                    "SELECT pg_notify($1, ''), set_config('synchronous_commit', 'off', true)",
                    &[(&channel, Type::TEXT)],
                )
                .await;
        }
        tokio::time::sleep(GAP).await;
    }
}
