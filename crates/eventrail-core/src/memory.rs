use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use futures::future::BoxFuture;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::{
    AppendOutcome, AppendRequest, Category, Direction, EventStore, NoStatefulProcessor,
    PositionScope, ProcessorError, ReadAllOptions, ReadStreamOptions, RecordedEvent,
    StatefulProcessor, StatelessProcessor, StoreError, StreamName,
};

// Processors are kept in a list of different types, so their futures are boxed here.
trait DynProcessor: Send + Sync {
    fn name(&self) -> &str;
    fn process<'a>(
        &'a self,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), ProcessorError>>;
}

impl<P: StatelessProcessor<()>> DynProcessor for P {
    fn name(&self) -> &str {
        StatelessProcessor::name(self)
    }

    fn process<'a>(
        &'a self,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), ProcessorError>> {
        Box::pin(StatelessProcessor::process(self, &(), events))
    }
}

#[derive(Default)]
struct Log {
    events: Vec<RecordedEvent>,
    versions: HashMap<String, u64>,
    ids: HashSet<Uuid>,
    transactions: u64,
}

/// An in-memory [`EventStore`] with the PostgreSQL store's semantics, for tests.
///
/// Appends are serialised, so every read is complete; positions have no holes. Stateless
/// processors get `&()` as their transaction: their writes are their own business.
#[derive(Clone, Default)]
pub struct InMemoryStore {
    log: Arc<Mutex<Log>>,
    processors: Arc<Vec<Arc<dyn DynProcessor>>>,
}

impl fmt::Debug for InMemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryStore")
            .field(
                "processors",
                &self
                    .processors
                    .iter()
                    .map(|p| p.name().to_owned())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl InMemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a stateless processor run on every append.
    #[must_use]
    pub fn with_processor(mut self, processor: impl StatelessProcessor<()>) -> Self {
        Arc::make_mut(&mut self.processors).push(Arc::new(processor));
        self
    }

    async fn append_inner<P: StatefulProcessor + ?Sized>(
        &self,
        request: AppendRequest,
        staged: Option<&P>,
    ) -> Result<AppendOutcome, StoreError> {
        request.validate()?;
        let mut log = self.log.lock().await;
        let actual = log.versions.get(request.stream.as_str()).copied();
        if !request.expected_version.is_satisfied_by(actual) {
            return Err(StoreError::WrongExpectedVersion {
                stream: request.stream.to_string(),
                expected: request.expected_version,
                actual,
            });
        }
        if let Some(expected) = &request.expected_position {
            let head = log
                .events
                .iter()
                .rev()
                .find(|e| in_scope(&expected.scope, e))
                .map(|e| e.global_position);
            if let Some(head) = head.filter(|h| Some(*h) > expected.after) {
                return Err(StoreError::PositionConflict {
                    expected: expected.clone(),
                    head,
                });
            }
        }
        if let Some(e) = request.events.iter().find(|e| log.ids.contains(&e.id)) {
            return Err(StoreError::DuplicateEventId {
                event_id: Some(e.id),
            });
        }
        log.transactions += 1;
        let transaction_id = log.transactions;
        let first_position = log.events.last().map_or(1, |e| e.global_position + 1);
        let first_version = actual.map_or(0, |v| v + 1);
        let recorded_at = SystemTime::now();
        let recorded: Vec<RecordedEvent> = request
            .events
            .into_iter()
            .zip(0u64..)
            .map(|(e, i)| RecordedEvent {
                id: e.id,
                stream: request.stream.clone(),
                stream_version: first_version + i,
                global_position: first_position + i,
                event_type: e.event_type,
                schema_version: e.schema_version,
                data: e.data,
                metadata: e.metadata,
                recorded_at,
                transaction_id,
            })
            .collect();
        for p in self.processors.iter() {
            p.process(&recorded)
                .await
                .map_err(|e| StoreError::from_processor(p.name(), e))?;
        }
        if let Some(p) = staged
            && let Err(e) = p.prepare(&recorded).await
        {
            p.rollback().await;
            return Err(StoreError::from_processor(p.name(), e));
        }
        let outcome = AppendOutcome {
            stream_version: first_version + recorded.len() as u64 - 1,
            positions: recorded.iter().map(|e| e.global_position).collect(),
        };
        log.versions
            .insert(request.stream.to_string(), outcome.stream_version);
        log.ids.extend(recorded.iter().map(|e| e.id));
        log.events.extend(recorded);
        drop(log);
        if let Some(p) = staged {
            p.commit().await;
        }
        Ok(outcome)
    }

    async fn scan(
        &self,
        keep: impl Fn(&RecordedEvent) -> bool,
        options: &ReadAllOptions,
    ) -> Vec<RecordedEvent> {
        let log = self.log.lock().await;
        log.events
            .iter()
            .filter(|e| {
                e.global_position >= options.from_position
                    && keep(e)
                    && type_ok(options.event_types.as_deref(), e)
            })
            .take(options.max_count.unwrap_or(usize::MAX))
            .cloned()
            .collect()
    }
}

