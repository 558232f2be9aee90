//! The PostgreSQL modes: a session advisory lock on the worker's own connection, or a lease row
//! renewed through the pool. Their check in the rebalance transaction (the lock still held by
//! this session; the lease current and locked against takeover until commit) is what it always
//! was; the fencing token is taken in the statement that makes a worker leader.

use tokio_postgres::Transaction;

use super::{Check, Context, Elector, Grant};
use crate::error::db;
use crate::runtime::{LEADER_LOCK, advisory_lock_held};
use crate::{LeaderMode, WorkerError};

/// The advisory-lock and lease-row elector.
#[derive(Debug, Default)]
pub(crate) struct PgElector {
    /// Advisory-lock mode: the session holds the leader lock (until the session ends).
    locked: bool,
    /// The token taken when this worker became leader.
    token: Option<i64>,
}

impl PgElector {
    /// Advisory-lock mode: takes `fencing_token + 1` once the lock is held; `None` when the row
    /// is busy (a deposed leader's rebalance holds it: try at the next tick).
    async fn take_token(cx: &Context<'_>) -> Result<Option<i64>, WorkerError> {
        let shared = cx.shared;
        let mut client = shared.store.pool().get().await.map_err(db)?;
        let tx = short_lock_wait(&mut client, &shared.options).await?;
        let row = match tx
            .query_one(
                &format!(
                    "UPDATE {} SET fencing_token = fencing_token + 1 WHERE id = 1 RETURNING fencing_token",
                    shared.tables.leader
                ),
                &[],
            )
            .await
        {
            Ok(row) => row,
            Err(e) if crate::fence::is_lock_busy(&e) => return Ok(None),
            Err(e) => return Err(db(e)),
        };
        tx.commit().await.map_err(db)?;
        Ok(Some(row.get(0)))
    }
}

/// A transaction that waits only briefly for row locks (another leader's rebalance may hold
/// the leader row).
async fn short_lock_wait<'c>(
    client: &'c mut deadpool_postgres::Object,
    options: &crate::WorkerOptions,
) -> Result<deadpool_postgres::Transaction<'c>, WorkerError> {
    let tx = client.transaction().await.map_err(db)?;
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = {}",
        crate::fence::lock_wait(options).as_millis().max(1)
    ))
    .await
    .map_err(db)?;
    Ok(tx)
}

impl Elector for PgElector {
    async fn campaign(&mut self, cx: &Context<'_>) -> Result<Option<Grant>, WorkerError> {
        let shared = cx.shared;
        let grant = |token| Grant {
            token,
            valid_until: None,
        };
        match shared.options.leader_mode {
            LeaderMode::Lease => {
                let ttl = format!("{} seconds", shared.options.heartbeat_timeout.as_secs_f64());
                let mut client = shared.store.pool().get().await.map_err(db)?;
                // A leader's rebalance holds the row FOR SHARE while it writes: wait only briefly.
                let tx = short_lock_wait(&mut client, &shared.options).await?;
                // A takeover (not a renewal of a current lease) takes the next token.
                let row = match tx
                    .query_opt(
                        &format!(
                            "UPDATE {} SET worker_id = $1, expires_at = now() + $2::text::interval,
                                 fencing_token = CASE WHEN worker_id = $1 AND expires_at >= now()
                                                      THEN fencing_token ELSE fencing_token + 1 END
                             WHERE id = 1 AND (worker_id = $1 OR worker_id IS NULL OR expires_at < now())
                             RETURNING fencing_token",
                            shared.tables.leader
                        ),
                        &[&shared.id, &ttl],
                    )
                    .await
                {
                    Ok(row) => row,
                    Err(e) if crate::fence::is_lock_busy(&e) => return Ok(None),
                    Err(e) => return Err(db(e)),
                };
                tx.commit().await.map_err(db)?;
                self.token = row.map(|r| r.get(0));
                Ok(self.token.map(grant))
            }
            _ => {
                if !self.locked {
                    // Held until the session ends (or is ended by a candidate because this
                    // worker's heartbeat went stale: the session's death is noticed then).
                    let try_lock = || async {
                        cx.session
                            .client
                            .query_one(
                                "SELECT pg_try_advisory_lock($1, hashtext($2))",
                                &[&LEADER_LOCK, &shared.tables.checkpoints],
                            )
                            .await
                            .map(|row| row.get::<_, bool>(0))
                            .map_err(db)
                    };
                    self.locked = try_lock().await?;
                    // Held: by a live leader, or by a frozen one whose session outlives it.
                    if !self.locked
                        && crate::fence::depose_stale_leader(shared, &cx.session.client).await?
                    {
                        self.locked = try_lock().await?;
                    }
                    if !self.locked {
                        return Ok(None);
                    }
                }
                if self.token.is_none() {
                    self.token = Self::take_token(cx).await?;
                }
                Ok(self.token.map(grant))
            }
        }
    }

    async fn still_leads(
        &self,
        tx: &Transaction<'_>,
        cx: &Context<'_>,
        _grant: Grant,
    ) -> Result<Check, WorkerError> {
        let t = &cx.shared.tables;
        let leads = match cx.shared.options.leader_mode {
            LeaderMode::Lease => match tx
                .query_opt(
                    // clock_timestamp(): `now()` is when the transaction began, maybe before a
                    // long pause.
                    &format!(
                        "SELECT 1 FROM {} WHERE id = 1 AND worker_id = $1 AND expires_at > clock_timestamp() FOR SHARE",
                        t.leader
                    ),
                    &[&cx.shared.id],
                )
                .await
            {
                Ok(row) => row.is_some(),
                Err(e) if crate::fence::is_lock_busy(&e) => return Ok(Check::Busy),
                Err(e) => return Err(db(e)),
            },
            _ => tx
                .query_one(
                    &format!(
                        "SELECT {}",
                        advisory_lock_held(LEADER_LOCK, "$1::text", "AND l.pid = $2")
                    ),
                    &[&t.checkpoints, &cx.session.pid],
                )
                .await
                .map_err(db)?
                .get::<_, bool>(0),
        };
        Ok(if leads { Check::Leads } else { Check::Deposed })
    }

    async fn lost(&self, _grant: Grant) {
        // The check in the transaction decides; nothing to race against.
        std::future::pending::<()>().await;
    }

    async fn changed(&mut self) {
        std::future::pending::<()>().await;
    }

    fn forget(&mut self) {
        // The session's end (or a candidate) released the advisory lock; a later leadership
        // takes a new token.
        self.locked = false;
        self.token = None;
    }

    async fn resign(&mut self) {
        // The lease row and the session's locks are handed back by the worker's release.
    }

    fn external(&self) -> bool {
        false
    }
}
