//! Wakes consumer loops when new events may be readable.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};
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
        .query_one(
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

/// LISTEN on a dedicated connection; the head check every interval reconciles lost
/// notifications; after a reconnect the check runs at once (catch-up).
async fn listen(shared: &Shared, stop: &CancellationToken) {
    let mut retry = Duration::from_millis(100);
    loop {
        if stop.is_cancelled() {
            return;
        }
        match shared.connect.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    let mut messages =
                        futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(AsyncMessage::Notification(n)) => {
                                if tx.send(n.payload().parse::<u64>().ok()).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                warn!(error = %crate::error::chain(&e), "the LISTEN connection failed");
                                return;
                            }
                        }
                    }
                });
                let listened = client
                    .batch_execute(&format!("LISTEN {}", shared.options.notify_channel))
                    .await;
                if let Err(e) = listened {
                    warn!(error = %crate::error::chain(&e), "LISTEN failed");
                } else {
                    debug!(channel = %shared.options.notify_channel, "listening");
                    retry = Duration::from_millis(100);
                    // Catch up with anything appended while not listening.
                    if let Ok(head) = head_position(shared).await {
                        publish(shared, head);
                    }
                    let mut reconcile = tokio::time::interval(shared.options.dispatcher_interval);
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => { driver.abort(); return; }
                            message = rx.recv() => match message {
                                Some(position) => wake(shared, position),
                                None => break, // connection gone: reconnect
                            },
                            _ = reconcile.tick() => match head_position(shared).await {
                                Ok(head) => publish(shared, head),
                                Err(e) => warn!(error = %crate::error::chain(&e), "head check failed"),
                            },
                        }
                    }
                }
                driver.abort();
                metrics::counter!("eventrail_worker_listen_reconnects_total").increment(1);
            }
            Err(e) => {
                warn!(error = %crate::error::chain(&e), "connecting the LISTEN connection failed")
            }
        }
        if sleep_or_cancel(retry, stop).await {
            return;
        }
        retry = (retry * 2).min(shared.options.max_poll_interval);
    }
}
