//! Large plain appends by binary `COPY`, the cheapest way PostgreSQL takes many rows (its
//! multi-row inserts write far less than one `INSERT … SELECT unnest(…)`).
//!
//! The transaction keeps every rule of the one-statement append, in separate statements: its
//! transaction id and the appender, category and stream locks first; then the stream's version,
//! read after the locks (READ COMMITTED: a new statement sees every append that held the stream
//! lock before), so the version check is authoritative; then the batch's positions from the
//! sequence, after the id and the locks (the gap proof). `COPY` writes the rows with those
//! positions and versions, and the transaction commits.
//!
//! Two round trips, as many as a bare `COPY` in autocommit: the transaction's start, the three
//! statements and the start of the `COPY` go out together, the server running them in that
//! order; the rows, the end of the `COPY` and the commit go out together (a `COMMIT` after a
//! failed `COPY` rolls back). The version is checked between the two: when it does not hold,
//! the `COPY` is abandoned (nothing written) and the transaction rolled back.

use std::sync::atomic::Ordering;

use eventrail_core::{AppendOutcome, AppendRequest, EventData, StoreError};
use futures::pin_mut;
use postgres_types::{Json, ToSql, Type};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tracing::debug;

use super::append::Plain;
use super::checkout::Checkout;
use super::{PgEventStore, backend};
use crate::rows::{JsonParam, to_u64};

/// Plain appends of at least this many events go by `COPY` (below it, the one-statement append's
/// single round trip costs less than `COPY`'s extra one).
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
    /// The store's own plain append of `request` (no position precondition) by `COPY`, on
    /// `conn`; a transaction it could not end stays marked on `conn`, which is then closed.
    pub(super) async fn append_copy(&self, conn: &Checkout, request: &AppendRequest) -> Plain {
        let result = self.copy_in_transaction(conn, request).await;
        let client = conn.client();
        match result {
            Ok(outcome) => Plain::Appended(outcome),
            Err(Copied::Refused(e)) => Plain::Failed(e),
            Err(Copied::Database(e)) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                self.inner.plain_appends.store(false, Ordering::Relaxed);
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

    /// Runs the append in a transaction on `conn`; when it returns, the transaction has ended
    /// (committed or rolled back), or `conn` is still marked in it.
    async fn copy_in_transaction(
        &self,
        conn: &Checkout,
        request: &AppendRequest,
    ) -> Result<AppendOutcome, Copied> {
        let client = conn.client();
        let sql = &self.inner.sql;
        let statements = self.statements();
        let stream = request.stream.as_str();
        let count = i32::try_from(request.events.len())
            .map_err(|_| Copied::Refused(StoreError::InvalidRequest("too many events".into())))?;
        let layout = self.layout(client).await.map_err(Copied::Refused)?;
        let stream_version = &sql.of(layout).stream_version;
        // Prepared first (cached), so that each goes out at once, in this order.
        for (text, types) in [
            (&sql.append_locks, &[Type::TEXT][..]),
            (stream_version, &[Type::TEXT][..]),
            (&sql.reserve_positions, &[Type::INT4][..]),
        ] {
            statements.warm(&**client, text, types).await?;
        }
        let copy_statement = client.prepare_cached(&sql.copy_events).await?;
        let stream_param: [(&(dyn ToSql + Sync), Type); 1] = [(&stream, Type::TEXT)];
        let count_param: [(&(dyn ToSql + Sync), Type); 1] = [(&count, Type::INT4)];
        // From here on the connection is in a transaction until it ends below; an interruption
        // closes the connection (`Checkout`).
        conn.transaction_started();
        let (begun, locked, version, reserved, copy) = futures::join!(
            client.batch_execute("START TRANSACTION ISOLATION LEVEL READ COMMITTED"),
            statements.query_one(&**client, &sql.append_locks, &stream_param),
            statements.query_one(&**client, stream_version, &stream_param),
            statements.query_one(&**client, &sql.reserve_positions, &count_param),
            client.copy_in(&copy_statement),
        );
        // The first failure is the cause; the later statements failed in its aborted transaction.
        let started = begun.and(locked).and_then(|_| {
            let current: Option<i64> = version?.try_get(0)?;
            let positions: Vec<i64> = reserved?.try_get(0)?;
            Ok((current, positions, copy?))
        });
        let (current, positions, copy) = match started {
            Ok(started) => started,
            // The COPY did not start (it failed, or ran in the transaction an earlier failure
            // aborted). tokio-postgres then counts one answer fewer than the server sends (the
            // abandoned COPY's own end): the connection cannot serve anyone again. It is closed
            // with its transaction still open (`Checkout`), which rolls it back.
            Err(e) => return Err(e.into()),
        };
        if !request
            .expected_version
            .is_satisfied_by(current.map(to_u64))
        {
            // Read after the stream lock: authoritative. The COPY, dropped, is abandoned.
            drop(copy);
            let refused = StoreError::WrongExpectedVersion {
                stream: request.stream.to_string(),
                expected: request.expected_version,
                actual: current.map(to_u64),
            };
            return Err(roll_back(conn, Copied::Refused(refused)).await);
        }
        let first = current.map_or(0, |v| v + 1);
        let writer = BinaryCopyInWriter::new(copy, &COPY_TYPES);
        pin_mut!(writer);
        let numbered = request.events.iter().zip(&positions).zip(first..);
        for ((event, position), version) in numbered {
            let Ok(schema_version) = i32::try_from(event.schema_version) else {
                let refused = StoreError::InvalidRequest("schema version out of range".into());
                return Err(roll_back(conn, Copied::Refused(refused)).await);
            };
            let (data, binary) = match &event.data {
                EventData::Json(v) => (Some(JsonParam(v)), None),
                EventData::Binary(b) => (None, Some(b.as_slice())),
            };
            let row: [&(dyn ToSql + Sync); 9] = [
                position,
                &stream,
                &version,
                &event.id,
                &event.event_type.as_str(),
                &schema_version,
                &data,
                &binary,
                &Json(&event.metadata),
            ];
            if let Err(e) = writer.as_mut().write(&row).await {
                return Err(roll_back(conn, e.into()).await);
            }
        }
        // The end of the COPY and the commit in one round trip: the commit of a transaction
        // whose COPY failed is a rollback.
        let (copied, committed) =
            futures::join!(writer.as_mut().finish(), client.batch_execute("COMMIT"));
        conn.transaction_ended();
        copied?;
        committed?;
        let last = to_u64(first + i64::from(count) - 1);
        Ok(AppendOutcome::new(
            last,
            positions.into_iter().map(to_u64).collect(),
        ))
    }
}

/// Rolls back the transaction on `conn` and gives `failure` back to return.
async fn roll_back(conn: &Checkout, failure: Copied) -> Copied {
    if conn.client().batch_execute("ROLLBACK").await.is_ok() {
        conn.transaction_ended();
    }
    failure
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
