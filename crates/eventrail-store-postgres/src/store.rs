use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use deadpool_postgres::Pool;
use eventrail_core::{
    AppendOutcome, AppendRequest, Category, Direction, EventData, EventStore, ExpectedVersion,
    NoStatefulProcessor, PositionScope, ProcessorError, ReadAllOptions, ReadStreamOptions,
    RecordedEvent, StatefulProcessor, StatelessProcessor, StoreError, StreamName,
};
use futures::future::BoxFuture;
use futures::{Stream, TryStreamExt};
use postgres_types::{Json, ToSql, Type};
use tokio_postgres::error::SqlState;
use tokio_postgres::{GenericClient, IsolationLevel, Row, Transaction};
use tracing::{debug, instrument, warn};
use uuid::Uuid;

use crate::error::is_unique_violation;
use crate::frontier::{
    BlockingSession, Frontier, GapWatch, HoleEvidence, SafeRead, Snapshot, advance, widen_xid,
};
use crate::rows::{EVENT_COLUMNS, parse_xid, recorded_events, to_i64, to_u64};
use crate::{ConfigError, PgStoreOptions};

/// A [`StatelessProcessor`] that runs in a PostgreSQL append transaction.
///
/// Implement `StatelessProcessor<tokio_postgres::Transaction<'t>>` for every `'t`; this trait is
/// then implemented for you.
pub trait PgStatelessProcessor: for<'t> StatelessProcessor<Transaction<'t>> {}

impl<P> PgStatelessProcessor for P where P: for<'t> StatelessProcessor<Transaction<'t>> {}

// The store keeps processors of different types in one list, so their futures are boxed.
trait DynProcessor: Send + Sync {
    fn name(&self) -> &str;
    fn process<'a>(
        &'a self,
        tx: &'a Transaction<'a>,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), ProcessorError>>;
}

impl<P: PgStatelessProcessor> DynProcessor for P {
    fn name(&self) -> &str {
        StatelessProcessor::name(self)
    }

    fn process<'a>(
        &'a self,
        tx: &'a Transaction<'a>,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), ProcessorError>> {
        Box::pin(StatelessProcessor::process(self, tx, events))
    }
}

use crate::keys::{SCOPE_ALL_LOCK, SCOPE_CATEGORY_LOCK};

const APPEND_TYPES: [Type; 12] = [
    Type::TEXT,
    Type::INT2,
    Type::INT8,
    Type::TEXT,
    Type::INT8,
    Type::UUID_ARRAY,
    Type::TEXT_ARRAY,
    Type::INT4_ARRAY,
    Type::JSONB_ARRAY,
    Type::BYTEA_ARRAY,
    Type::JSONB_ARRAY,
    Type::TEXT,
];

/// SQL text with the schema filled in once.
#[derive(Debug)]
struct Sql {
    append: String,
    read_stream_forward: String,
    read_stream_backward: String,
    read_category: String,
    read_all: String,
    read_range: String,
    read_scope_all: String,
    read_scope_category: String,
    stream_version: String,
    probe: String,
    appenders: String,
    existing_ids: String,
}

