//! Claiming: one transaction picks due keys' heads (skipping leased keys and backed-off
//! destinations), then leases up to `max_per_key` messages of each, as a [`Batch`].

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio_postgres::Row;
use tokio_postgres::types::Type;
use tracing::{debug, instrument};

use super::{Relay, to_i64};
use crate::error::db;
use crate::message::headers_from_json;
use crate::{OutboxError, OutboxMessage, Sink};

/// A claimed batch: its messages in outbox order, and for each the sequence of its key's head
/// (the one row whose lease holds the key).
pub(super) struct Batch {
    pub(super) messages: Vec<OutboxMessage>,
    pub(super) heads: Vec<i64>,
    /// Whether the claim locked as many heads as it asked for: more keys may be due.
    pub(super) more: bool,
    /// When the claim was sent: the lease runs from a database instant after this one.
    pub(super) leased_at: Instant,
    /// Destinations whose backoff has just ended: one publish probes each first.
    pub(super) probes: HashSet<String>,
}

impl<S: Sink> Relay<S> {
    #[instrument(skip_all)]
    pub(super) async fn claim(&self) -> Result<Batch, OutboxError> {
        let t = &self.tables;
        let leased_at = Instant::now();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let batch_size = self.options.batch_size;
        let key_limit = batch_size.div_ceil(self.run_length.load(Ordering::Relaxed).max(1));
        let statements = self.options.statements;
        let keys: Vec<String> = statements
            .query(&tx, &t.claim_keys, &[(&to_i64(key_limit), Type::INT8)])
            .await
            .map_err(db)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if keys.is_empty() {
            tx.commit().await.map_err(db)?;
            return Ok(Batch {
                messages: Vec::new(),
                heads: Vec::new(),
                more: false,
                leased_at,
                probes: HashSet::new(),
            });
        }
        let lease_ms = self.options.lease.as_secs_f64() * 1000.0;
        let rows = statements
            .query(
                &tx,
                &t.claim_rows,
                &[
                    (&keys, Type::TEXT_ARRAY),
                    (&to_i64(self.options.max_per_key), Type::INT8),
                    (&to_i64(batch_size), Type::INT8),
                    (&self.id, Type::UUID),
                    (&lease_ms, Type::FLOAT8),
                ],
            )
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        // In outbox order (the statement sorts), so each key's messages are in order.
        let messages: Vec<OutboxMessage> = rows.iter().map(message).collect();
        let heads: Vec<i64> = rows.iter().map(|r| r.get(9)).collect();
        let probes: HashSet<String> = rows
            .iter()
            .zip(&messages)
            .filter(|(r, _)| r.get::<_, bool>(10))
            .map(|(_, m)| m.destination.clone())
            .collect();
        let taken = heads.iter().collect::<HashSet<_>>().len();
        self.in_flight_messages
            .fetch_add(messages.len(), Ordering::Relaxed);
        if let Some(run) = messages.len().checked_div(taken) {
            self.run_length.store(run, Ordering::Relaxed);
        }
        debug!(keys = taken, messages = messages.len(), "claimed");
        Ok(Batch {
            messages,
            heads,
            more: keys.len() >= key_limit,
            leased_at,
            probes,
        })
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
