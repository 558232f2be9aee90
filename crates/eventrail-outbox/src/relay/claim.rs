//! Claiming: the database picks due keys' heads (skipping leased keys and backed-off
//! destinations) and leases up to `max_per_key` messages of each; this turns them into a
//! [`Batch`].
//!
//! A claim of due keys walks the keys least sent first and stops at the heads it wants, but it
//! passes every key before them whose head it cannot take (in flight, parked, backed off, or
//! idle until the upkeep forgets it), a few index descents each. A relay that just sent a
//! key's full run (`max_per_key` messages) follows that key up instead: it claims it by name,
//! one descent, while due-key claims keep running on the poll interval, when settles free
//! keys that are not followed, and on hints (rate-limited while following: see `run`), so
//! other keys are not starved.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{MutexGuard, PoisonError};
use std::time::Instant;

use tracing::{debug, instrument};

use super::{ClaimRequest, ClaimScope, Core, RelayDb};
use crate::{OutboxError, OutboxMessage, Sink};

/// A claimed batch: its messages in outbox order, and for each the sequence of its key's head
/// (the one row whose lease holds the key).
pub(super) struct Batch {
    pub(super) messages: Vec<OutboxMessage>,
    pub(super) heads: Vec<i64>,
    /// Whether a claim of due keys locked as many heads as it asked for: more keys may be due.
    pub(super) more: bool,
    /// When the claim was sent: the lease runs from a database instant after this one.
    pub(super) leased_at: Instant,
    /// Destinations whose backoff has just ended: one publish probes each first.
    pub(super) probes: HashSet<String>,
}

impl<S: Sink, D: RelayDb> Core<S, D> {
    /// Claims due keys: the keys are walked least sent first.
    pub(super) async fn claim_due(&self) -> Result<Batch, OutboxError> {
        metrics::counter!("eventrail_outbox_claims_total", "scope" => "due").increment(1);
        // The walk looks at every key, the followed ones too.
        self.followed().clear();
        self.claim(ClaimScope::Due, self.key_limit()).await
    }

    /// Claims the keys whose full runs this relay sent since its last claim (the keys most
    /// likely to have more due), as many as one claim takes; `None` when there are none.
    pub(super) async fn claim_followed(&self) -> Option<Result<Batch, OutboxError>> {
        let key_limit = self.key_limit();
        let keys: Vec<String> = {
            let mut follow = self.followed();
            // A key appears once in a claim: claimed twice, its run would be published twice.
            let mut seen = HashSet::new();
            follow.retain(|k| seen.insert(k.clone()));
            let n = follow.len().min(key_limit);
            follow.drain(..n).collect()
        };
        if keys.is_empty() {
            return None;
        }
        metrics::counter!("eventrail_outbox_claims_total", "scope" => "followed").increment(1);
        let key_limit = keys.len();
        Some(self.claim(ClaimScope::Keys(keys), key_limit).await)
    }

    /// Whether keys wait to be followed up.
    pub(super) fn has_followed(&self) -> bool {
        !self.followed().is_empty()
    }

    /// Records keys whose full runs were sent: the next claims look at them first.
    pub(super) fn follow(&self, keys: impl IntoIterator<Item = String>) {
        self.followed().extend(keys);
    }

    /// The keys to follow up (a poisoned lock still holds a valid list of keys).
    fn followed(&self) -> MutexGuard<'_, Vec<String>> {
        self.follow.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Heads one claim locks: about `batch_size` divided by the messages per key the last claim
    /// found, rather than heads it would not take messages from.
    fn key_limit(&self) -> usize {
        self.options
            .batch_size
            .div_ceil(self.run_length.load(Ordering::Relaxed).max(1))
    }

    #[instrument(skip_all)]
    async fn claim(&self, scope: ClaimScope, key_limit: usize) -> Result<Batch, OutboxError> {
        let leased_at = Instant::now();
        let batch_size = self.options.batch_size;
        let due = scope == ClaimScope::Due;
        let claimed = self
            .db
            .claim(ClaimRequest {
                scope,
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
            debug!(due, keys = taken, messages = messages.len(), "claimed");
        }
        Ok(Batch {
            messages,
            heads,
            more: due && claimed.keys_locked >= key_limit,
            leased_at,
            probes,
        })
    }
}
