//! The append path: the parameters of `append_events`, how its rows and failures are read, the
//! stateless processors run in the append transaction, and the two entry points (the store's own
//! transaction, or the caller's with [`PgEventStore::append_in`]).

use std::time::SystemTime;

use eventrail_core::{
    AppendOutcome, AppendRequest, EventData, ExpectedVersion, PositionScope, ProcessorError,
    RecordedEvent, StatefulProcessor, StatelessProcessor, StoreError,
};
use futures::future::BoxFuture;
use postgres_types::{Json, ToSql, Type};
use tokio_postgres::error::SqlState;
use tokio_postgres::{GenericClient, Row, Transaction};
use tracing::{debug, instrument, warn};
use uuid::Uuid;

use super::checkout::Checkout;
use super::partitions::is_missing_partition;
use super::{PgEventStore, backend, read_committed};
use crate::error::is_unique_violation;
use crate::rows::{JsonParam, parse_xid, to_i64, to_u64};

/// A [`StatelessProcessor`] that runs in a PostgreSQL append transaction.
///
/// Implement `StatelessProcessor<tokio_postgres::Transaction<'t>>` for every `'t`; this trait is
/// then implemented for you.
pub trait PgStatelessProcessor: for<'t> StatelessProcessor<Transaction<'t>> {}

impl<P> PgStatelessProcessor for P where P: for<'t> StatelessProcessor<Transaction<'t>> {}

// The store keeps processors of different types in one list, so their futures are boxed.
pub(super) trait DynProcessor: Send + Sync {
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
    data: Vec<Option<JsonParam<'r>>>,
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
                    EventData::Json(v) => Some(JsonParam(v)),
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

