//! Faults a worker rides out: timeouts that end a frozen process's transactions on the server,
//! deposing a frozen leader, and clearing a fenced batch out of a new owner's way.
//!
//! Why terminating backends is sound here:
//! - A leader whose heartbeat is older than the heartbeat timeout is dead by the same rule that
//!   moves a follower's consumers; in advisory-lock mode its session (and with it the leader
//!   lock) may still be alive because the process is stopped, not gone. A candidate terminates
//!   that session and takes the lock. Every rebalance checks, after locking the assignment rows
//!   and in the same transaction, that its writer's session still holds the leader lock, so the
//!   deposed leader can write nothing once it wakes up (and a leader deposed while its
//!   rebalance holds the rows is waited for by the next one, which then recomputes).
//! - A batch whose assignment epoch is older than the current one can never commit: its
//!   checkpoint write checks the epoch. Terminating its backend only ends a transaction that
//!   must roll back anyway, and releases the checkpoint row it holds for the new owner.
//!
//! Terminating a backend needs `pg_signal_backend` (or the same role, or a superuser).

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tracing::{info, warn};

use crate::WorkerOptions;
use crate::error::db;
use crate::runtime::{IDENTITY_LOCK, LEADER_LOCK};
use crate::tables::Tables;
use crate::{WorkerError, runtime::Shared};

/// How long a statement waits for a row lock that a frozen or deposed process may hold, before
/// giving up (and clearing the way, or retrying at the next tick).
pub(crate) fn lock_wait(options: &WorkerOptions) -> Duration {
    (options.heartbeat_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(2))
}

fn millis(d: Duration) -> u128 {
    d.as_millis().max(1)
}

/// Whether `error` is a lock wait that ran out (`lock_timeout`).
pub(crate) fn is_lock_busy(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
}

/// A stable 64-bit FNV-1a hash (the same in every process), to name a consumer in the
/// 63 bytes of an `application_name`.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The `application_name` prefix of batches of `consumer`: `eventrail-batch <hash>`.
fn batch_tag(consumer: &str) -> String {
    format!("eventrail-batch {:016x}", fnv(consumer))
}

/// `SET LOCAL`s at the start of a batch transaction: the batch timeout is enforced by the
/// server too (a stopped process's open transaction is ended, not only the client's future), the
/// checkpoint row lock is waited for only briefly, and the batch is tagged with its consumer and
/// epoch so that a later owner can recognise it as fenced.
pub(crate) fn batch_settings(options: &WorkerOptions, consumer: &str, epoch: i64) -> String {
    let batch = millis(options.batch_timeout);
    format!(
        "SET LOCAL statement_timeout = {batch}; SET LOCAL idle_in_transaction_session_timeout = {batch}; \
         SET LOCAL lock_timeout = {}; SET LOCAL application_name = '{} {epoch}'",
        millis(lock_wait(options)),
        batch_tag(consumer)
    )
}

/// Resets the lock wait after the checkpoint row is locked: the handlers' own statements wait as
/// configured for the session.
pub(crate) const RESET_LOCK_WAIT: &str = "SET LOCAL lock_timeout TO DEFAULT";

/// `SET LOCAL`s at the start of a rebalance transaction.
pub(crate) fn rebalance_settings(options: &WorkerOptions) -> String {
    let wait = millis(lock_wait(options));
    let idle = millis(options.heartbeat_timeout);
    format!(
        "SET LOCAL lock_timeout = {wait}; SET LOCAL statement_timeout = {idle}; \
         SET LOCAL idle_in_transaction_session_timeout = {idle}"
    )
}

/// Terminates the backends running batches of `consumer` under an epoch older than `epoch`
/// (they can never commit); returns how many.
///
/// # Errors
/// [`WorkerError::Database`].
pub(crate) async fn terminate_fenced_batches(
    client: &tokio_postgres::Client,
    consumer: &str,
    epoch: i64,
) -> Result<usize, WorkerError> {
    let rows = client
        .query_typed(
            "SELECT pid, pg_terminate_backend(pid, 1000) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND application_name LIKE $1 || ' %'
               AND split_part(application_name, ' ', 3) ~ '^[0-9]+$'
               AND split_part(application_name, ' ', 3)::bigint < $2",
            &[
                (&batch_tag(consumer), tokio_postgres::types::Type::TEXT),
                (&epoch, tokio_postgres::types::Type::INT8),
            ],
        )
        .await
        .map_err(db)?;
    for row in &rows {
        let pid: i32 = row.get(0);
        info!(
            pid,
            "terminated the backend of a fenced batch that held the checkpoint row (a frozen or deposed owner)"
        );
    }
    Ok(rows.len())
}

