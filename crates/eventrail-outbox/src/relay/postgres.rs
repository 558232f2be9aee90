//! The relay's database access on PostgreSQL: the statements of [`Tables`], sent on the
//! relay's pool as [`Statements`] says.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use eventrail_store_postgres::{ConnectError, Statements, to_sql_int as to_i64};
use tokio_postgres::Row;
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::{
    ClaimRequest, ClaimScope, Claimed, ClaimedRow, RelayDb, SettleParams, Settled, Settlement,
};
use crate::error::db;
use crate::message::headers_from_json;
use crate::tables::Tables;
use crate::{OutboxError, OutboxMessage};

/// The relay's pool and statements on PostgreSQL.
pub(crate) struct PgRelayDb {
    pub(crate) pool: Pool,
    pub(crate) tables: Arc<Tables>,
    pub(crate) statements: Statements,
}

/// Turns JIT compilation off until the transaction ends.
const NO_JIT: &str = "SET LOCAL jit = off";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl PgRelayDb {
    /// A pooled connection; a pool timeout is a typed [`ConnectError`].
    async fn client(&self) -> Result<deadpool_postgres::Object, OutboxError> {
        self.pool
            .get()
            .await
            .map_err(|e| OutboxError::Connect(ConnectError::from_pool(e, &self.pool)))
    }
}

impl RelayDb for PgRelayDb {
    async fn claim(&self, request: ClaimRequest) -> Result<Claimed, OutboxError> {
        let t = &self.tables;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let key_limit = to_i64(request.key_limit);
        // A claim of a few thousand keys is planned as costly enough for JIT compilation, which
        // takes longer than the statements themselves (hundreds of milliseconds against tens):
        // the claim's statements run without it. Sent ahead of the first statement, in the same
        // flight (tokio-postgres pipelines requests polled together): no round trip of its own.
        let (no_jit, locked) = tokio::join!(tx.batch_execute(NO_JIT), async {
            match &request.scope {
                ClaimScope::Due => {
                    self.statements
                        .query(&tx, &t.claim_keys, &[(&key_limit, Type::INT8)])
                        .await
                }
                ClaimScope::Keys(keys) => {
                    self.statements
                        .query(
                            &tx,
                            &t.claim_named_keys,
                            &[(keys, Type::TEXT_ARRAY), (&key_limit, Type::INT8)],
                        )
                        .await
                }
            }
        });
        no_jit.map_err(db)?;
        let keys: Vec<String> = locked.map_err(db)?.iter().map(|r| r.get(0)).collect();
        if keys.is_empty() {
            tx.commit().await.map_err(db)?;
            return Ok(Claimed::default());
        }
        let lease_ms = ms(request.lease);
        let rows = self
            .statements
            .query(
                &tx,
                &t.claim_rows,
                &[
                    (&keys, Type::TEXT_ARRAY),
                    (&to_i64(request.max_per_key), Type::INT8),
                    (&to_i64(request.batch_size), Type::INT8),
                    (&request.owner, Type::UUID),
                    (&lease_ms, Type::FLOAT8),
                ],
            )
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        let mut rows: Vec<ClaimedRow> = rows
            .iter()
            .map(|r| ClaimedRow {
                message: message(r),
                head: r.get(9),
                probe: r.get(10),
            })
            .collect();
        // In outbox order, so that each key's messages are in order.
        rows.sort_unstable_by_key(|r| r.message.sequence);
        Ok(Claimed {
            rows,
            keys_locked: keys.len(),
        })
    }