impl Sql {
    /// `schema` quoted, `name` as the user gave it (the lock namespace).
    fn new(schema: &str, name: &str) -> Self {
        let namespace = crate::keys::lock_namespace(name);
        let events = format!("{schema}.events");
        let types = "($TYPES::text[] IS NULL OR event_type = ANY($TYPES))";
        Self {
            append: format!(
                "SELECT * FROM {schema}.append_events($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            ),
            read_stream_forward: format!(
                "SELECT {EVENT_COLUMNS} FROM {events} WHERE stream_name = $1 AND stream_version >= $2 \
                 AND {} ORDER BY stream_version LIMIT $4",
                types.replace("$TYPES", "$3")
            ),
            read_stream_backward: format!(
                "SELECT {EVENT_COLUMNS} FROM {events} WHERE stream_name = $1 AND stream_version <= $2 \
                 AND {} ORDER BY stream_version DESC LIMIT $4",
                types.replace("$TYPES", "$3")
            ),
            read_category: format!(
                "SELECT {EVENT_COLUMNS} FROM {events} WHERE category = $1 AND global_position >= $2 \
                 AND {} ORDER BY global_position LIMIT $4",
                types.replace("$TYPES", "$3")
            ),
            read_all: format!(
                "SELECT {EVENT_COLUMNS} FROM {events} WHERE global_position >= $1 \
                 AND {} ORDER BY global_position LIMIT $3",
                types.replace("$TYPES", "$2")
            ),
            read_range: format!(
                "SELECT {EVENT_COLUMNS} FROM {events} WHERE global_position > $1 AND global_position <= $2 \
                 AND ($3::text[] IS NULL OR category = ANY($3)) AND {} ORDER BY global_position",
                types.replace("$TYPES", "$4")
            ),
            read_scope_all: format!(
                "SELECT {EVENT_COLUMNS} FROM {events} WHERE global_position > $1 ORDER BY global_position LIMIT $2"
            ),
            read_scope_category: format!(
                "SELECT {EVENT_COLUMNS} FROM {events} WHERE category = $3 AND global_position > $1 \
                 ORDER BY global_position LIMIT $2"
            ),
            stream_version: format!(
                "SELECT max(stream_version) FROM {events} WHERE stream_name = $1"
            ),
            probe: format!(
                "SELECT pg_current_snapshot()::text, ARRAY(SELECT global_position FROM {events} \
                 WHERE global_position > $1 ORDER BY global_position LIMIT $2)"
            ),
            // One read of the lock table (MATERIALIZED: one consistent `pg_lock_status()`), joining
            // each holder of the appender lock to its own transaction id lock.
            appenders: format!(
                "WITH l AS MATERIALIZED (SELECT * FROM pg_locks) \
                 SELECT pg_current_snapshot()::text, ARRAY(SELECT x.transactionid::text FROM l a \
                 JOIN l x ON x.virtualtransaction = a.virtualtransaction AND x.locktype = 'transactionid' \
                  AND x.mode = 'ExclusiveLock' AND x.granted \
                 WHERE a.locktype = 'advisory' AND a.granted \
                  AND a.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                  AND a.classid = {SCOPE_ALL_LOCK}::oid AND a.objsubid = 2 \
                  AND a.objid IN (hashtext('{namespace}')::oid, 0::oid))"
            ),
            existing_ids: format!("SELECT event_id FROM {events} WHERE event_id = ANY($1) LIMIT 1"),
        }
    }
}

struct Inner {
    options: PgStoreOptions,
    /// The configuration other components take from this store (tables, channels).
    config: crate::EventrailConfig,
    /// The resolved notify channel.
    channel: Option<String>,
    sql: Sql,
    processors: Vec<Arc<dyn DynProcessor>>,
}

/// Builds a [`PgEventStore`]: its options (or configuration) and its stateless processors,
/// fixed when it is built (a store's clones all run the same processors).
#[must_use]
pub struct PgEventStoreBuilder {
    pool: Pool,
    options: PgStoreOptions,
    config: Option<crate::EventrailConfig>,
    processors: Vec<Arc<dyn DynProcessor>>,
}

impl fmt::Debug for PgEventStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgEventStoreBuilder")
            .field("options", &self.options)
            .field("processors", &self.processors.len())
            .finish_non_exhaustive()
    }
}

impl PgEventStoreBuilder {
    /// The store's options (schema, notify channel).
    pub fn options(mut self, options: PgStoreOptions) -> Self {
        self.options = options;
        self.config = None;
        self
    }

    /// A validated configuration (schema, channels; other components take their names from it).
    pub fn config(mut self, config: &crate::EventrailConfig) -> Self {
        self.options = config.store_options();
        self.config = Some(config.clone());
        self
    }

    /// Adds a stateless processor, run in every append transaction, in the order added.
    pub fn processor(mut self, processor: impl PgStatelessProcessor) -> Self {
        self.processors.push(Arc::new(processor));
        self
    }

    /// The store.
    ///
    /// # Errors
    /// [`ConfigError::InvalidIdentifier`] for a refused schema or channel.
    pub fn build(self) -> Result<PgEventStore, ConfigError> {
        let mut store = match &self.config {
            Some(config) => PgEventStore::from_config(self.pool, config)?,
            None => PgEventStore::with_options(self.pool, self.options)?,
        };
        let inner = Arc::get_mut(&mut store.inner).expect("a store being built is not shared yet");
        inner.processors = self.processors;
        Ok(store)
    }
}

/// The PostgreSQL event store, on a deadpool-postgres pool. Cheap to clone.
///
/// Run [`Migrator`](crate::Migrator) on the schema first.
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

/// The append's parameters, owned so that a caller's future can borrow them.
struct AppendParams<'r> {
    stream: &'r str,
    expected_kind: i16,
    expected_version: i64,
    scope: Option<&'r str>,
    after: i64,
    ids: Vec<Uuid>,
    types: Vec<&'r str>,
    schema_versions: Vec<i32>,
    data: Vec<Option<&'r serde_json::Value>>,
    data_binary: Vec<Option<&'r [u8]>>,
    metadata: Vec<Json<&'r eventrail_core::Metadata>>,
    channel: Option<&'r str>,
}

