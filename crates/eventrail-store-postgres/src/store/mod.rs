//! The PostgreSQL event store, one concern per module:
//!
//! - `sql`: the SQL text, formatted once per store;
//! - `builder`: constructors, the builder and accessors;
//! - `append`: the append path (parameters, results, failures, processors);
//! - `copy`: large plain appends by binary `COPY`;
//! - `reads`: paged reads of a stream, a category and `$all`;
//! - `safe`: the gap-safe read and the complete scope read;
//! - `standby`: the gap-safe read with its events read on a hot standby.
//!
//! This module holds the store itself and its [`EventStore`] implementation, which hands each
//! operation to the module that does it.

use std::fmt;
use std::sync::Arc;

use deadpool_postgres::Pool;
use eventrail_core::{
    AppendOutcome, AppendRequest, Category, EventStore, NoStatefulProcessor, PositionScope,
    ReadAllOptions, ReadStreamOptions, RecordedEvent, StatefulProcessor, StoreError, StreamName,
};
use postgres_types::Type;
use tokio_postgres::IsolationLevel;
use tracing::instrument;

use crate::PgStoreOptions;
use crate::rows::to_u64;

mod append;
mod builder;
mod checkout;
mod copy;
mod hint;
mod partitions;
mod reads;
mod safe;
mod sql;
mod standby;

pub use append::PgStatelessProcessor;
pub use builder::PgEventStoreBuilder;
pub use standby::Standby;

use append::DynProcessor;
use sql::Sql;

struct Inner {
    options: PgStoreOptions,
    /// The configuration other components take from this store (tables, channels).
    config: crate::EventrailConfig,
    /// The resolved notify channel.
    channel: Option<String>,
    sql: Sql,
    processors: Vec<Arc<dyn DynProcessor>>,
    /// After-commit hints of the store's own appends (none without a channel).
    hinter: Option<hint::Hinter>,
    /// Whether the store's own plain appends use the one-statement path (cleared when its role
    /// may not INSERT into events).
    plain_appends: std::sync::atomic::AtomicBool,
    /// The events table's layout and partitions, learnt on first use.
    partitions: partitions::Partitions,
}

/// The PostgreSQL event store, on a deadpool-postgres pool. Cheap to clone.
///
/// Run [`Migrator`](crate::Migrator) on the schema first.
///
/// An append whose future is dropped before it ends (a timeout, an aborted task) closes its
/// pooled connection rather than hand it to the next append mid-statement; the server rolls
/// back its open transaction. An append whose statement was already sent in autocommit may
/// still commit: read the stream to learn whether it did.
#[derive(Clone)]
pub struct PgEventStore {
    pool: Pool,
    inner: Arc<Inner>,
}

impl fmt::Debug for PgEventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgEventStore")
            .field("options", &self.inner.options)
            .field(
                "processors",
                &self
                    .inner
                    .processors
                    .iter()
                    .map(|p| p.name().to_owned())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn backend(error: impl Into<eventrail_core::BoxError>) -> StoreError {
    StoreError::Backend(crate::classify(error.into()))
}

/// A transaction at READ COMMITTED whatever the database default: the checks of `append_events`
/// and the complete scope read take a new snapshot after waiting for their locks.
async fn read_committed(
    client: &mut deadpool_postgres::Object,
) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .await
        .map_err(backend)
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl EventStore for PgEventStore {
    #[instrument(skip_all, fields(stream = %request.stream, events = request.events.len()))]
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        let n = request.events.len() as u64;
        let outcome = self
            .append_impl::<NoStatefulProcessor>(request, None)
            .await?;
        metrics::counter!("eventrail_events_appended_total").increment(n);
        Ok(outcome)
    }

    #[instrument(skip_all, fields(stream = %request.stream, events = request.events.len(), processor = processor.name()))]
    async fn append_staged<P: StatefulProcessor + ?Sized>(
        &self,
        request: AppendRequest,
        processor: &P,
    ) -> Result<AppendOutcome, StoreError> {
        let n = request.events.len() as u64;
        let outcome = self.append_impl(request, Some(processor)).await?;
        metrics::counter!("eventrail_events_appended_total").increment(n);
        Ok(outcome)
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        options: ReadStreamOptions,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_stream_paged(stream, options).await
    }

    async fn read_category(
        &self,
        category: &Category,
        options: ReadAllOptions,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_category_paged(category, options).await
    }

    async fn read_all(&self, options: ReadAllOptions) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_all_paged(options).await
    }

    async fn read_scope_complete(
        &self,
        scope: &PositionScope,
        after: Option<u64>,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_scope_locked(scope, after, max_count).await
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<Option<u64>, StoreError> {
        let client = self.client().await?;
        let sql = &self
            .inner
            .sql
            .of(self.layout(&client).await?)
            .stream_version;
        let row = self
            .statements()
            .query_one(&*client, sql, &[(&stream.as_str(), Type::TEXT)])
            .await
            .map_err(backend)?;
        Ok(row
            .try_get::<_, Option<i64>>(0)
            .map_err(backend)?
            .map(to_u64))
    }
}
