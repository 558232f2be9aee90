//! Claiming: the database picks due keys' heads (skipping leased keys and backed-off
//! destinations) and leases up to `max_per_key` messages of each; this turns them into a
//! [`Batch`].

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::{debug, instrument};

use super::{ClaimRequest, Core, RelayDb};
use crate::{OutboxError, OutboxMessage, Sink};

/// A claimed batch: its messages in outbox order, and for each the sequence of its key's head
/// (the one row whose lease holds the key).
pub(super) struct Batch {
    pub(super) messages: Vec<OutboxMessage>,
    pub(super) heads: Vec<i64>,
    /// Whether the claim locked as many heads as it asked for: more keys may be due.
    pub(super) more: bool,
    /// When the claim was sent: the lease runs from a database instant after this one.
    pub(super) leased_at: Instant,
    /// Destinations whose backoff has just ended: one publish probes each first.
    pub(super) probes: HashSet<String>,
}

impl<S: Sink, D: RelayDb> Core<S, D> {
    #[instrument(skip_all)]
    pub(super) async fn claim(&self) -> Result<Batch, OutboxError> {
        let leased_at = Instant::now();
        let batch_size = self.options.batch_size;
        let key_limit = batch_size.div_ceil(self.run_length.load(Ordering::Relaxed).max(1));
        let claimed = self
            .db
            .claim(ClaimRequest {
                key_limit,
                max_per_key: self.options.max_per_key,
                batch_size,
                owner: self.id,
                lease: self.options.lease,
            })
            .await?;
        let probes: HashSet<String> = claimed
            .rows
            .iter()
            .filter(|r| r.probe)
            .map(|r| r.message.destination.clone())
            .collect();
        let (messages, heads): (Vec<OutboxMessage>, Vec<i64>) = claimed
            .rows
            .into_iter()
            .map(|r| (r.message, r.head))
            .unzip();
        let taken = heads.iter().collect::<HashSet<_>>().len();
        self.in_flight_messages
            .fetch_add(messages.len(), Ordering::Relaxed);
        if let Some(run) = messages.len().checked_div(taken) {
            self.run_length.store(run, Ordering::Relaxed);
        }
        if !messages.is_empty() {
            debug!(keys = taken, messages = messages.len(), "claimed");
        }
        Ok(Batch {
            messages,
            heads,
            more: claimed.keys_locked >= key_limit,
            leased_at,
            probes,
        })
    }
}