impl<'r> AppendParams<'r> {
    fn new(request: &'r AppendRequest, channel: Option<&'r str>) -> Result<Self, StoreError> {
        let (expected_kind, expected_version) = match request.expected_version {
            ExpectedVersion::Any => (0, 0),
            ExpectedVersion::NoStream => (1, 0),
            ExpectedVersion::StreamExists => (2, 0),
            ExpectedVersion::Exact(v) => (3, to_i64(v, "expected version")?),
        };
        let (scope, after) = match &request.expected_position {
            None => (None, 0),
            Some(p) => (
                Some(match &p.scope {
                    PositionScope::Category(c) => c.as_str(),
                    _ => "",
                }),
                to_i64(p.after.unwrap_or(0), "expected position")?,
            ),
        };
        let events = &request.events;
        Ok(Self {
            stream: request.stream.as_str(),
            expected_kind,
            expected_version,
            scope,
            after,
            ids: events.iter().map(|e| e.id).collect(),
            types: events.iter().map(|e| e.event_type.as_str()).collect(),
            schema_versions: events
                .iter()
                .map(|e| {
                    i32::try_from(e.schema_version).map_err(|_| {
                        StoreError::InvalidRequest("schema version out of range".into())
                    })
                })
                .collect::<Result<_, _>>()?,
            data: events
                .iter()
                .map(|e| match &e.data {
                    EventData::Json(v) => Some(v),
                    EventData::Binary(_) => None,
                })
                .collect(),
            data_binary: events
                .iter()
                .map(|e| match &e.data {
                    EventData::Json(_) => None,
                    EventData::Binary(b) => Some(b.as_slice()),
                })
                .collect(),
            metadata: events.iter().map(|e| Json(&e.metadata)).collect(),
            channel,
        })
    }

