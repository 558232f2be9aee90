//! Upkeep the run loop does on its intervals: deleting sent messages past their retention (and
//! forgetting idle backed-off destinations), and the pending-messages gauges.

use tracing::{debug, instrument};

use super::{Core, RelayDb};
use crate::{OutboxError, Sink};

impl<S: Sink, D: RelayDb> Core<S, D> {
    /// Deletes sent messages past their retention in bounded statements, and forgets idle
    /// backed-off destinations (see [`Relay::cleanup`](crate::Relay::cleanup)).
    #[instrument(skip_all)]
    pub(crate) async fn cleanup(&self) -> Result<u64, OutboxError> {
        let batch = self.options.cleanup_batch;
        let mut total = 0;
        loop {
            // The retention is measured at each statement: the cut-off slides.
            let deleted = self.db.cleanup_batch(self.options.retention, batch).await?;
            total += deleted;
            if deleted < batch as u64 {
                break;
            }
        }
        if total > 0 {
            debug!(deleted = total, "cleaned up sent messages");
        }
        let forgotten = self.db.forget_destinations().await?;
        if forgotten > 0 {
            debug!(
                destinations = forgotten,
                "forgot backed-off destinations without pending messages"
            );
        }
        Ok(total)
    }

    /// Forgets the keys left without unsent messages (a walk of due keys visits every key
    /// that has a row).
    pub(crate) async fn forget_idle_keys(&self) -> Result<u64, OutboxError> {
        let keys = self.db.forget_keys(self.options.cleanup_batch).await?;
        if keys > 0 {
            debug!(keys, "forgot keys without unsent messages");
        }
        Ok(keys)
    }

    pub(super) async fn record_stats(&self) -> Result<(), OutboxError> {
        let (pending, oldest) = self.db.stats().await?;
        #[expect(
            clippy::cast_precision_loss,
            reason = "a gauge; counts beyond 2^52 need no precision"
        )]
        let pending = pending as f64;
        metrics::gauge!("eventrail_outbox_pending").set(pending);
        metrics::gauge!("eventrail_outbox_oldest_pending_age_seconds").set(oldest);
        Ok(())
    }
}
