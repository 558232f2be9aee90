//! The relay on MySQL/MariaDB: [`MySqlRelay`], the shared relay machinery over
//! [`MySqlRelayDb`], whose statements are [`MySqlTables`]'.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mysql_async::prelude::Queryable;
use mysql_async::{IsolationLevel, Pool, Row, TxOpts};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::error::db;
use super::tables::MySqlTables;
use crate::message::headers_from_json;
use crate::relay::{
    ClaimRequest, ClaimScope, Claimed, ClaimedRow, Core, CycleReport, RelayDb, SettleParams,
    Settled, Settlement,
};
use crate::{OutboxError, OutboxMessage, OutboxOptions, Sink};

/// Delivers a MySQL/MariaDB outbox to a [`Sink`], with the semantics of
/// [`Relay`](crate::Relay) (the same loop runs over MySQL's statements): claims of due keys'
/// heads with `FOR UPDATE SKIP LOCKED` under READ COMMITTED, leases renewed while a batch
/// publishes, per-key order, retries with exponential backoff and jitter on the database clock,
/// dead letters, destinations backed off as a whole, and cleanup in bounded batches.
///
/// MySQL has no LISTEN: the relay polls every
/// [`poll_interval`](OutboxOptions::poll_interval) when idle (the options' wakeup is ignored).
pub struct MySqlRelay<S> {
    core: Core<S, MySqlRelayDb>,
}

impl<S> fmt::Debug for MySqlRelay<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlRelay")
            .field("id", &self.core.id)
            .field("options", &self.core.options)
            .finish_non_exhaustive()
    }
}

impl<S: Sink> MySqlRelay<S> {
    /// A relay of the outbox in `pool`'s database to `sink` (tables named as for
    /// [`MySqlOutbox::new`](crate::MySqlOutbox::new)). Nothing connects yet.
    ///
    /// # Errors
    /// [`OutboxError::Config`] for a refused table name.
    pub fn new(pool: Pool, sink: S, options: OutboxOptions) -> Result<Self, OutboxError> {
        let db = MySqlRelayDb {
            tables: Arc::new(MySqlTables::new(&options.tables)?),
            pool,
        };
        Ok(Self {
            core: Core::new(db, sink, options),
        })
    }

    /// This relay's id (the lease owner of the messages it holds).
    #[must_use]
    pub fn id(&self) -> Uuid {
        self.core.id
    }

    /// The sink.
    pub fn sink(&self) -> &S {
        &self.core.sink
    }

    /// Relays until `shutdown` is cancelled, then stops claiming, lets in-flight publishes
    /// finish within the shutdown timeout, hands back the rest and releases its leases; as
    /// [`Relay::run`](crate::Relay::run).
    ///
    /// # Errors
    /// [`OutboxError::Database`] when the leases cannot be released at shutdown (they expire).
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), OutboxError> {
        // Nothing sends hints: the loop wakes on settles and the poll interval.
        self.core.run(&shutdown, &Notify::new()).await
    }

    /// One cycle: claim a batch, publish it, settle it; as
    /// [`Relay::relay_once`](crate::Relay::relay_once).
    ///
    /// # Errors
    /// [`OutboxError::Database`]: the claim failed (nothing was published), or the settle
    /// failed (the batch's leases expire and it is published again).
    pub async fn relay_once(&self) -> Result<CycleReport, OutboxError> {
        self.core.relay_once().await
    }

    /// Deletes sent messages past the retention (on the database clock at each statement, so
    /// the cut-off slides) in statements of at most the cleanup batch size, and forgets
    /// backed-off destinations without pending messages. Returns how many messages were
    /// deleted.
    ///
    /// # Errors
    /// [`OutboxError::Database`].
    pub async fn cleanup(&self) -> Result<u64, OutboxError> {
        self.core.cleanup().await
    }
}

