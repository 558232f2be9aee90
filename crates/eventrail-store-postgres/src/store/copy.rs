//! Large plain appends by binary `COPY`, the cheapest way PostgreSQL takes many rows (its
//! multi-row inserts write far less than one `INSERT … SELECT unnest(…)`).
//!
//! The transaction keeps every rule of the one-statement append, in separate statements sent
//! together (one round trip): its transaction id and the appender, category and stream locks
//! first; then the stream's version, read after the locks (READ COMMITTED: a new statement sees
//! every append that held the stream lock before), so the version check is authoritative; then
//! the batch's positions from the sequence, after the id and the locks (the gap proof). `COPY`
//! writes the rows with those positions and versions, and the transaction commits.

use eventrail_core::{AppendOutcome, AppendRequest, EventData, StoreError};
use futures::pin_mut;
use postgres_types::{Json, ToSql, Type};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tracing::debug;

use super::append::Plain;
use super::{PgEventStore, backend, read_committed};
use crate::rows::{JsonParam, to_u64};

/// Plain appends of at least this many events go by `COPY` (below it, the one-statement append's
/// single round trip costs less than `COPY`'s extra ones).
pub(super) const COPY_FROM: usize = 32;

const COPY_TYPES: [Type; 9] = [
    Type::INT8,
    Type::TEXT,
    Type::INT8,
    Type::UUID,
    Type::TEXT,
    Type::INT4,
    Type::JSONB,
    Type::BYTEA,
    Type::JSONB,
];

impl PgEventStore {
    /// The store's own plain append of `request` (no position precondition) by `COPY`.
    pub(super) async fn append_copy(
        &self,
        client: &mut deadpool_postgres::Object,
        request: &AppendRequest,
    ) -> Plain {
        match self.copy_in_transaction(client, request).await {
            Ok(outcome) => Plain::Appended(outcome),
            Err(Copied::Refused(e)) => Plain::Failed(e),
            Err(Copied::Database(e)) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                self.inner
                    .plain_appends
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                debug!("no INSERT privilege on events: appends go through append_events");
                Plain::Undecided
            }
            Err(Copied::Database(e)) => {
                if crate::error::is_unique_violation(&e, "events_event_id_key") {
                    let ids: Vec<uuid::Uuid> = request.events.iter().map(|e| e.id).collect();
                    Plain::Failed(self.duplicate_id(&***client, &ids).await)
                } else {
                    Plain::Failed(backend(e))
                }
            }
        }
    }

    async fn copy_in_transaction(
        &self,
        client: &mut deadpool_postgres::Object,
        request: &AppendRequest,
    ) -> Result<AppendOutcome, Copied> {
        let sql = &self.inner.sql;
        let statements = self.statements();
        let stream = request.stream.as_str();
        let count = i32::try_from(request.events.len())
            .map_err(|_| Copied::Refused(StoreError::InvalidRequest("too many events".into())))?;
        let layout = self.layout(client).await.map_err(Copied::Refused)?;
        let stream_version = &sql.of(layout).stream_version;
        let tx = read_committed(client).await.map_err(Copied::Refused)?;
        // Prepared first (when cached), so the three go out in this order in one round trip.
        for (text, types) in [
            (&sql.append_locks, &[Type::TEXT][..]),
            (stream_version, &[Type::TEXT][..]),
            (&sql.reserve_positions, &[Type::INT4][..]),
        ] {
            statements.warm(&tx, text, types).await?;
        }
        let stream_param: [(&(dyn ToSql + Sync), Type); 1] = [(&stream, Type::TEXT)];
        let count_param: [(&(dyn ToSql + Sync), Type); 1] = [(&count, Type::INT4)];
        let (locked, version, reserved) = futures::join!(
            statements.query_one(&tx, &sql.append_locks, &stream_param),
            statements.query_one(&tx, stream_version, &stream_param),
            statements.query_one(&tx, &sql.reserve_positions, &count_param),
        );
        locked?;
        let current: Option<i64> = version?.try_get(0)?;
        let positions: Vec<i64> = reserved?.try_get(0)?;
        if !request
            .expected_version
            .is_satisfied_by(current.map(to_u64))
        {
            // Read after the stream lock: authoritative. Nothing was written.
            return Err(Copied::Refused(StoreError::WrongExpectedVersion {
                stream: request.stream.to_string(),
                expected: request.expected_version,
                actual: current.map(to_u64),
            }));
        }
        let first = current.map_or(0, |v| v + 1);
        let copy_statement = tx.prepare_cached(&sql.copy_events).await?;
        let copy = tx.copy_in(&copy_statement).await?;
        let writer = BinaryCopyInWriter::new(copy, &COPY_TYPES);
        pin_mut!(writer);
        let numbered = request.events.iter().zip(&positions).zip(first..);
        for ((event, position), version) in numbered {
            let schema_version = i32::try_from(event.schema_version).map_err(|_| {
                Copied::Refused(StoreError::InvalidRequest(
                    "schema version out of range".into(),
                ))
            })?;
            let (data, binary) = match &event.data {
                EventData::Json(v) => (Some(JsonParam(v)), None),
                EventData::Binary(b) => (None, Some(b.as_slice())),
            };
            writer
                .as_mut()
                .write(&[
                    position,
                    &stream,
                    &version,
                    &event.id,
                    &event.event_type.as_str(),
                    &schema_version,
                    &data,
                    &binary,
                    &Json(&event.metadata),
                ])
                .await?;
        }
        writer.finish().await?;
        tx.commit().await?;
        let last = to_u64(first + i64::from(count) - 1);
        Ok(AppendOutcome::new(
            last,
            positions.into_iter().map(to_u64).collect(),
        ))
    }
}

/// How a `COPY` append failed.
enum Copied {
    /// Decided: the caller gets this error.
    Refused(StoreError),
    /// A database error, classified by the caller.
    Database(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for Copied {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Database(e)
    }
}