fn type_ok(types: Option<&[String]>, e: &RecordedEvent) -> bool {
    types.is_none_or(|t| t.contains(&e.event_type))
}

fn in_scope(scope: &PositionScope, e: &RecordedEvent) -> bool {
    match scope {
        PositionScope::All => true,
        PositionScope::Category(c) => e.stream.category() == c.as_str(),
    }
}

impl EventStore for InMemoryStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        self.append_inner::<NoStatefulProcessor>(request, None)
            .await
    }

    async fn append_staged<P: StatefulProcessor + ?Sized>(
        &self,
        request: AppendRequest,
        processor: &P,
    ) -> Result<AppendOutcome, StoreError> {
        self.append_inner(request, Some(processor)).await
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        options: ReadStreamOptions,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let log = self.log.lock().await;
        let of_stream = log.events.iter().filter(|e| e.stream == *stream);
        let keep = |e: &&RecordedEvent| type_ok(options.event_types.as_deref(), e);
        let events: Vec<_> = match options.direction {
            Direction::Forward => of_stream
                .filter(|e| options.from_version.is_none_or(|v| e.stream_version >= v))
                .filter(keep)
                .take(options.max_count.unwrap_or(usize::MAX))
                .cloned()
                .collect(),
            Direction::Backward => of_stream
                .rev()
                .filter(|e| options.from_version.is_none_or(|v| e.stream_version <= v))
                .filter(keep)
                .take(options.max_count.unwrap_or(usize::MAX))
                .cloned()
                .collect(),
        };
        Ok(events)
    }

    async fn read_category(
        &self,
        category: &Category,
        options: ReadAllOptions,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        Ok(self
            .scan(|e| e.stream.category() == category.as_str(), &options)
            .await)
    }

    async fn read_all(&self, options: ReadAllOptions) -> Result<Vec<RecordedEvent>, StoreError> {
        Ok(self.scan(|_| true, &options).await)
    }

    async fn read_scope_complete(
        &self,
        scope: &PositionScope,
        after: Option<u64>,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let options = ReadAllOptions::default()
            .from_position(after.map_or(0, |a| a + 1))
            .max_count(max_count);
        Ok(self.scan(|e| in_scope(scope, e), &options).await)
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<Option<u64>, StoreError> {
        Ok(self.log.lock().await.versions.get(stream.as_str()).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ExpectedVersion, NewEvent};

    #[tokio::test]
    async fn conformance() {
        crate::conformance::run(&InMemoryStore::new()).await;
    }

    struct NoOverdraft;

    impl StatelessProcessor<()> for NoOverdraft {
        fn name(&self) -> &str {
            "no-overdraft"
        }

        async fn process(&self, _: &(), events: &[RecordedEvent]) -> Result<(), ProcessorError> {
            if events.iter().any(|e| e.event_type == "Overdrawn") {
                return Err(ProcessorError::veto("overdraft"));
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn stateless_veto_writes_nothing() {
        let store = InMemoryStore::new().with_processor(NoOverdraft);
        let stream: StreamName = "account-1".parse().unwrap();
        let err = store
            .append(AppendRequest::new(
                stream.clone(),
                ExpectedVersion::Any,
                vec![NewEvent::json("Overdrawn", serde_json::json!({}))],
            ))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Vetoed { ref by, .. } if by == "no-overdraft"));
        assert_eq!(store.stream_version(&stream).await.unwrap(), None);
    }
}
