//! The database access of the relay: what [`Core`](super::Core) asks of a database, as one
//! small trait that each database implements with its own SQL. The semantics are the relay's
//! (see the crate docs): an implementation claims due keys' heads without waiting on other
//! claimers, leases the heads only, counts attempts and computes backoffs on the database
//! clock, and settles only keys whose heads it still leases.

use std::time::Duration;

use uuid::Uuid;

use crate::{OutboxError, OutboxMessage};

/// Which keys a claim looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClaimScope {
    /// Every key with an unsent message: a walk of the keys, least sent (about oldest head)
    /// first, that stops once it has locked `key_limit` heads.
    Due,
    /// Only these keys (a relay following up the keys whose full runs it just sent): one head
    /// lookup per key instead of a walk of all of them. Locking and eligibility are as for
    /// [`Due`](Self::Due), so another relay's claim of one of them is arbitrated the same way.
    Keys(Vec<String>),
}

/// What one claim asks for.
#[derive(Debug, Clone)]
pub(crate) struct ClaimRequest {
    /// The keys it looks at.
    pub(crate) scope: ClaimScope,
    /// Most keys to lock.
    pub(crate) key_limit: usize,
    /// Most messages of one key.
    pub(crate) max_per_key: usize,
    /// Most messages in all.
    pub(crate) batch_size: usize,
    /// The lease owner (the relay's id).
    pub(crate) owner: Uuid,
    /// How long the heads are leased, from the database's now.
    pub(crate) lease: Duration,
}

/// One claimed message, with its key's head (the row whose lease holds the key) and whether
/// its destination's backoff has just ended (the relay probes it with one publish first).
#[derive(Debug)]
pub(crate) struct ClaimedRow {
    pub(crate) message: OutboxMessage,
    pub(crate) head: i64,
    pub(crate) probe: bool,
}

/// A claim's result: the messages in outbox order, and how many keys' heads were locked.
#[derive(Debug, Default)]
pub(crate) struct Claimed {
    pub(crate) rows: Vec<ClaimedRow>,
    pub(crate) keys_locked: usize,
}

/// The rows of one settle: each message, its key's head, its outcome code (`s` sent, `f`
/// failed, `p` permanently failed, `r` handed back untried, `u`/`m` handed back because the
/// destination is unavailable/missing), its error, its destination, its key, and its attempt number as
/// claimed (the attempts counted once this settle is done, for `s`, `f` and `p`).
#[derive(Debug, Default)]
pub(crate) struct Settlement<'m> {
    pub(crate) sequences: Vec<i64>,
    pub(crate) heads: Vec<i64>,
    pub(crate) codes: Vec<&'static str>,
    pub(crate) errors: Vec<Option<String>>,
    pub(crate) destinations: Vec<&'m str>,
    pub(crate) keys: Vec<&'m str>,
    pub(crate) attempts: Vec<u32>,
}

/// Settings of a settle: the retry policy and the destination backoff.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SettleParams {
    pub(crate) owner: Uuid,
    pub(crate) max_attempts: u32,
    pub(crate) initial_backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) destination_initial: Duration,
    pub(crate) destination_max: Duration,
    /// Whether sent messages are kept (marked sent, deleted by the cleanup after the
    /// retention) or deleted at once (a retention of zero).
    pub(crate) keep_sent: bool,
}

/// What a settle did to one message whose key was still held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settled {
    /// `sent`, `dead` or `pending`.
    pub(crate) state: String,
    pub(crate) destination: String,
    /// The outcome code reported for it.
    pub(crate) outcome: String,
}

/// The relay's database. Async methods in the crate's idiom; one implementation per database.
pub(crate) trait RelayDb: Send + Sync + 'static {
    /// In one transaction: locks up to `key_limit` due keys' heads of the request's scope,
    /// oldest head (or least sent key) first (skipping heads locked by
    /// another claim, leased or delayed heads, dead heads and keys whose head goes to a
    /// backed-off destination), then per key the run of eligible messages from the head on,
    /// leasing the heads and counting their attempts.
    fn claim(
        &self,
        request: ClaimRequest,
    ) -> impl Future<Output = Result<Claimed, OutboxError>> + Send;

    /// Extends the leases of these heads still held by `owner`; returns those it extended.
    fn renew(
        &self,
        heads: &[i64],
        owner: Uuid,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<i64>, OutboxError>> + Send;

    /// Hands back every pending message leased by `owner` (its attempt given back).
    fn release_all(&self, owner: Uuid) -> impl Future<Output = Result<u64, OutboxError>> + Send;

    /// Marks the messages of the keys whose heads `owner` still leases, backs destinations off
    /// or ends their backoff; returns what happened to each message it marked.
    fn settle(
        &self,
        rows: Settlement<'_>,
        params: SettleParams,
    ) -> impl Future<Output = Result<Vec<Settled>, OutboxError>> + Send;

    /// Deletes at most `batch` sent messages older than `retention` on the database clock.
    fn cleanup_batch(
        &self,
        retention: Duration,
        batch: usize,
    ) -> impl Future<Output = Result<u64, OutboxError>> + Send;

    /// Forgets backed-off destinations without pending messages.
    fn forget_destinations(&self) -> impl Future<Output = Result<u64, OutboxError>> + Send;

    /// Forgets the rows of keys left without unsent messages, at most `batch` per statement, on
    /// databases that keep a row per key (PostgreSQL); returns how many.
    fn forget_keys(&self, batch: usize) -> impl Future<Output = Result<u64, OutboxError>> + Send {
        let _ = batch;
        async { Ok(0) }
    }

    /// The pending count and the oldest pending message's age in seconds.
    fn stats(&self) -> impl Future<Output = Result<(u64, f64), OutboxError>> + Send;
}