    fn typed(&self) -> [(&(dyn ToSql + Sync), Type); 12] {
        let values: [&(dyn ToSql + Sync); 12] = [
            &self.stream,
            &self.expected_kind,
            &self.expected_version,
            &self.scope,
            &self.after,
            &self.ids,
            &self.types,
            &self.schema_versions,
            &self.data,
            &self.data_binary,
            &self.metadata,
            &self.channel,
        ];
        let mut i = 0;
        values.map(|v| {
            let t = APPEND_TYPES[i].clone();
            i += 1;
            (v, t)
        })
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

/// How a failed `append_events` call is reported.
enum AppendFailure {
    /// An event id is already stored (the caller may look up which).
    DuplicateId,
    /// Anything else, already typed.
    Other(StoreError),
}

impl AppendFailure {
    fn into_error(self) -> StoreError {
        match self {
            Self::DuplicateId => StoreError::DuplicateEventId { event_id: None },
            Self::Other(e) => e,
        }
    }
}

/// Classifies a failed append by SQLSTATE and constraint. A stream version collision can only
/// come from a snapshot older than an append to the same stream (above READ COMMITTED: the stream
/// lock serialises appends otherwise), which is a serialization conflict like PostgreSQL's own.
fn classify(error: tokio_postgres::Error) -> AppendFailure {
    if is_unique_violation(&error, "events_event_id_key") {
        return AppendFailure::DuplicateId;
    }
    let serialization = is_unique_violation(&error, "events_stream_version_key")
        || error.code().is_some_and(|code| {
            *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED
        });
    AppendFailure::Other(if serialization {
        StoreError::SerializationConflict(error.into())
    } else {
        backend(error)
    })
}

/// Turns `append_events` rows into the outcome and the recorded events.
fn interpret(
    request: &AppendRequest,
    rows: &[Row],
) -> Result<(AppendOutcome, Vec<RecordedEvent>), StoreError> {
    let first = rows
        .first()
        .ok_or_else(|| backend("append_events returned no row"))?;
    let outcome: i16 = first.try_get(0).map_err(backend)?;
    let actual: Option<i64> = first.try_get(1).map_err(backend)?;
    match outcome {
        1 => {
            return Err(StoreError::WrongExpectedVersion {
                stream: request.stream.to_string(),
                expected: request.expected_version,
                actual: actual.map(to_u64),
            });
        }
        2 => {
            return Err(StoreError::PositionConflict {
                expected: request
                    .expected_position
                    .clone()
                    .ok_or_else(|| backend("conflict without precondition"))?,
                head: actual.map(to_u64).unwrap_or_default(),
            });
        }
        3 => {
            return Err(StoreError::IsolationNotSupported {
                level: first
                    .try_get::<_, Option<String>>(5)
                    .map_err(backend)?
                    .unwrap_or_default(),
            });
        }
        0 => {}
        other => return Err(backend(format!("append_events returned outcome {other}"))),
    }
    if rows.len() != request.events.len() {
        return Err(backend("append_events returned fewer rows than events"));
    }
    let mut recorded = Vec::with_capacity(rows.len());
    for (row, event) in rows.iter().zip(&request.events) {
        recorded.push(RecordedEvent {
            id: event.id,
            stream: request.stream.clone(),
            stream_version: to_u64(row.try_get(3).map_err(backend)?),
            global_position: to_u64(row.try_get(2).map_err(backend)?),
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            data: event.data.clone(),
            metadata: event.metadata.clone(),
            recorded_at: row.try_get::<_, SystemTime>(4).map_err(backend)?,
            transaction_id: parse_xid(row.try_get(5).map_err(backend)?)?,
        });
    }
    let outcome = AppendOutcome::new(
        recorded
            .last()
            .map(|e| e.stream_version)
            .unwrap_or_default(),
        recorded.iter().map(|e| e.global_position).collect(),
    );
    Ok((outcome, recorded))
}

/// Outcome rows without recorded events, for the path with no processor (avoids cloning data).
fn interpret_positions(request: &AppendRequest, rows: &[Row]) -> Result<AppendOutcome, StoreError> {
    let first = rows
        .first()
        .ok_or_else(|| backend("append_events returned no row"))?;
    if first.try_get::<_, i16>(0).map_err(backend)? != 0 {
        return interpret(request, rows).map(|(o, _)| o);
    }
    let positions = rows
        .iter()
        .map(|r| r.try_get::<_, i64>(2).map(to_u64))
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    let last = rows
        .last()
        .map(|r| r.try_get::<_, i64>(3))
        .transpose()
        .map_err(backend)?;
    Ok(AppendOutcome::new(
        last.map(to_u64).unwrap_or_default(),
        positions,
    ))
}

const SAVEPOINT: &str = "eventrail_append";

/// The `application_name` of the store's own pool.
pub(crate) const STORE_COMPONENT: &str = "eventrail-store";

impl PgEventStore {
    /// A store on `pool` with default options (schema `eventrail`).
    #[must_use]
    pub fn new(pool: Pool) -> Self {
        Self::with_options(pool, PgStoreOptions::default()).expect("default options are valid")
    }

    /// A store on `pool` with `options`.
    ///
    /// # Errors
    /// [`ConfigError::InvalidIdentifier`] for a schema or channel that is not a plain identifier.
    pub fn with_options(pool: Pool, options: PgStoreOptions) -> Result<Self, ConfigError> {
        let mut config = crate::EventrailConfig::builder().schema(options.schema_name());
        config = match options.channel() {
            Some(channel) => config.events_channel(channel),
            None => config.without_notify(),
        };
        Self::build(pool, options, config.build()?)
    }

    /// A store on `pool` for a validated configuration: its schema and events channel; workers,
    /// `wait_for` and admins built on this store take its table names and channels too.
    ///
    /// # Errors
    /// None in practice (the configuration is validated); kept for symmetry.
    pub fn from_config(pool: Pool, config: &crate::EventrailConfig) -> Result<Self, ConfigError> {
        Self::build(pool, config.store_options(), config.clone())
    }

    fn build(
        pool: Pool,
        options: PgStoreOptions,
        config: crate::EventrailConfig,
    ) -> Result<Self, ConfigError> {
        let schema = options.validate()?;
        Ok(Self {
            pool,
            inner: Arc::new(Inner {
                sql: Sql::new(&schema, options.schema_name()),
                channel: options.channel(),
                options,
                config,
                processors: Vec::new(),
            }),
        })
    }

    /// The configuration this store was built with (or derived from its options).
    #[must_use]
    pub fn config(&self) -> &crate::EventrailConfig {
        &self.inner.config
    }

    /// A store on a new pool for `url` (a libpq URL or `key=value` string: TLS from its
    /// `sslmode`, see [`PgConnectOptions`](crate::PgConnectOptions)), with default options. Its
    /// sessions are named `eventrail-store` unless the URL sets `application_name`.
    ///
    /// Nothing connects yet: the first operation does.
    ///
    /// # Errors
    /// [`StoreError::InvalidRequest`] when the URL does not parse or its TLS settings are
    /// refused (the source is a [`ConnectError`](crate::ConnectError)).
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let options: crate::PgConnectOptions = url.parse().map_err(|e: crate::ConnectError| {
            StoreError::InvalidRequest(format!(
                "invalid database URL: {}",
                eventrail_core::error_chain(&e)
            ))
        })?;
        Self::connect_with(&options)
    }

    /// A store on a new pool built by `connect` (TLS, timeouts, pool size), with default
    /// options. Nothing connects yet.
    ///
    /// # Errors
    /// [`StoreError::Backend`] with a [`ConnectError`](crate::ConnectError) when the TLS
    /// settings are refused (an unreadable CA file).
    pub fn connect_with(connect: &crate::PgConnectOptions) -> Result<Self, StoreError> {
        Ok(Self::new(connect.pool(STORE_COMPONENT).map_err(backend)?))
    }

    /// Applies the embedded migrations to this store's schema (see [`Migrator`](crate::Migrator)).
    ///
    /// # Errors
    /// [`MigrationError`](crate::MigrationError).
    pub async fn migrate(&self) -> Result<Vec<i32>, crate::MigrationError> {
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| crate::MigrationError::Database(e.into()))?;
        crate::Migrator::new(self.inner.options.schema_name())?
            .run(&mut client)
            .await
    }

