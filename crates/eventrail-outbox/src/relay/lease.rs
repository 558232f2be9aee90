//! Leases: which keys of a batch the relay still holds ([`Leases`]), their renewal every third of
//! the lease while the batch publishes, and their release at shutdown.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use tracing::{debug, warn};

use super::{Core, RelayDb};
use crate::error::chain;
use crate::{OutboxError, OutboxMessage, Sink};

/// Which keys of a batch this relay still holds, as far as it knows.
pub(super) struct Leases {
    /// Heads whose lease a renewal found taken over or gone.
    pub(super) lost: HashSet<i64>,
    /// Heads whose key is settled: nothing left to renew.
    pub(super) settled: HashSet<i64>,
    /// When the last successful claim or renewal lapses: past it, no key is held.
    pub(super) valid_until: Instant,
}

impl Leases {
    pub(super) fn holds(&self, head: i64) -> bool {
        Instant::now() < self.valid_until && !self.lost.contains(&head)
    }
}

impl<S: Sink, D: RelayDb> Core<S, D> {
    /// Extends the batch's leases every third of the lease while it publishes; keys whose
    /// lease is gone are marked lost, so that their remaining messages are not published.
    pub(super) async fn keep_leases(
        &self,
        groups: &[(i64, Vec<&OutboxMessage>)],
        leases: &Mutex<Leases>,
    ) -> std::convert::Infallible {
        let lease = self.options.lease;
        loop {
            tokio::time::sleep(lease / 3).await;
            let held: Vec<i64> = {
                let l = leases.lock().unwrap_or_else(PoisonError::into_inner);
                groups
                    .iter()
                    .map(|(head, _)| *head)
                    .filter(|h| !l.lost.contains(h) && !l.settled.contains(h))
                    .collect()
            };
            if held.is_empty() {
                continue;
            }
            let sent = Instant::now();
            match self.db.renew(&held, self.id, lease).await {
                Ok(renewed) => {
                    let renewed: HashSet<i64> = renewed.into_iter().collect();
                    let mut l = leases.lock().unwrap_or_else(PoisonError::into_inner);
                    l.valid_until = sent + lease;
                    // A key settled meanwhile is not lost, only done.
                    let lost: Vec<i64> = held
                        .into_iter()
                        .filter(|h| !renewed.contains(h) && !l.settled.contains(h))
                        .collect();
                    if !lost.is_empty() {
                        warn!(
                            keys = lost.len(),
                            "outbox leases lost: those keys stop publishing"
                        );
                        l.lost.extend(lost);
                    }
                }
                // The leases may still hold; `valid_until` stops publishing once they lapse.
                Err(e) => warn!(error = %chain(&e), "outbox lease renewal failed"),
            }
        }
    }

    pub(super) async fn release_leases(&self) -> Result<(), OutboxError> {
        let released = self.db.release_all(self.id).await?;
        debug!(released, "released leases");
        Ok(())
    }
}
