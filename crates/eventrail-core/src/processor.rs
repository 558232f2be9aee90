use std::future::Future;

use crate::{
    AppendOutcome, AppendRequest, BoxError, EventStore, ExpectedPosition, PositionScope,
    ProcessorError, RecordedEvent, StoreError,
};

/// Runs inside the append transaction: validates (may veto) and updates read models in the same
/// database, strongly consistent with the log. It must not cause external side effects: the
/// transaction may still roll back.
///
/// `Tx` is the store's transaction type (`tokio_postgres::Transaction` for PostgreSQL, `()` for
/// the in-memory store).
pub trait StatelessProcessor<Tx: ?Sized>: Send + Sync + 'static {
    /// A stable name, reported in [`StoreError::Vetoed`].
    fn name(&self) -> &str;

    /// Sees the events just appended (with their positions) in the append transaction.
    ///
    /// # Errors
    /// [`ProcessorError::Veto`] refuses the append; [`ProcessorError::Failed`] aborts it.
    fn process(
        &self,
        tx: &Tx,
        events: &[RecordedEvent],
    ) -> impl Future<Output = Result<(), ProcessorError>> + Send;
}

/// Keeps a projection outside the log's database (memory, another store) and owns its position.
///
/// Two-phase: [`prepare`](Self::prepare) runs before the append commits and may veto;
/// [`commit`](Self::commit) runs after it committed, [`rollback`](Self::rollback) when it did not.
/// When the log moved past the processor's position, [`append_consistent`] catches it up with
/// [`apply`](Self::apply) and retries.
pub trait StatefulProcessor: Send + Sync {
    /// A stable name, reported in [`StoreError::Vetoed`].
    fn name(&self) -> &str;

    /// The part of the log the projection follows.
    fn scope(&self) -> PositionScope;

    /// Global position of the last event applied (`None`: nothing yet).
    ///
    /// # Errors
    /// [`ProcessorError::Failed`] when the projection cannot be read.
    fn position(&self) -> impl Future<Output = Result<Option<u64>, ProcessorError>> + Send;

    /// Applies committed events of its scope, in order (catch-up).
    ///
    /// # Errors
    /// [`ProcessorError::Failed`] when the projection cannot be written.
    fn apply(
        &self,
        events: &[RecordedEvent],
    ) -> impl Future<Output = Result<(), ProcessorError>> + Send;

    /// Validates and stages events about to commit.
    ///
    /// # Errors
    /// [`ProcessorError::Veto`] refuses the append.
    fn prepare(
        &self,
        events: &[RecordedEvent],
    ) -> impl Future<Output = Result<(), ProcessorError>> + Send;

    /// Makes the staged events visible: the append committed.
    fn commit(&self) -> impl Future<Output = ()> + Send;

    /// Drops the staged events: the append did not commit.
    fn rollback(&self) -> impl Future<Output = ()> + Send;
}

/// Reacts to committed events with side effects outside the database (e-mail, HTTP, a broker).
/// Delivery is at least once; the worker runtime tracks its position.
pub trait Reactor: Send + Sync + 'static {
    /// A stable, unique, non-empty name: the key of its checkpoint.
    fn name(&self) -> &str;

    /// Handles one committed event. Must be idempotent: after a crash it may see the event again.
    ///
    /// # Errors
    /// Any error: the runtime retries with backoff.
    fn react(&self, event: &RecordedEvent) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// Page size of catch-up reads.
const CATCH_UP_PAGE: usize = 500;

/// Catches `processor` up with its scope of the log, until nothing newer is committed.
///
/// # Errors
/// [`StoreError::Processor`] when the processor fails, [`StoreError::Backend`] on read errors.
pub async fn catch_up<S, P>(store: &S, processor: &P) -> Result<Option<u64>, StoreError>
where
    S: EventStore + ?Sized,
    P: StatefulProcessor + ?Sized,
{
    let scope = processor.scope();
    let mut position = processor
        .position()
        .await
        .map_err(|e| StoreError::from_processor(processor.name(), e))?;
    loop {
        let page = store
            .read_scope_complete(&scope, position, CATCH_UP_PAGE)
            .await?;
        let Some(last) = page.last() else {
            return Ok(position);
        };
        position = Some(last.global_position);
        processor
            .apply(&page)
            .await
            .map_err(|e| StoreError::from_processor(processor.name(), e))?;
    }
}

/// Appends with the processor's position as a global precondition (optimistic concurrency on the
/// state the processor assumes). When the log moved in the processor's scope, catches the
/// processor up and asks `decide` again, at most `max_attempts` times.
///
/// `decide` sees the processor after each catch-up and returns the request to append (its
/// `expected_position` is set here).
///
/// # Errors
/// The append's errors; [`StoreError::PositionConflict`] when every attempt conflicted.
pub async fn append_consistent<S, P, F>(
    store: &S,
    processor: &P,
    max_attempts: usize,
    mut decide: F,
) -> Result<AppendOutcome, StoreError>
where
    S: EventStore + ?Sized,
    P: StatefulProcessor + ?Sized,
    F: FnMut(&P) -> Result<AppendRequest, StoreError> + Send,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let position = processor
            .position()
            .await
            .map_err(|e| StoreError::from_processor(processor.name(), e))?;
        let request = decide(processor)?.with_expected_position(ExpectedPosition {
            scope: processor.scope(),
            after: position,
        });
        match store.append_staged(request, processor).await {
            Err(StoreError::PositionConflict { .. }) if attempt < max_attempts.max(1) => {
                catch_up(store, processor).await?;
            }
            other => return other,
        }
    }
}

/// Stands for "no stateful processor" where a store shares one code path for
/// [`EventStore::append`] and [`EventStore::append_staged`]; it has no values.
#[derive(Debug)]
pub enum NoStatefulProcessor {}

impl StatefulProcessor for NoStatefulProcessor {
    fn name(&self) -> &str {
        match *self {}
    }
    fn scope(&self) -> PositionScope {
        match *self {}
    }
    async fn position(&self) -> Result<Option<u64>, ProcessorError> {
        match *self {}
    }
    async fn apply(&self, _: &[RecordedEvent]) -> Result<(), ProcessorError> {
        match *self {}
    }
    async fn prepare(&self, _: &[RecordedEvent]) -> Result<(), ProcessorError> {
        match *self {}
    }
    async fn commit(&self) {
        match *self {}
    }
    async fn rollback(&self) {
        match *self {}
    }
}
