use std::future::Future;
use std::sync::Arc;

use eventrail_core::{BoxError, Reactor, RecordedEvent, StatefulProcessor};
use futures::future::BoxFuture;
use tokio_postgres::Transaction;

/// Which events a consumer wants. Empty lists mean "all". A scoped consumer still checkpoints by
/// the whole log's frontier, so it advances over events it does not want.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerScope {
    /// Only events of these categories.
    pub categories: Vec<String>,
    /// Only events of these types.
    pub event_types: Vec<String>,
}

impl ConsumerScope {
    /// Every event.
    #[must_use]
    pub fn all() -> Self {
        Self::default()
    }

    /// Only events of these categories.
    #[must_use]
    pub fn categories<S: Into<String>>(mut self, categories: impl IntoIterator<Item = S>) -> Self {
        self.categories = categories.into_iter().map(Into::into).collect();
        self
    }

    /// Only events of these types.
    #[must_use]
    pub fn event_types<S: Into<String>>(mut self, types: impl IntoIterator<Item = S>) -> Self {
        self.event_types = types.into_iter().map(Into::into).collect();
        self
    }
}

/// Handles committed events inside the worker's batch transaction; its checkpoint is saved in
/// the same transaction, so what it writes to PostgreSQL happens exactly once.
pub trait Consumer: Send + Sync + 'static {
    /// A unique, non-empty name: the key of its checkpoint and assignment.
    fn name(&self) -> &str;

    /// The events it wants (default: all).
    fn scope(&self) -> ConsumerScope {
        ConsumerScope::all()
    }

    /// Handles one event. It must not commit or roll back `tx`: an error rolls the batch back.
    ///
    /// # Errors
    /// Any error: the batch is rolled back, the events before this one are handled again in a
    /// new transaction and committed, this event is retried alone with backoff, then the
    /// consumer is parked at it. Effects outside `tx` may thus happen twice for the events
    /// before a failing one (at-least-once).
    fn handle(
        &self,
        tx: &Transaction<'_>,
        event: &RecordedEvent,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;
}

// The worker runs consumers of different types from one list, so their futures are boxed.
pub(crate) trait DynConsumer: Send + Sync {
    fn name(&self) -> &str;
    fn scope(&self) -> ConsumerScope;
    fn handle<'a>(
        &'a self,
        tx: &'a Transaction<'a>,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), BoxError>>;
}

impl<C: Consumer> DynConsumer for C {
    fn name(&self) -> &str {
        Consumer::name(self)
    }

    fn scope(&self) -> ConsumerScope {
        Consumer::scope(self)
    }

    fn handle<'a>(
        &'a self,
        tx: &'a Transaction<'a>,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(Consumer::handle(self, tx, event))
    }
}

/// Runs a [`Reactor`] (side effects outside the database) as a consumer: at least once.
#[derive(Debug)]
pub struct ReactorConsumer<R> {
    reactor: R,
    scope: ConsumerScope,
}

impl<R: Reactor> ReactorConsumer<R> {
    /// Wraps `reactor`, reacting to `scope`.
    pub fn new(reactor: R, scope: ConsumerScope) -> Self {
        Self { reactor, scope }
    }
}

impl<R: Reactor> Consumer for ReactorConsumer<R> {
    fn name(&self) -> &str {
        self.reactor.name()
    }

    fn scope(&self) -> ConsumerScope {
        self.scope.clone()
    }

    async fn handle(&self, _tx: &Transaction<'_>, event: &RecordedEvent) -> Result<(), BoxError> {
        self.reactor.react(event).await
    }
}

/// Runs a [`StatefulProcessor`] (a projection outside the database that owns its position) as a
/// consumer: events at or below its own position are not applied again.
#[derive(Debug)]
pub struct StatefulConsumer<P> {
    name: String,
    processor: Arc<P>,
    scope: ConsumerScope,
}

impl<P: StatefulProcessor + 'static> StatefulConsumer<P> {
    /// Wraps `processor` under the consumer name `name`.
    pub fn new(name: impl Into<String>, processor: Arc<P>, scope: ConsumerScope) -> Self {
        Self {
            name: name.into(),
            processor,
            scope,
        }
    }
}

impl<P: StatefulProcessor + 'static> Consumer for StatefulConsumer<P> {
    fn name(&self) -> &str {
        &self.name
    }

    fn scope(&self) -> ConsumerScope {
        self.scope.clone()
    }

    async fn handle(&self, _tx: &Transaction<'_>, event: &RecordedEvent) -> Result<(), BoxError> {
        if self.processor.position().await? >= Some(event.global_position) {
            return Ok(());
        }
        self.processor.apply(std::slice::from_ref(event)).await?;
        Ok(())
    }
}
