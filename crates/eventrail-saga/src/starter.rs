use eventrail_core::{BoxError, RecordedEvent};
use eventrail_worker::{Consumer, ConsumerScope};
use serde_json::Value;
use tokio_postgres::Transaction;

use crate::{SagaDocument, Sagas};

type Select = dyn Fn(&RecordedEvent) -> Option<Value> + Send + Sync;

/// A worker consumer that starts one saga per matching event, in the batch's transaction and
/// keyed by the event's id: a redelivered event starts no second saga.
///
/// ```no_run
/// # fn f(sagas: eventrail_saga::Sagas, document: eventrail_saga::SagaDocument) {
/// use eventrail_saga::SagaStarter;
/// let starter = SagaStarter::new("order-sagas", sagas, document, |event| {
///     match &event.data {
///         eventrail_core::EventData::Json(v) if event.event_type == "OrderPlaced" => v.value().ok().cloned(),
///         _ => None,
///     }
/// });
/// // worker_builder.consumer(starter)
/// # }
/// ```
pub struct SagaStarter {
    name: String,
    sagas: Sagas,
    document: SagaDocument,
    scope: ConsumerScope,
    select: Box<Select>,
}

impl std::fmt::Debug for SagaStarter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaStarter")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl SagaStarter {
    /// A consumer named `name` that starts a saga of `document` with the input `select`
    /// returns for an event (none: not this event).
    pub fn new(
        name: impl Into<String>,
        sagas: Sagas,
        document: SagaDocument,
        select: impl Fn(&RecordedEvent) -> Option<Value> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            sagas,
            document,
            scope: ConsumerScope::all(),
            select: Box::new(select),
        }
    }

    /// Reads only these events (a category, event types).
    #[must_use]
    pub fn scope(mut self, scope: ConsumerScope) -> Self {
        self.scope = scope;
        self
    }
}

impl Consumer for SagaStarter {
    fn name(&self) -> &str {
        &self.name
    }

    fn scope(&self) -> ConsumerScope {
        self.scope.clone()
    }

    async fn handle(&self, tx: &Transaction<'_>, event: &RecordedEvent) -> Result<(), BoxError> {
        if let Some(input) = (self.select)(event) {
            let key = format!("event:{}", event.id);
            self.sagas
                .start_in(tx, &self.document, &input, Some(&key))
                .await?;
        }
        Ok(())
    }
}
