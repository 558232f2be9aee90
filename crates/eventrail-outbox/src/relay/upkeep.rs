//! Upkeep the run loop does on its intervals: deleting sent messages past their retention (and
//! forgetting idle backed-off destinations), and the pending-messages gauges.

use tokio_postgres::types::Type;
use tracing::{debug, instrument};

use super::{Relay, to_i64};
use crate::error::db;
use crate::{OutboxError, Sink};

impl<S: Sink> Relay<S> {
    /// Deletes sent messages older than the retention (measured on the database clock at each
    /// statement, so the cut-off slides), in statements of at most the cleanup batch size,
    /// until none is left, and forgets backed-off destinations that have no pending message
    /// left. Returns how many messages were deleted.
    ///
    /// # Errors
    /// [`OutboxError::Database`].
    #[instrument(skip_all)]
    pub async fn cleanup(&self) -> Result<u64, OutboxError> {
        let client = self.client().await?;
        let retention_ms = self.options.retention.as_secs_f64() * 1000.0;
        let batch = to_i64(self.options.cleanup_batch);
        let mut total = 0;
        loop {
            let deleted = self
                .options
                .statements
                .execute(
                    &*client,
                    &self.tables.cleanup,
                    &[(&retention_ms, Type::FLOAT8), (&batch, Type::INT8)],
                )
                .await
                .map_err(db)?;
            total += deleted;
            if deleted < batch.unsigned_abs() {
                break;
            }
        }
        if total > 0 {
            debug!(deleted = total, "cleaned up sent messages");
        }
        let forgotten = client
            .execute_typed(&self.tables.forget_destinations, &[])
            .await
            .map_err(db)?;
        if forgotten > 0 {
            debug!(
                destinations = forgotten,
                "forgot backed-off destinations without pending messages"
            );
        }
        Ok(total)
    }

    pub(super) async fn record_stats(&self) -> Result<(), OutboxError> {
        let client = self.client().await?;
        let row = client
            .query_typed_one(&self.tables.stats, &[])
            .await
            .map_err(db)?;
        #[expect(
            clippy::cast_precision_loss,
            reason = "a gauge; counts beyond 2^52 need no precision"
        )]
        let pending = row.get::<_, i64>(0) as f64;
        metrics::gauge!("eventrail_outbox_pending").set(pending);
        metrics::gauge!("eventrail_outbox_oldest_pending_age_seconds").set(row.get::<_, f64>(1));
        Ok(())
    }
}