/// In advisory-lock mode, terminates the session holding the leader lock when it belongs to no
/// registered worker with a fresh heartbeat (a frozen leader); run on the candidate's session.
/// Returns whether one was terminated.
///
/// # Errors
/// [`WorkerError::Database`].
pub(crate) async fn depose_stale_leader(
    shared: &Shared,
    session: &tokio_postgres::Client,
) -> Result<bool, WorkerError> {
    let Tables {
        nodes, checkpoints, ..
    } = &*shared.tables;
    let sql = format!(
        "SELECT h.pid, h.worker_id, h.age, pg_terminate_backend(h.pid, 1000) FROM (
             SELECT l.pid, n.worker_id, extract(epoch FROM clock_timestamp() - n.heartbeat_at)::float8 AS age
             FROM pg_locks l
             LEFT JOIN pg_locks i ON i.locktype = 'advisory' AND i.granted AND i.pid = l.pid
                 AND i.database = l.database AND i.classid = {IDENTITY_LOCK}::oid AND i.objsubid = 2
             LEFT JOIN {nodes} n ON hashtext(n.worker_id::text)::oid = i.objid
             WHERE l.locktype = 'advisory' AND l.granted
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND l.classid = {LEADER_LOCK}::oid AND l.objid = hashtext($1::text)::oid AND l.objsubid = 2
               AND l.pid <> pg_backend_pid()
         ) h
         WHERE h.age IS NULL OR h.age > $2::float8"
    );
    let timeout = shared.options.heartbeat_timeout.as_secs_f64();
    let rows = match session.query(&sql, &[checkpoints, &timeout]).await {
        Ok(rows) => rows,
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            warn!(error = %crate::error::chain(&e), "cannot depose a leader whose heartbeat is stale: grant pg_signal_backend to the worker's role");
            return Ok(false);
        }
        Err(e) => return Err(db(e)),
    };
    for row in &rows {
        let pid: i32 = row.get(0);
        let worker: Option<uuid::Uuid> = row.get(1);
        let age: Option<f64> = row.get(2);
        warn!(pid, deposed = ?worker, heartbeat_age_seconds = ?age, "terminated the session of a leader whose heartbeat is past the timeout (frozen or unregistered)");
    }
    Ok(!rows.is_empty())
}

/// In the rebalance transaction of the leader holding `grant`: raises the stored fencing token
/// to the grant's, or finds it higher (a later leader has written: this one is deposed). An
/// external elector's leader also records itself (worker and expiry) in the leader row, for
/// `eventrail status`. See [`crate::elector`] for why the token only grows.
///
/// # Errors
/// [`WorkerError::Database`].
pub(crate) async fn raise_fence(
    tx: &tokio_postgres::Transaction<'_>,
    shared: &Shared,
    grant: crate::elector::Grant,
    external: bool,
) -> Result<crate::elector::Check, WorkerError> {
    use crate::elector::Check;
    let leader = &shared.tables.leader;
    let validity = format!("{} seconds", shared.options.heartbeat_timeout.as_secs_f64());
    let outcome = if external {
        tx.query_opt(
            &format!(
                "UPDATE {leader} SET fencing_token = $1, worker_id = $2, expires_at = clock_timestamp() + $3::text::interval
                 WHERE id = 1 AND fencing_token <= $1 RETURNING fencing_token"
            ),
            &[&grant.token, &shared.id, &validity],
        )
        .await
        .map(|row| row.map(|r| r.get::<_, i64>(0)))
    } else {
        // The PostgreSQL electors took their token in the leader row already.
        tx.query_opt(
            &format!("SELECT fencing_token FROM {leader} WHERE id = 1"),
            &[],
        )
        .await
        .map(|row| row.map(|r| r.get::<_, i64>(0)))
    };
    let stored = match outcome {
        Ok(stored) => stored,
        Err(e) if is_lock_busy(&e) => return Ok(Check::Busy),
        Err(e) => return Err(db(e)),
    };
    match stored {
        Some(stored) if stored <= grant.token => {
            // Only after an operator reset the fence, in the PostgreSQL modes.
            if stored < grant.token {
                tx.execute(
                    &format!(
                        "UPDATE {leader} SET fencing_token = $1 WHERE id = 1 AND fencing_token < $1"
                    ),
                    &[&grant.token],
                )
                .await
                .map_err(db)?;
            }
        }
        _ => {
            let stored: Option<i64> = tx
                .query_opt(
                    &format!("SELECT fencing_token FROM {leader} WHERE id = 1"),
                    &[],
                )
                .await
                .map_err(db)?
                .map(|r| r.get(0));
            warn!(
                token = grant.token,
                stored = ?stored,
                "a leader with a higher fencing token has written: this one is deposed (if no other \
                 worker leads, the coordination service lost its data: reset worker_leader.fencing_token)"
            );
            return Ok(Check::Deposed);
        }
    }
    Ok(Check::Leads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_tags_fit_an_application_name_and_are_stable() {
        let settings = batch_settings(&WorkerOptions::new(), &"x".repeat(500), i64::MAX);
        let name = settings
            .split("application_name = '")
            .nth(1)
            .and_then(|s| s.strip_suffix('\''))
            .expect("tag");
        assert!(name.len() <= 63, "{name}");
        assert_eq!(batch_tag("orders"), batch_tag("orders"));
        assert_ne!(batch_tag("orders"), batch_tag("orders2"));
        assert_eq!(fnv(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv("a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn lock_waits_are_short_but_not_zero() {
        let o = WorkerOptions::new().heartbeat_timeout(Duration::from_secs(5));
        assert_eq!(lock_wait(&o), Duration::from_millis(1250));
        let o = WorkerOptions::new().heartbeat_timeout(Duration::from_millis(10));
        assert_eq!(lock_wait(&o), Duration::from_millis(100));
        assert!(rebalance_settings(&o).contains("idle_in_transaction_session_timeout = 10"));
    }
}
