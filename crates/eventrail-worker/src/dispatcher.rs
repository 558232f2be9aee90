//! Wakes consumer loops when new events may be readable.

use std::sync::Arc;

use eventrail_store_postgres::ListenEvent;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::runtime::{Shared, sleep_or_cancel};
use crate::{DispatcherStrategy, WorkerError};

/// Publishes a head position seen by a head check; waiting consumer loops wake (a broadcast)
/// when it is new.
fn publish(shared: &Shared, head: u64) {
    shared.head.send_if_modified(|current| {
        let newer = head > *current;
        if newer {
            *current = head;
        }
        newer
    });
}

/// A notification always wakes: a commit below the head may be the one filling a hole that a
/// consumer waits on.
fn wake(shared: &Shared, position: Option<u64>) {
    shared
        .head
        .send_modify(|current| *current = (*current).max(position.unwrap_or(0)));
}

async fn head_position(shared: &Shared) -> Result<u64, WorkerError> {
    let client = shared.store.pool().get().await.map_err(crate::error::db)?;
    let schema = eventrail_store_postgres::validate_identifier(
        "schema",
        shared.store.options().schema_name(),
    )?;
    let row = client
        .query_typed_one(
            &format!("SELECT coalesce(max(global_position), 0) FROM {schema}.events"),
            &[],
        )
        .await
        .map_err(crate::error::db)?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or_default())
}

pub(crate) async fn run_dispatcher(shared: Arc<Shared>, stop: CancellationToken) {
    match shared.options.dispatcher {
        DispatcherStrategy::Poll => poll(&shared, &stop).await,
        DispatcherStrategy::Notify => listen(&shared, &stop).await,
    }
}

async fn poll(shared: &Shared, stop: &CancellationToken) {
    loop {
        match head_position(shared).await {
            Ok(head) => publish(shared, head),
            Err(e) => warn!(error = %crate::error::chain(&e), "head check failed"),
        }
        if sleep_or_cancel(shared.options.dispatcher_interval, stop).await {
            return;
        }
    }
}

/// LISTEN on a dedicated connection ([`PgListener`](eventrail_store_postgres::PgListener)); the
/// head check every interval reconciles lost notifications, also while the listener reconnects;
/// after each (re)connection the check runs at once (catch-up).
async fn listen(shared: &Shared, stop: &CancellationToken) {
    let listener = shared
        .connect
        .listener(&shared.component(), &[&shared.options.notify_channel]);
    let mut listener = match listener {
        Ok(l) => l.max_backoff(shared.options.max_poll_interval),
        Err(e) => {
            // The channel was validated when the worker was built.
            warn!(error = %crate::error::chain(&e), "cannot LISTEN; polling instead");
            return poll(shared, stop).await;
        }
    };
    let mut reconcile = tokio::time::interval(shared.options.dispatcher_interval);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            event = listener.recv() => match event {
                Ok(ListenEvent::Notification(n)) if n.payload() == crate::runtime::ASSIGNMENTS_MOVED => {
                    shared.assignments_moved.notify_one();
                }
                Ok(ListenEvent::Notification(n)) => wake(shared, n.payload().parse::<u64>().ok()),
                Ok(ListenEvent::Listening { reconnected }) => {
                    debug!(channel = %shared.options.notify_channel, reconnected, "listening");
                    if reconnected {
                        metrics::counter!("eventrail_worker_listen_reconnects_total").increment(1);
                    }
                    // Catch up with anything appended while not listening.
                    if let Ok(head) = head_position(shared).await {
                        publish(shared, head);
                    }
                }
                Ok(_) => {}
                Err(e) => warn!(error = %crate::error::chain(&e), "the LISTEN connection failed; reconnecting"),
            },
            _ = reconcile.tick() => match head_position(shared).await {
                Ok(head) => publish(shared, head),
                Err(e) => warn!(error = %crate::error::chain(&e), "head check failed"),
            },
        }
    }
}