    /// The parameters of the plain statement ([`Sql::append_plain`](super::sql)): stream,
    /// expected version and the event columns.
    fn plain(&self) -> [(&(dyn ToSql + Sync), Type); 9] {
        [
            (&self.stream, Type::TEXT),
            (&self.expected_kind, Type::INT2),
            (&self.expected_version, Type::INT8),
            (&self.ids, Type::UUID_ARRAY),
            (&self.types, Type::TEXT_ARRAY),
            (&self.schema_versions, Type::INT4_ARRAY),
            (&self.data, Type::JSONB_ARRAY),
            (&self.data_binary, Type::BYTEA_ARRAY),
            (&self.metadata, Type::JSONB_ARRAY),
        ]
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

/// How often the store's own append is tried when its positions have no partition yet.
const MISSING_PARTITION_ATTEMPTS: u32 = 5;

/// What the plain statement made of an append.
pub(super) enum Plain {
    /// Written.
    Appended(AppendOutcome),
    /// Refused for good (a duplicate event id, a lost connection).
    Failed(StoreError),
    /// Not decided: its snapshot may have been stale (a failed version check, a version
    /// collision), or it may not insert (no INSERT privilege). `append_events` decides.
    Undecided,
}

impl PgEventStore {
    /// The store's own plain append in one SQL statement (see `Sql::append_plain`).
    async fn append_plain(
        &self,
        client: &deadpool_postgres::Object,
        request: &AppendRequest,
        params: &AppendParams<'_>,
    ) -> Plain {
        let layout = match self.layout(client).await {
            Ok(layout) => layout,
            Err(e) => return Plain::Failed(e),
        };
        let result = self
            .statements()
            .query(
                &**client,
                &self.inner.sql.of(layout).append_plain,
                &params.plain(),
            )
            .await;
        match result {
            Ok(rows) if rows.len() == request.events.len() => {
                match positions_and_last_version(&rows) {
                    Ok((positions, last)) => Plain::Appended(AppendOutcome::new(last, positions)),
                    Err(e) => Plain::Failed(e),
                }
            }
            // The check failed on the statement's snapshot, which may predate the stream lock.
            Ok(_) => Plain::Undecided,
            Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                // A role that may only call `append_events` (`eventrail migrate --roles`).
                self.inner
                    .plain_appends
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                debug!("no INSERT privilege on events: appends go through append_events");
                Plain::Undecided
            }
            Err(e) => match classify(e) {
                AppendFailure::DuplicateId => {
                    Plain::Failed(self.duplicate_id(&***client, &params.ids).await)
                }
                // A stale version collided: the function reads after the stream lock.
                AppendFailure::Other(StoreError::SerializationConflict(_)) => Plain::Undecided,
                AppendFailure::Other(e) => Plain::Failed(e),
            },
        }
    }
}

/// The positions of the rows (in order) and the last stream version.
fn positions_and_last_version(rows: &[Row]) -> Result<(Vec<u64>, u64), StoreError> {
    let mut positions = Vec::with_capacity(rows.len());
    let mut last = 0;
    for row in rows {
        positions.push(to_u64(row.try_get(0).map_err(backend)?));
        last = last.max(to_u64(row.try_get(1).map_err(backend)?));
    }
    Ok((positions, last))
}

impl PgEventStore {
    pub(super) async fn duplicate_id(
        &self,
        client: &impl GenericClient,
        ids: &[Uuid],
    ) -> StoreError {
        let sql = &self.inner.sql.of(self.known_layout()).existing_ids;
        let event_id = match client
            .query_typed_opt(sql, &[(&ids, Type::UUID_ARRAY)])
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

    pub(super) async fn append_impl<P: StatefulProcessor + ?Sized>(
        &self,
        request: AppendRequest,
        staged: Option<&P>,
    ) -> Result<AppendOutcome, StoreError> {
        // A partitioned log grew faster than its partitions were attached: nothing was written;
        // attach room for twice the batch and try again, with four times more room each time
        // (concurrent appends take positions too).
        let mut room = 2 * request.events.len() as u64;
        let mut attempts = 1;
        loop {
            match self.append_once(&request, staged).await {
                Err(e) if is_missing_partition(&e) && attempts < MISSING_PARTITION_ATTEMPTS => {
                    debug!(
                        attempts,
                        room, "no partition for the append's positions yet: attaching"
                    );
                    self.add_partitions(room).await?;
                    room = room.saturating_mul(4);
                    attempts += 1;
                }
                other => return other,
            }
        }
    }

    async fn append_once<P: StatefulProcessor + ?Sized>(
        &self,
        request: &AppendRequest,
        staged: Option<&P>,
    ) -> Result<AppendOutcome, StoreError> {
        request.validate()?;
        // No hint inside the transaction (it would serialise commits): sent after the commit.
        let params = AppendParams::new(request, None)?;
        let mut conn = Checkout::new(self.client().await?);
        let result = self.append_on(&mut conn, request, staged, &params).await;
        conn.release();
        result
    }

    /// The append on `conn`: every path returns with its statements answered and its
    /// transaction ended (or `conn` discarded).
    async fn append_on<P: StatefulProcessor + ?Sized>(
        &self,
        conn: &mut Checkout,
        request: &AppendRequest,
        staged: Option<&P>,
        params: &AppendParams<'_>,
    ) -> Result<AppendOutcome, StoreError> {
        let plain = self.inner.processors.is_empty() && staged.is_none();
        if plain
            && request.expected_position.is_none()
            && self
                .inner
                .plain_appends
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            // COPY's statements are prepared and kept: not behind PgBouncer in transaction mode.
            let attempt = if request.events.len() >= super::copy::COPY_FROM
                && self.statements() == crate::Statements::Cached
            {
                self.append_copy(conn, request).await
            } else {
                self.append_plain(conn.client(), request, params).await
            };
            match attempt {
                Plain::Appended(outcome) => {
                    self.appended(outcome.last_position());
                    return Ok(outcome);
                }
                Plain::Failed(e) => return Err(e),
                // The function decides, on a connection that can still serve.
                Plain::Undecided if conn.in_transaction() => {
                    *conn = Checkout::new(self.client().await?);
                }
                Plain::Undecided => {}
            }
        }
        if plain {
            // One statement in autocommit: one round trip. A database whose default isolation is
            // above READ COMMITTED refuses a conditional append (nothing written) or reports a
            // stale version: run it again below, explicitly at READ COMMITTED.
            match self
                .statements()
                .query(&**conn.client(), &self.inner.sql.append, &params.typed())
                .await
            {
                Ok(rows) => match interpret_positions(request, &rows) {
                    Err(StoreError::IsolationNotSupported { .. }) => {}
                    Ok(outcome) => {
                        self.appended(outcome.last_position());
                        return Ok(outcome);
                    }
                    other => return other,
                },
                Err(e) => match classify(e) {
                    AppendFailure::DuplicateId => {
                        return Err(self.duplicate_id(&***conn.client(), &params.ids).await);
                    }
                    AppendFailure::Other(StoreError::SerializationConflict(_)) => {}
                    AppendFailure::Other(e) => return Err(e),
                },
            }
        }
        // The store's own transaction is READ COMMITTED whatever the database default: the checks
        // in `append_events` rely on it.
        let tx = read_committed(conn.client_mut()).await?;
        let rows = match self
            .statements()
            .query(&tx, &self.inner.sql.append, &params.typed())
            .await
        {
            Ok(rows) => rows,
            Err(e) => match classify(e) {
                AppendFailure::DuplicateId => {
                    drop(tx);
                    return Err(self.duplicate_id(&***conn.client(), &params.ids).await);
                }
                AppendFailure::Other(e) => return Err(e),
            },
        };
        let (outcome, recorded) = interpret(request, &rows)?;
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
                self.appended(outcome.last_position());
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

    /// Wakes subscribers: `position` is committed. The store's own appends call it after their
    /// commit (coalesced, on a pooled connection, never inside the appending transaction, where
    /// a `pg_notify` would serialise commits). Appends in a caller's transaction
    /// ([`append_in`](Self::append_in)) send their hint with the caller's commit instead; call
    /// this after committing to wake subscribers once more. Nothing without a notify channel.
    pub fn hint(&self, position: u64) {
        if let Some(h) = &self.inner.hinter {
            h.hint(position);
        }
    }

    /// After the store's own append committed up to `last`: the hint, and partitions ahead.
    fn appended(&self, last: u64) {
        self.hint(last);
        self.partitions_after(last);
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
    /// As [`EventStore::append`](eventrail_core::EventStore::append).
    #[instrument(skip_all, fields(stream = %request.stream, events = request.events.len()))]
    pub async fn append_in(
        &self,
        tx: &Transaction<'_>,
        request: AppendRequest,
    ) -> Result<AppendOutcome, StoreError> {
        self.append_in_hinting(tx, request, true).await
    }

    /// [`append_in`](Self::append_in) without the wake-up hint in the transaction: when you
    /// commit the transaction yourself, call [`hint`](Self::hint) with the last position after
    /// the commit. A `pg_notify` inside a transaction serialises the commits of every notifying
    /// transaction; a hint after the commit does not.
    ///
    /// # Errors
    /// As [`append_in`](Self::append_in).
    #[instrument(skip_all, fields(stream = %request.stream, events = request.events.len()))]
    pub async fn append_in_unhinted(
        &self,
        tx: &Transaction<'_>,
        request: AppendRequest,
    ) -> Result<AppendOutcome, StoreError> {
        self.append_in_hinting(tx, request, false).await
    }

    async fn append_in_hinting(
        &self,
        tx: &Transaction<'_>,
        request: AppendRequest,
        hint: bool,
    ) -> Result<AppendOutcome, StoreError> {
        let room = 2 * request.events.len() as u64;
        match self.append_in_once(tx, request, hint).await {
            Err(e) if is_missing_partition(&e) => {
                Err(self.missing_partition_in_caller_tx(e, room).await)
            }
            other => other,
        }
    }

    async fn append_in_once(
        &self,
        tx: &Transaction<'_>,
        request: AppendRequest,
        hint: bool,
    ) -> Result<AppendOutcome, StoreError> {
        request.validate()?;
        let channel = if hint {
            self.inner.channel.as_deref()
        } else {
            None
        };
        let params = AppendParams::new(&request, channel)?;
        let typed = params.typed();
        if self.inner.processors.is_empty() {
            let outcome = match tx.query_typed(&self.inner.sql.append, &typed).await {
                Ok(rows) => interpret_positions(&request, &rows),
                Err(e) => Err(classify(e).into_error()),
            };
            if let Ok(o) = &outcome {
                self.partitions_after(o.last_position());
            }
            return outcome;
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
                self.partitions_after(outcome.last_position());
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
}