    async fn renew(
        &self,
        heads: &[i64],
        owner: Uuid,
        lease: Duration,
    ) -> Result<Vec<i64>, OutboxError> {
        let client = self.client().await?;
        let rows = self
            .statements
            .query(
                &*client,
                &self.tables.renew,
                &[
                    (&heads, Type::INT8_ARRAY),
                    (&owner, Type::UUID),
                    (&ms(lease), Type::FLOAT8),
                ],
            )
            .await
            .map_err(db)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn release_all(&self, owner: Uuid) -> Result<u64, OutboxError> {
        let client = self.client().await?;
        client
            .execute_typed(&self.tables.release_all, &[(&owner, Type::UUID)])
            .await
            .map_err(db)
    }

    async fn settle(
        &self,
        rows: Settlement<'_>,
        params: SettleParams,
    ) -> Result<Vec<Settled>, OutboxError> {
        let split = SentRuns::split(&rows);
        let max_attempts = i32::try_from(params.max_attempts).unwrap_or(i32::MAX);
        let client = self.client().await?;
        let rows = self
            .statements
            .query(
                &*client,
                &self.tables.settle,
                &[
                    (&split.others.sequences, Type::INT8_ARRAY),
                    (&split.others.codes, Type::TEXT_ARRAY),
                    (&split.others.errors, Type::TEXT_ARRAY),
                    (&max_attempts, Type::INT4),
                    (&ms(params.initial_backoff), Type::FLOAT8),
                    (&ms(params.max_backoff), Type::FLOAT8),
                    (&params.owner, Type::UUID),
                    (&split.others.heads, Type::INT8_ARRAY),
                    (&split.others.destinations, Type::TEXT_ARRAY),
                    (&ms(params.destination_initial), Type::FLOAT8),
                    (&ms(params.destination_max), Type::FLOAT8),
                    (&params.keep_sent, Type::BOOL),
                    (&split.runs.keys, Type::TEXT_ARRAY),
                    (&split.runs.heads, Type::INT8_ARRAY),
                    (&split.runs.lasts, Type::INT8_ARRAY),
                    (&split.runs.counts, Type::INT8_ARRAY),
                    (&split.answered, Type::TEXT_ARRAY),
                    (&split.others.keys, Type::TEXT_ARRAY),
                ],
            )
            .await
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| Settled {
                state: r.get(0),
                destination: r.get(1),
                outcome: r.get(2),
            })
            .collect())
    }

    async fn cleanup_batch(&self, retention: Duration, batch: usize) -> Result<u64, OutboxError> {
        let client = self.client().await?;
        self.statements
            .execute(
                &*client,
                &self.tables.cleanup,
                &[(&ms(retention), Type::FLOAT8), (&to_i64(batch), Type::INT8)],
            )
            .await
            .map_err(db)
    }

    async fn forget_destinations(&self) -> Result<u64, OutboxError> {
        let client = self.client().await?;
        client
            .execute_typed(&self.tables.forget_destinations, &[])
            .await
            .map_err(db)
    }

    async fn forget_keys(&self, batch: usize) -> Result<u64, OutboxError> {
        let mut client = self.client().await?;
        let limit = to_i64(batch);
        let mut total = 0;
        // Bounded: a key that got a message between the two statements stays, and the next
        // round's first statement no longer finds it idle.
        for _ in 0..100 {
            // Two statements: the second's snapshot is taken once the first holds the keys'
            // enqueue locks, so it sees every enqueue of them that committed.
            let tx = client.transaction().await.map_err(db)?;
            let keys: Vec<String> = tx
                .query_typed(&self.tables.idle_keys, &[(&limit, Type::INT8)])
                .await
                .map_err(db)?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if keys.is_empty() {
                tx.commit().await.map_err(db)?;
                break;
            }
            total += tx
                .execute_typed(&self.tables.forget_keys, &[(&keys, Type::TEXT_ARRAY)])
                .await
                .map_err(db)?;
            tx.commit().await.map_err(db)?;
            if keys.len() < batch {
                break;
            }
        }
        Ok(total)
    }

    async fn stats(&self) -> Result<(u64, f64), OutboxError> {
        let mut client = self.client().await?;
        // One index range per key: with a few thousand keys, dear enough for JIT (see `claim`).
        let tx = client.transaction().await.map_err(db)?;
        let (no_jit, row) = tokio::join!(
            tx.batch_execute(NO_JIT),
            tx.query_typed_one(&self.tables.stats, &[])
        );
        no_jit.map_err(db)?;
        let row = row.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok((
            eventrail_store_postgres::from_sql_int(row.get(0)),
            row.get(1),
        ))
    }
}

/// The messages settled other than sent, one row each.
#[derive(Default)]
struct Others<'m> {
    sequences: Vec<i64>,
    codes: Vec<&'static str>,
    errors: Vec<Option<String>>,
    heads: Vec<i64>,
    destinations: Vec<&'m str>,
    keys: Vec<&'m str>,
}

/// Per key, the run of messages sent from its head on: the head, the last one sent, how many.
#[derive(Default)]
struct Runs<'m> {
    keys: Vec<&'m str>,
    heads: Vec<i64>,
    lasts: Vec<i64>,
    counts: Vec<i64>,
}

/// A settlement as the PostgreSQL settle takes it: a key's sent messages are a prefix of its
/// run, so they go as one row per key (the statement moves the key's progress, it writes no
/// message), the others one row each; plus the destinations that answered (sent, or failed a
/// message), whose backoff ends.
struct SentRuns<'m> {
    others: Others<'m>,
    runs: Runs<'m>,
    answered: Vec<&'m str>,
}

impl<'m> SentRuns<'m> {
    fn split(rows: &Settlement<'m>) -> Self {
        let mut others = Others::default();
        let mut runs = Runs::default();
        let mut answered: Vec<&'m str> = Vec::new();
        let mut run_of: std::collections::HashMap<&'m str, usize> =
            std::collections::HashMap::new();
        for i in 0..rows.sequences.len() {
            let (code, destination) = (rows.codes[i], rows.destinations[i]);
            if matches!(code, "s" | "f" | "p") && !answered.contains(&destination) {
                answered.push(destination);
            }
            if code == "s" {
                let key = rows.keys[i];
                let r = *run_of.entry(key).or_insert_with(|| {
                    runs.keys.push(key);
                    runs.heads.push(rows.heads[i]);
                    runs.lasts.push(rows.sequences[i]);
                    runs.counts.push(0);
                    runs.keys.len() - 1
                });
                runs.lasts[r] = runs.lasts[r].max(rows.sequences[i]);
                runs.counts[r] += 1;
            } else {
                others.sequences.push(rows.sequences[i]);
                others.codes.push(code);
                others.errors.push(rows.errors[i].clone());
                others.heads.push(rows.heads[i]);
                others.destinations.push(destination);
                others.keys.push(rows.keys[i]);
            }
        }
        Self {
            others,
            runs,
            answered,
        }
    }
}

fn message(row: &Row) -> OutboxMessage {
    OutboxMessage {
        sequence: row.get(0),
        id: row.get(1),
        partition_key: row.get(2),
        destination: row.get(3),
        headers: headers_from_json(&row.get::<_, serde_json::Value>(4)),
        payload: row.get(5),
        content_type: row.get(6),
        created_at: row.get(7),
        attempts: u32::try_from(row.get::<_, i32>(8)).unwrap_or_default(),
    }
}