/// The relay's pool and statements on MySQL/MariaDB.
pub(crate) struct MySqlRelayDb {
    pool: Pool,
    tables: Arc<MySqlTables>,
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// A list passed as one JSON parameter (read back by `JSON_TABLE`).
fn json(value: impl Into<serde_json::Value>) -> String {
    value.into().to_string()
}

fn owner_bytes(owner: Uuid) -> Vec<u8> {
    owner.as_bytes().to_vec()
}

/// Claims and settles run at READ COMMITTED: each statement sees the latest commits, which
/// the claim's argument needs (as on PostgreSQL).
fn read_committed() -> TxOpts {
    let mut opts = TxOpts::default();
    opts.with_isolation_level(IsolationLevel::ReadCommitted);
    opts
}

impl MySqlRelayDb {
    async fn conn(&self) -> Result<mysql_async::Conn, OutboxError> {
        self.pool.get_conn().await.map_err(db)
    }
}

impl RelayDb for MySqlRelayDb {
    async fn claim(&self, request: ClaimRequest) -> Result<Claimed, OutboxError> {
        let t = &self.tables;
        let mut conn = self.conn().await?;
        let mut tx = conn.start_transaction(read_committed()).await.map_err(db)?;
        let heads: Vec<i64> = match &request.scope {
            ClaimScope::Due => tx.query(&t.heads).await,
            ClaimScope::Keys(keys) => tx.exec(&t.heads_of_keys, (json(keys.as_slice()),)).await,
        }
        .map_err(db)?;
        if heads.is_empty() {
            tx.commit().await.map_err(db)?;
            return Ok(Claimed::default());
        }
        let locked: Vec<(i64, String)> = tx
            .exec(
                &t.lock_heads,
                (
                    json(heads.as_slice()),
                    i64::try_from(request.key_limit).unwrap_or(i64::MAX),
                ),
            )
            .await
            .map_err(db)?;
        if locked.is_empty() {
            tx.commit().await.map_err(db)?;
            return Ok(Claimed::default());
        }
        let keys: Vec<&str> = locked.iter().map(|(_, k)| k.as_str()).collect();
        let rows: Vec<Row> = tx
            .exec(
                &t.runs,
                (
                    json(keys.as_slice()),
                    i64::try_from(request.max_per_key).unwrap_or(i64::MAX),
                ),
            )
            .await
            .map_err(db)?;
        // Each key's run: from its head, while eligible, up to `max_per_key` (the statement's
        // limit); whole keys in head order until `batch_size` messages.
        let head_of: HashMap<&str, i64> = locked.iter().map(|(s, k)| (k.as_str(), *s)).collect();
        let mut runs: HashMap<i64, Vec<ClaimedRow>> = HashMap::new();
        let mut blocked: HashSet<i64> = HashSet::new();
        for mut row in rows {
            let key: String = take(&mut row, 2)?;
            let Some(&head) = head_of.get(key.as_str()) else {
                continue; // another key equal under the server's collation
            };
            let eligible: Option<i64> = take(&mut row, 9)?;
            if blocked.contains(&head) || eligible != Some(1) {
                blocked.insert(head);
                continue;
            }
            let probe: Option<i64> = take(&mut row, 10)?;
            let message = message(&mut row, key)?;
            runs.entry(head).or_default().push(ClaimedRow {
                message,
                head,
                probe: probe == Some(1),
            });
        }
        let mut taken: Vec<ClaimedRow> = Vec::new();
        for (head, _) in &locked {
            let Some(run) = runs.remove(head) else {
                continue; // its head was not eligible after all: not leased, not claimed
            };
            // The run starts at its head: a key whose first row is not the locked head (it was
            // sent meanwhile) is not claimed.
            if run.first().map(|r| r.message.sequence) != Some(*head) {
                continue;
            }
            let room = request.batch_size.saturating_sub(taken.len());
            if room == 0 {
                break;
            }
            taken.extend(run.into_iter().take(room));
        }
        let leased: BTreeSet<i64> = taken.iter().map(|r| r.head).collect();
        if !leased.is_empty() {
            let leased: Vec<i64> = leased.into_iter().collect();
            tx.exec_drop(
                &t.lease,
                (
                    json(leased.as_slice()),
                    owner_bytes(request.owner),
                    micros(request.lease),
                ),
            )
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        // Outbox order, so that each key's messages are in order; the attempt is this one.
        taken.sort_by_key(|r| r.message.sequence);
        for row in &mut taken {
            row.message.attempts += 1;
        }
        Ok(Claimed {
            rows: taken,
            keys_locked: locked.len(),
        })
    }

    async fn renew(
        &self,
        heads: &[i64],
        owner: Uuid,
        lease: Duration,
    ) -> Result<Vec<i64>, OutboxError> {
        let t = &self.tables;
        let mut conn = self.conn().await?;
        let heads = json(heads);
        conn.exec_drop(
            &t.renew,
            (heads.as_str(), micros(lease), owner_bytes(owner)),
        )
        .await
        .map_err(db)?;
        // The rows this relay leases are left alone by the others: what it still leases now
        // is what the update extended.
        conn.exec(&t.renewed, (heads, owner_bytes(owner)))
            .await
            .map_err(db)
    }

    async fn release_all(&self, owner: Uuid) -> Result<u64, OutboxError> {
        let mut conn = self.conn().await?;
        conn.exec_drop(&self.tables.release_all, (owner_bytes(owner),))
            .await
            .map_err(db)?;
        Ok(conn.affected_rows())
    }

    async fn settle(
        &self,
        rows: Settlement<'_>,
        params: SettleParams,
    ) -> Result<Vec<Settled>, OutboxError> {
        let t = &self.tables;
        let mut conn = self.conn().await?;
        let mut tx = conn.start_transaction(read_committed()).await.map_err(db)?;
        let heads: BTreeSet<i64> = rows.heads.iter().copied().collect();
        let heads: Vec<i64> = heads.into_iter().collect();
        let held: HashSet<i64> = tx
            .exec::<i64, _, _>(&t.held, (json(heads.as_slice()), owner_bytes(params.owner)))
            .await
            .map_err(db)?
            .into_iter()
            .collect();
        // Destinations: every report counts (as on PostgreSQL), held keys or not.
        let mut down: Vec<(&str, &str, &str)> = Vec::new();
        let mut answered: BTreeSet<&str> = BTreeSet::new();
        for ((code, destination), error) in
            rows.codes.iter().zip(&rows.destinations).zip(&rows.errors)
        {
            match *code {
                "u" | "m" if !down.iter().any(|(d, _, _)| d == destination) => {
                    let reason = if *code == "m" {
                        "missing"
                    } else {
                        "unavailable"
                    };
                    down.push((destination, reason, error.as_deref().unwrap_or("")));
                }
                "s" | "f" | "p" => {
                    answered.insert(destination);
                }
                _ => {}
            }
        }
        down.sort_unstable();
        let (initial, max) = (
            micros(params.destination_initial),
            micros(params.destination_max),
        );
        for (destination, reason, error) in &down {
            tx.exec_drop(
                &t.down,
                mysql_async::Params::Positional(vec![
                    (*destination).into(),
                    (*reason).into(),
                    max.into(),
                    initial.into(),
                    (*error).into(),
                    (*reason).into(),
                    (*error).into(),
                    max.into(),
                    initial.into(),
                ]),
            )
            .await
            .map_err(db)?;
        }
        let up: Vec<&str> = answered
            .into_iter()
            .filter(|d| !down.iter().any(|(down, _, _)| down == d))
            .collect();
        if !up.is_empty() {
            tx.exec_drop(&t.up, (json(up.as_slice()),))
                .await
                .map_err(db)?;
        }
        // The messages of held keys: their state and attempts follow from the outcome and
        // the attempt number they were claimed with (the head's attempt was counted at the
        // claim, the others' count now; a message handed back gets its attempt back).
        let mut marks = Vec::new();
        let mut gone: Vec<i64> = Vec::new();
        let mut settled = Vec::new();
        for i in 0..rows.sequences.len() {
            if !held.contains(&rows.heads[i]) {
                continue;
            }
            let code = rows.codes[i];
            let claimed = rows.attempts[i];
            let attempts = match code {
                "r" | "u" | "m" => claimed.saturating_sub(1),
                _ => claimed,
            };
            let state = match code {
                "s" => "sent",
                "p" => "dead",
                "f" if attempts >= params.max_attempts => "dead",
                _ => "pending",
            };
            if state == "sent" && !params.keep_sent {
                gone.push(rows.sequences[i]);
            } else {
                marks.push(serde_json::json!({
                "s": rows.sequences[i],
                "o": code,
                "e": rows.errors[i],
                "t": state,
                "a": attempts,
                }));
            }
            settled.push(Settled {
                state: state.to_owned(),
                destination: rows.destinations[i].to_owned(),
                outcome: code.to_owned(),
            });
        }
        if !marks.is_empty() {
            tx.exec_drop(
                &t.mark,
                (
                    json(marks.as_slice()),
                    micros(params.max_backoff),
                    micros(params.initial_backoff),
                ),
            )
            .await
            .map_err(db)?;
        }
        if !gone.is_empty() {
            tx.exec_drop(&t.delete_sent, (json(gone.as_slice()),))
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(settled)
    }

    async fn cleanup_batch(&self, retention: Duration, batch: usize) -> Result<u64, OutboxError> {
        let mut conn = self.conn().await?;
        conn.exec_drop(
            &self.tables.cleanup,
            (micros(retention), i64::try_from(batch).unwrap_or(i64::MAX)),
        )
        .await
        .map_err(db)?;
        Ok(conn.affected_rows())
    }

    async fn forget_destinations(&self) -> Result<u64, OutboxError> {
        let t = &self.tables;
        let mut conn = self.conn().await?;
        conn.query_drop(&t.forget_destinations).await.map_err(db)?;
        let forgotten = conn.affected_rows();
        Ok(forgotten)
    }

    async fn stats(&self) -> Result<(u64, f64), OutboxError> {
        let mut conn = self.conn().await?;
        let row: Option<(i64, f64)> = conn.query_first(&self.tables.stats).await.map_err(db)?;
        let (pending, oldest) = row.unwrap_or_default();
        Ok((pending.unsigned_abs(), oldest))
    }
}

/// Column `i` of `row`, converted.
fn take<T: mysql_async::prelude::FromValue>(row: &mut Row, i: usize) -> Result<T, OutboxError> {
    match row.take_opt::<T, usize>(i) {
        Some(Ok(value)) => Ok(value),
        Some(Err(e)) => Err(db(e)),
        None => Err(db(format!("the claim returned no column {i}"))),
    }
}

/// A claimed row as a message (its attempts as stored; the claim adds this attempt).
fn message(row: &mut Row, partition_key: String) -> Result<OutboxMessage, OutboxError> {
    let id: Vec<u8> = take(row, 1)?;
    let headers: String = take(row, 4)?;
    let created_us: i64 = take(row, 7)?;
    let attempts: i64 = take(row, 8)?;
    Ok(OutboxMessage {
        sequence: take(row, 0)?,
        id: Uuid::from_slice(&id).map_err(db)?,
        partition_key,
        destination: take(row, 3)?,
        headers: headers_from_json(&serde_json::from_str(&headers).unwrap_or_default()),
        payload: take(row, 5)?,
        content_type: take(row, 6)?,
        created_at: SystemTime::UNIX_EPOCH
            + Duration::from_micros(u64::try_from(created_us).unwrap_or_default()),
        attempts: u32::try_from(attempts).unwrap_or_default(),
    })
}
