//! Shared pieces of eventrail's integration tests; the tests live in `tests/it`.

use eventrail_core::{BoxError, RecordedEvent};
use eventrail_worker::{Consumer, ConsumerScope};
use tokio_postgres::Transaction;

pub mod checks;
pub mod fleet;
pub mod saga_participant;
pub mod saga_process;
pub mod servers;
pub mod torture;
pub mod worker_process;

/// The outbox of schema `eventrail` as its messages stand, for conditions on `state`, `attempts`,
/// `lease_owner` and `sent_at`: a relay does not write a message's row when it sends it, its
/// key's progress passes it (see the outbox's migration 11). A sent message's attempts are at
/// least the one that sent it (only a key's head counts its attempts before the publish).
pub const OUTBOX_MESSAGES: &str = "(
    SELECT o.sequence, o.message_id, o.partition_key, o.destination, o.headers, o.payload,
           o.content_type, o.created_at, o.next_attempt_at, o.last_error,
           CASE WHEN s.sent THEN 'sent' ELSE o.state END AS state,
           CASE WHEN s.sent THEN greatest(o.attempts, 1) ELSE o.attempts END AS attempts,
           CASE WHEN s.sent THEN NULL ELSE o.lease_owner END AS lease_owner,
           CASE WHEN s.sent THEN NULL ELSE o.lease_expires_at END AS lease_expires_at,
           CASE WHEN s.sent THEN coalesce(o.sent_at, k.sent_at) END AS sent_at
    FROM eventrail.outbox AS o
    LEFT JOIN eventrail.outbox_keys AS k ON k.partition_key = o.partition_key
    CROSS JOIN LATERAL (
        SELECT o.state = 'sent' OR k.partition_key IS NULL OR o.sequence <= k.sent_through AS sent
    ) AS s
) AS outbox";

/// The table a [`Recorder`] writes to: one row per consumer and event, so a duplicate effect
/// fails the batch.
pub const HANDLED_DDL: &str = "CREATE TABLE IF NOT EXISTS handled (
    consumer text NOT NULL, position bigint NOT NULL, worker text NOT NULL, PRIMARY KEY (consumer, position))";

/// A consumer that records each event it handles in `handled`, in the batch transaction.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Its name.
    pub name: String,
    /// Its scope.
    pub scope: ConsumerScope,
    /// Written to each row, to see which worker handled what.
    pub worker: String,
}

impl Recorder {
    /// A recorder of every event.
    #[must_use]
    pub fn new(name: impl Into<String>, worker: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            scope: ConsumerScope::all(),
            worker: worker.into(),
        }
    }
}

impl Consumer for Recorder {
    fn name(&self) -> &str {
        &self.name
    }

    fn scope(&self) -> ConsumerScope {
        self.scope.clone()
    }

    async fn handle(&self, tx: &Transaction<'_>, event: &RecordedEvent) -> Result<(), BoxError> {
        let position = i64::try_from(event.global_position)?;
        tx.execute(
            "INSERT INTO handled (consumer, position, worker) VALUES ($1, $2, $3)",
            &[&self.name, &position, &self.worker],
        )
        .await?;
        Ok(())
    }
}