    /// A builder: options or a configuration, and the stateless processors every append runs.
    ///
    /// ```no_run
    /// # fn f(pool: deadpool_postgres::Pool, audit: impl eventrail_store_postgres::PgStatelessProcessor) -> Result<(), eventrail_store_postgres::ConfigError> {
    /// use eventrail_store_postgres::{PgEventStore, PgStoreOptions};
    /// let store = PgEventStore::builder(pool)
    ///     .options(PgStoreOptions::new().schema("billing"))
    ///     .processor(audit)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn builder(pool: Pool) -> PgEventStoreBuilder {
        PgEventStoreBuilder {
            pool,
            options: PgStoreOptions::default(),
            config: None,
            processors: Vec::new(),
        }
    }

    /// The pool.
    #[must_use]
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The channel its appends notify, if any: a worker on this store listens on it.
    #[must_use]
    pub fn notify_channel(&self) -> Option<&str> {
        self.inner.channel.as_deref()
    }

    /// Its options.
    pub fn options(&self) -> &PgStoreOptions {
        &self.inner.options
    }

    /// How it sends statements on its pool ([`PgStoreOptions::statements`]).
    #[must_use]
    pub fn statements(&self) -> crate::Statements {
        self.inner.options.get_statements()
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| backend(crate::ConnectError::from_pool(e, &self.pool)))
    }

    async fn duplicate_id(&self, client: &impl GenericClient, ids: &[Uuid]) -> StoreError {
        let event_id = match client
            .query_typed_opt(&self.inner.sql.existing_ids, &[(&ids, Type::UUID_ARRAY)])
            .await
        {
            Ok(row) => row.and_then(|r| r.try_get(0).ok()),
            Err(e) => {
                warn!(error = %eventrail_core::error_chain(&e), "could not name the duplicate event id");
                None
            }
        };
        StoreError::DuplicateEventId { event_id }
    }

    async fn append_impl<P: StatefulProcessor + ?Sized>(
        &self,
        request: AppendRequest,
        staged: Option<&P>,
    ) -> Result<AppendOutcome, StoreError> {
        request.validate()?;
        let params = AppendParams::new(&request, self.inner.channel.as_deref())?;
        let mut client = self.client().await?;
        if self.inner.processors.is_empty() && staged.is_none() {
            // One statement in autocommit: one round trip. A database whose default isolation is
            // above READ COMMITTED refuses a conditional append (nothing written) or reports a
            // stale version: run it again below, explicitly at READ COMMITTED.
            match self
                .statements()
                .query(&*client, &self.inner.sql.append, &params.typed())
                .await
            {
                Ok(rows) => match interpret_positions(&request, &rows) {
                    Err(StoreError::IsolationNotSupported { .. }) => {}
                    other => return other,
                },
                Err(e) => match classify(e) {
                    AppendFailure::DuplicateId => {
                        return Err(self.duplicate_id(&**client, &params.ids).await);
                    }
                    AppendFailure::Other(StoreError::SerializationConflict(_)) => {}
                    AppendFailure::Other(e) => return Err(e),
                },
            }
        }
        // The store's own transaction is READ COMMITTED whatever the database default: the checks
        // in `append_events` rely on it.
        let tx = read_committed(&mut client).await?;
        let rows = match self
            .statements()
            .query(&tx, &self.inner.sql.append, &params.typed())
            .await
        {
            Ok(rows) => rows,
            Err(e) => match classify(e) {
                AppendFailure::DuplicateId => {
                    drop(tx);
                    return Err(self.duplicate_id(&**client, &params.ids).await);
                }
                AppendFailure::Other(e) => return Err(e),
            },
        };
        let (outcome, recorded) = interpret(&request, &rows)?;
        for p in &self.inner.processors {
            p.process(&tx, &recorded)
                .await
                .map_err(|e| StoreError::from_processor(p.name(), e))?;
        }
        if let Some(p) = staged
            && let Err(e) = p.prepare(&recorded).await
        {
            p.rollback().await;
            return Err(StoreError::from_processor(p.name(), e));
        }
        match tx.commit().await {
            Ok(()) => {
                if let Some(p) = staged {
                    p.commit().await;
                }
                Ok(outcome)
            }
            Err(e) => {
                if let Some(p) = staged {
                    p.rollback().await;
                }
                Err(backend(e))
            }
        }
    }

    /// Appends inside the caller's open transaction, so business writes, events, outbox rows and
    /// checkpoints commit or roll back together. Stateless processors run in that transaction.
    ///
    /// When processors are registered, the append runs under a savepoint: on any error (a veto
    /// included) the events and the processors' writes are undone and the caller's transaction
    /// stays usable. Without processors, a failed statement (a duplicate event id) leaves the
    /// caller's transaction aborted, as PostgreSQL does: roll it back.
    /// [`StoreError::WrongExpectedVersion`] and [`StoreError::PositionConflict`] never abort it.
    ///
    /// # Errors
    /// As [`EventStore::append`].
    #[instrument(skip_all, fields(stream = %request.stream, events = request.events.len()))]
    pub async fn append_in(
        &self,
        tx: &Transaction<'_>,
        request: AppendRequest,
    ) -> Result<AppendOutcome, StoreError> {
        request.validate()?;
        let params = AppendParams::new(&request, self.inner.channel.as_deref())?;
        let typed = params.typed();
        if self.inner.processors.is_empty() {
            return match tx.query_typed(&self.inner.sql.append, &typed).await {
                Ok(rows) => interpret_positions(&request, &rows),
                Err(e) => Err(classify(e).into_error()),
            };
        }
        // The savepoint and the append are pipelined: still one round trip.
        let savepoint = format!("SAVEPOINT {SAVEPOINT}");
        let result = futures::try_join!(
            tx.batch_execute(&savepoint),
            tx.query_typed(&self.inner.sql.append, &typed)
        );
        let attempt = async {
            let rows = match result {
                Ok(((), rows)) => rows,
                Err(e) => return Err(classify(e).into_error()),
            };
            let (outcome, recorded) = interpret(&request, &rows)?;
            for p in &self.inner.processors {
                p.process(tx, &recorded)
                    .await
                    .map_err(|e| StoreError::from_processor(p.name(), e))?;
            }
            Ok(outcome)
        };
        match attempt.await {
            Ok(outcome) => {
                tx.batch_execute(&format!("RELEASE SAVEPOINT {SAVEPOINT}"))
                    .await
                    .map_err(backend)?;
                Ok(outcome)
            }
            Err(e) => {
                tx.batch_execute(&format!(
                    "ROLLBACK TO SAVEPOINT {SAVEPOINT}; RELEASE SAVEPOINT {SAVEPOINT}"
                ))
                .await
                .map_err(backend)?;
                Err(e)
            }
        }
    }

    /// Reads `$all` from a position as a stream of events, fetching pages of `page_size` (up to
    /// `max_count` events in all, when set), so only one page is held in memory.
    pub fn stream_all(
        &self,
        options: ReadAllOptions,
    ) -> impl Stream<Item = Result<RecordedEvent, StoreError>> + Send + '_ {
        self.paged(None, options)
    }

    /// Reads a category from a position as a stream of events, fetching pages of `page_size` (up
    /// to `max_count` events in all, when set), so only one page is held in memory.
    pub fn stream_category<'a>(
        &'a self,
        category: &'a Category,
        options: ReadAllOptions,
    ) -> impl Stream<Item = Result<RecordedEvent, StoreError>> + Send + 'a {
        self.paged(Some(category), options)
    }

    fn paged<'a>(
        &'a self,
        category: Option<&'a Category>,
        options: ReadAllOptions,
    ) -> impl Stream<Item = Result<RecordedEvent, StoreError>> + Send + 'a {
        let page = options.page_size.max(1);
        let remaining = options.max_count.unwrap_or(usize::MAX);
        futures::stream::try_unfold(Some((options, remaining)), move |next| async move {
            let Some((opts, remaining)) = next.filter(|(_, r)| *r > 0) else {
                return Ok::<_, StoreError>(None);
            };
            let want = page.min(remaining);
            let opts = opts.max_count(want);
            let events = match category {
                Some(c) => self.read_category(c, opts.clone()).await?,
                None => self.read_all(opts.clone()).await?,
            };
            let Some(last) = events.last() else {
                return Ok(None);
            };
            let next = (events.len() == want).then(|| {
                (
                    opts.from_position(last.global_position + 1),
                    remaining - want,
                )
            });
            Ok(Some((
                futures::stream::iter(events.into_iter().map(Ok)),
                next,
            )))
        })
        .try_flatten()
    }

    /// Probes how far a subscriber at `after` may read without passing a position that may still
    /// commit, looking at most `max_positions` positions ahead. Reads positions only (an
    /// index-only scan), outside any transaction of the caller.
    ///
    /// A hole seen for the first time is recorded in `watch` with its evidence, then checked once
    /// more at once (a rolled-back hole is usually proven on the spot).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    #[instrument(skip(self, watch), level = "debug")]
    pub async fn probe_frontier(
        &self,
        watch: &mut GapWatch,
        after: u64,
        max_positions: usize,
    ) -> Result<Frontier, StoreError> {
        let client = self.client().await?;
        let limit = i64::try_from(max_positions.max(1)).unwrap_or(i64::MAX);
        let after_i64 = to_i64(after, "position")?;
        let mut observed_new = false;
        loop {
            let row = self
                .statements()
                .query_one(
                    &*client,
                    &self.inner.sql.probe,
                    &[(&after_i64, Type::INT8), (&limit, Type::INT8)],
                )
                .await
                .map_err(backend)?;
            let now: Snapshot = row.try_get::<_, &str>(0).map_err(backend)?.parse()?;
            let positions: Vec<u64> = row
                .try_get::<_, Vec<i64>>(1)
                .map_err(backend)?
                .into_iter()
                .map(to_u64)
                .collect();
            let step = advance(
                after,
                &positions,
                &now,
                watch,
                positions.len() >= max_positions.max(1),
            );
            match step.new_holes.first() {
                Some(&(from, _)) if !observed_new => {
                    // Read after `now` was taken (a later statement): see `HoleEvidence`.
                    let appenders = self.appenders(&**client).await?;
                    let evidence = HoleEvidence {
                        observed: now,
                        appenders,
                        first_seen: SystemTime::now(),
                    };
                    debug!(
                        from,
                        holes = step.new_holes.len(),
                        ?evidence,
                        "observed holes"
                    );
                    for &(from, to) in &step.new_holes {
                        watch.record(from, to, evidence.clone());
                    }
                    observed_new = true;
                }
                _ => {
                    let frontier = step.frontier;
                    watch.prune(frontier.safe);
                    if !frontier.skipped.is_empty() {
                        metrics::counter!("eventrail_gap_skips_total")
                            .increment(frontier.skipped.len() as u64);
                    }
                    if let Some(stall) = &frontier.stall {
                        let age = stall.since.elapsed().unwrap_or_default().as_secs_f64();
                        metrics::gauge!("eventrail_frontier_stall_seconds").set(age);
                        debug!(from = stall.from, holders = ?stall.holders, age, "frontier waits on a hole");
                    } else {
                        metrics::gauge!("eventrail_frontier_stall_seconds").set(0.0);
                    }
                    return Ok(frontier);
                }
            }
        }
    }

    /// The gap-safe subscription read: events after `after` up to the safe frontier (at most
    /// `max_positions` positions ahead), filtered by categories and event types, with the skips
    /// and the stall of [`PgEventStore::probe_frontier`]. Checkpoint `frontier.safe`.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    pub async fn read_safe(
        &self,
        watch: &mut GapWatch,
        after: u64,
        max_positions: usize,
        categories: Option<&[String]>,
        event_types: Option<&[String]>,
    ) -> Result<SafeRead, StoreError> {
        let frontier = self.probe_frontier(watch, after, max_positions).await?;
        let events = if frontier.safe > after {
            let client = self.client().await?;
            self.read_range_in(&**client, after, frontier.safe, categories, event_types)
                .await?
        } else {
            Vec::new()
        };
        Ok(SafeRead { events, frontier })
    }

    /// Events with `after < position <= up_to`, filtered, through any client or transaction (the
    /// worker reads inside its batch transaction). Only gap-safe when `up_to` came from
    /// [`PgEventStore::probe_frontier`].
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    pub async fn read_range_in(
        &self,
        client: &impl GenericClient,
        after: u64,
        up_to: u64,
        categories: Option<&[String]>,
        event_types: Option<&[String]>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let (after, up_to) = (to_i64(after, "position")?, to_i64(up_to, "position")?);
        // Typed parameters: one round trip and no prepare, on any client or transaction.
        let rows = client
            .query_typed(
                &self.inner.sql.read_range,
                &[
                    (&after, Type::INT8),
                    (&up_to, Type::INT8),
                    (&categories, Type::TEXT_ARRAY),
                    (&event_types, Type::TEXT_ARRAY),
                ],
            )
            .await
            .map_err(backend)?;
        recorded_events(&rows)
    }

    /// The transactions appending to this log now: those holding the appender lock, which every
    /// append takes after its xid and before any position, until it ends.
    async fn appenders(&self, client: &impl GenericClient) -> Result<Vec<u64>, StoreError> {
        let row = client
            .query_typed_one(&self.inner.sql.appenders, &[])
            .await
            .map_err(backend)?;
        let reference: Snapshot = row.try_get::<_, &str>(0).map_err(backend)?.parse()?;
        row.try_get::<_, Vec<String>>(1)
            .map_err(backend)?
            .iter()
            .map(|x| {
                x.parse::<u32>()
                    .map(|x| widen_xid(x, reference.xmax))
                    .map_err(|_| StoreError::backend(format!("unexpected transaction id {x:?}")))
            })
            .collect()
    }

    /// The sessions whose transactions hold a frontier stall ([`FrontierStall::holders`]).
    ///
    /// [`FrontierStall::holders`]: crate::FrontierStall::holders
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    pub async fn blocking_sessions(
        &self,
        xids: &[u64],
    ) -> Result<Vec<BlockingSession>, StoreError> {
        let short: Vec<String> = xids
            .iter()
            .map(|x| (x & u64::from(u32::MAX)).to_string())
            .collect();
        let client = self.client().await?;
        let rows = client
            .query_typed(
                "SELECT pid, backend_xid::text, xact_start, state, application_name, datname::text \
                 FROM pg_stat_activity WHERE backend_xid::text = ANY($1)",
                &[(&short, Type::TEXT_ARRAY)],
            )
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|r| {
                Ok(BlockingSession {
                    pid: r.try_get(0).map_err(backend)?,
                    xid: r
                        .try_get::<_, &str>(1)
                        .map_err(backend)?
                        .parse()
                        .map_err(backend)?,
                    transaction_start: r.try_get(2).map_err(backend)?,
                    state: r.try_get(3).map_err(backend)?,
                    application_name: r.try_get(4).map_err(backend)?,
                    database: r.try_get(5).map_err(backend)?,
                })
            })
            .collect()
    }
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A read that returns every matching row (or `max_count` of them) in pages of `page_size`, so a
/// long stream is neither cut off nor fetched in one result set. Each page is a query
/// `(key?, cursor, event_types, limit)` ordered by the cursor column; the next page starts after
/// the last row returned. Pages are separate statements: a later page may include events
/// appended after the first was read, never fewer than a single statement would return.
struct Paged<'a> {
    key: Option<&'a (dyn ToSql + Sync)>,
    event_types: &'a Option<Vec<String>>,
    max_count: Option<usize>,
    page_size: usize,
    what: &'static str,
}

