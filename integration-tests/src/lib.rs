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