impl Paged<'_> {
    async fn run(
        self,
        store: &PgEventStore,
        sql: &str,
        mut cursor: u64,
        next: impl Fn(&RecordedEvent) -> Option<u64>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let page = self.page_size.max(1);
        let mut remaining = self.max_count.unwrap_or(usize::MAX);
        let mut events = Vec::new();
        if remaining == 0 {
            return Ok(events);
        }
        let client = store.client().await?;
        while remaining > 0 {
            let want = page.min(remaining);
            let from = to_i64(cursor, self.what)?;
            let want_sql = limit(want);
            let mut params: Vec<(&(dyn ToSql + Sync), Type)> = Vec::with_capacity(4);
            params.extend(self.key.map(|k| (k, Type::TEXT)));
            params.extend([
                (&from as &(dyn ToSql + Sync), Type::INT8),
                (self.event_types, Type::TEXT_ARRAY),
                (&want_sql, Type::INT8),
            ]);
            let rows = store
                .statements()
                .query(&*client, sql, &params)
                .await
                .map_err(backend)?;
            let batch = recorded_events(&rows)?;
            remaining -= batch.len();
            let following = if batch.len() == want {
                batch.last().and_then(&next)
            } else {
                None
            };
            events.extend(batch);
            match following {
                Some(c) => cursor = c,
                None => break,
            }
        }
        Ok(events)
    }
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
        let name = stream.as_str();
        let read = Paged {
            key: Some(&name),
            event_types: &options.event_types,
            max_count: options.max_count,
            page_size: options.page_size,
            what: "version",
        };
        match options.direction {
            Direction::Forward => {
                read.run(
                    self,
                    &self.inner.sql.read_stream_forward,
                    options.from_version.unwrap_or(0),
                    |e| e.stream_version.checked_add(1),
                )
                .await
            }
            Direction::Backward => {
                read.run(
                    self,
                    &self.inner.sql.read_stream_backward,
                    options.from_version.unwrap_or(i64::MAX as u64),
                    |e| e.stream_version.checked_sub(1),
                )
                .await
            }
        }
    }

    async fn read_category(
        &self,
        category: &Category,
        options: ReadAllOptions,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let name = category.as_str();
        Paged {
            key: Some(&name),
            event_types: &options.event_types,
            max_count: options.max_count,
            page_size: options.page_size,
            what: "position",
        }
        .run(
            self,
            &self.inner.sql.read_category,
            options.from_position,
            |e| e.global_position.checked_add(1),
        )
        .await
    }

    async fn read_all(&self, options: ReadAllOptions) -> Result<Vec<RecordedEvent>, StoreError> {
        Paged {
            key: None,
            event_types: &options.event_types,
            max_count: options.max_count,
            page_size: options.page_size,
            what: "position",
        }
        .run(self, &self.inner.sql.read_all, options.from_position, |e| {
            e.global_position.checked_add(1)
        })
        .await
    }

    async fn read_scope_complete(
        &self,
        scope: &PositionScope,
        after: Option<u64>,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let after = to_i64(after.unwrap_or(0), "position")?;
        let mut client = self.client().await?;
        // READ COMMITTED whatever the database default: the read after the lock must take a new
        // snapshot, or it misses what the appends we waited for committed.
        let tx = read_committed(&mut client).await?;
        // Waiting for the scope's exclusive lock waits out every append in flight in that scope
        // (each holds it shared): what is read next is complete.
        let rows = match scope {
            PositionScope::Category(c) => {
                tx.execute_typed(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                    &[
                        (&SCOPE_CATEGORY_LOCK, Type::INT4),
                        (
                            &format!(
                                "{}{}",
                                crate::keys::lock_namespace(self.inner.options.schema_name()),
                                c.as_str()
                            ),
                            Type::TEXT,
                        ),
                    ],
                )
                .await
                .map_err(backend)?;
                tx.query_typed(
                    &self.inner.sql.read_scope_category,
                    &[
                        (&after, Type::INT8),
                        (&limit(max_count), Type::INT8),
                        (&c.as_str(), Type::TEXT),
                    ],
                )
                .await
                .map_err(backend)?
            }
            _ => {
                tx.execute_typed(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                    &[
                        (&SCOPE_ALL_LOCK, Type::INT4),
                        (
                            &crate::keys::lock_namespace(self.inner.options.schema_name()),
                            Type::TEXT,
                        ),
                    ],
                )
                .await
                .map_err(backend)?;
                tx.query_typed(
                    &self.inner.sql.read_scope_all,
                    &[(&after, Type::INT8), (&limit(max_count), Type::INT8)],
                )
                .await
                .map_err(backend)?
            }
        };
        tx.commit().await.map_err(backend)?;
        recorded_events(&rows)
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<Option<u64>, StoreError> {
        let client = self.client().await?;
        let row = self
            .statements()
            .query_one(
                &*client,
                &self.inner.sql.stream_version,
                &[(&stream.as_str(), Type::TEXT)],
            )
            .await
            .map_err(backend)?;
        Ok(row
            .try_get::<_, Option<i64>>(0)
            .map_err(backend)?
            .map(to_u64))
    }
}
