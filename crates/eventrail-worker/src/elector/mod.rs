//! Leader election: one interface, [`Elector`], that every mode implements, and the fencing
//! token that makes a deposed leader harmless.
//!
//! # Modes
//!
//! - PostgreSQL advisory lock (the default) and PostgreSQL lease row ([`postgres`]): the
//!   database is the only coordination service.
//! - etcd (feature `etcd`): a lease owned and kept alive by the worker, and a compare-and-create
//!   of one leader key attached to it. The token is the leader key's create revision.
//! - ZooKeeper (feature `zookeeper`): one ephemeral sequential node per candidate under a
//!   parent node; the lowest number leads. The token is that number.
//!
//! # The fencing token, and why it only grows
//!
//! No elector can stop a leader that is paused (SIGSTOP, a long GC, a swapped-out VM) from
//! waking up and writing after another worker has been elected: it cannot know it was deposed
//! until it asks. So every leader gets a *token* with its leadership, and every assignment
//! write carries it. The worker table `worker_leader` keeps the highest token that has written
//! (`fencing_token`); a leader's rebalance, in its own transaction and after locking the
//! assignment rows, raises it to its token or finds it higher and writes nothing. A trigger on
//! `consumer_assignments` refuses (SQLSTATE `ERF01`) any write whose `leader_token` is below
//! the stored one, whoever sends it. A deposed leader's late writes are therefore refused in the
//! same transaction, as soon as its successor has written once.
//!
//! That rule is sound only because every new leader's token is greater than every earlier
//! leader's:
//! - etcd: revisions are one global counter that never goes back. A leader key is created only
//!   when none exists, so its create revision is greater than that of every earlier leader key
//!   (which had to be deleted, at a later revision, first).
//! - ZooKeeper: sequence numbers of a parent's children are handed out by one counter that never
//!   goes back, and the lowest live node leads. When a leader's node goes, the next lowest is
//!   greater; a node created later is greater than every node before it.
//! - PostgreSQL: a new leader takes `fencing_token + 1` in the statement that makes it leader
//!   (under the advisory lock, or in the lease row's update).
//!
//! The stored token is never lowered by the workers. If the coordination service loses its data
//! (a wiped etcd, a re-created parent node) its counters start again below the stored token and
//! every leader is refused: the worker logs it, and an operator resets the fence
//! (`UPDATE worker_leader SET fencing_token = 0`) once the old fleet is gone. All workers of a
//! schema must use the same mode: tokens of different modes are not comparable.
//!
//! # Suspension
//!
//! The external electors hand out leadership with a deadline: etcd's holds while the lease's
//! keep-alives are answered (a keep-alive unanswered for a third of the session timeout, or a
//! broken stream, suspends it at once, long before the lease expires on the server);
//! ZooKeeper's holds while the session is connected (a `Disconnected` state suspends it at once,
//! not only `Expired`). A rebalance checks the grant just before it commits and is abandoned the
//! moment the elector reports a loss, so a suspended leader stops writing assignments at once;
//! the fence covers the rest.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_postgres::Transaction;

use crate::WorkerError;
use crate::runtime::{Session, Shared};

#[cfg(feature = "etcd")]
mod etcd;
pub(crate) mod postgres;
#[cfg(feature = "zookeeper")]
mod zookeeper;

#[cfg(feature = "etcd")]
pub use etcd::EtcdElection;
#[cfg(feature = "zookeeper")]
pub use zookeeper::ZooKeeperElection;

/// What an elector lends the worker while it leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grant {
    /// The fencing token: greater than every earlier leader's.
    pub(crate) token: i64,
    /// Leadership holds until then at most (`None`: until the elector says otherwise).
    pub(crate) valid_until: Option<Instant>,
}

impl Grant {
    /// Whether the grant still holds now.
    pub(crate) fn holds(&self) -> bool {
        self.valid_until.is_none_or(|t| Instant::now() < t)
    }
}

/// Whether a leader still leads, checked in its rebalance transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// It still leads with this token.
    Leads,
    /// It does not (deposed, suspended, or another token).
    Deposed,
    /// The check waited for a row another transaction holds: try at the next tick.
    Busy,
}

/// What the worker needs from every leader election mode.
///
/// Implemented by the PostgreSQL modes ([`postgres::PgElector`]) and by [`External`] (etcd,
/// ZooKeeper: a task of their own campaigns and reports through a watch channel). The worker
/// holds one as an [`AnyElector`] (static dispatch: the futures must stay `Send`).
pub(crate) trait Elector {
    /// Takes part in the election once (every tick of the worker): the grant while this worker
    /// leads, `None` otherwise.
    async fn campaign(&mut self, cx: &Context<'_>) -> Result<Option<Grant>, WorkerError>;

    /// Inside the rebalance transaction, after the assignment rows are locked: whether this
    /// worker still leads with `grant`.
    async fn still_leads(
        &self,
        tx: &Transaction<'_>,
        cx: &Context<'_>,
        grant: Grant,
    ) -> Result<Check, WorkerError>;

    /// Resolves as soon as leadership under `grant` is suspended or lost (never, for an elector
    /// whose check in the transaction is enough).
    async fn lost(&self, grant: Grant);

    /// Resolves when the elector's state changed (to wake the worker's loop at once).
    async fn changed(&mut self);

    /// Leadership was found lost: the worker's session connection ended, or the check in a
    /// rebalance said deposed. The next campaign starts afresh.
    fn forget(&mut self);

    /// Hands leadership back (shutdown): the next leader need not wait for a timeout.
    async fn resign(&mut self);

    /// Whether leadership lives outside PostgreSQL: the leader then records itself in the
    /// `worker_leader` row for `eventrail status`.
    fn external(&self) -> bool;
}

/// What an elector may use of the worker.
pub(crate) struct Context<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) session: &'a Session,
}

/// An elector of an external coordination service: a task campaigns and publishes the grant.
#[derive(Debug)]
pub(crate) struct External {
    state: watch::Receiver<Option<Grant>>,
    stop: tokio_util::sync::CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl External {
    /// Spawns `run(state, stop)`, a campaign task that publishes its grant on `state` and ends
    /// (handing leadership back) when `stop` is cancelled.
    #[cfg_attr(
        not(any(feature = "etcd", feature = "zookeeper")),
        expect(dead_code, reason = "built only with an external elector's feature")
    )]
    pub(crate) fn spawn<F, Fut>(span: tracing::Span, run: F) -> Self
    where
        F: FnOnce(watch::Sender<Option<Grant>>, tokio_util::sync::CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        use tracing::Instrument;
        let (state, receiver) = watch::channel(None);
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(run(state, stop.clone()).instrument(span));
        Self {
            state: receiver,
            stop,
            task: Some(task),
        }
    }
}

/// After an external elector's session failed (leadership is suspended meanwhile): logs it and
/// waits the reconnect backoff. Returns whether `stop` was cancelled during the wait.
#[cfg_attr(
    not(any(feature = "etcd", feature = "zookeeper")),
    expect(dead_code, reason = "built only with an external elector's feature")
)]
pub(crate) async fn back_off(
    error: &WorkerError,
    failures: &mut u32,
    options: &crate::WorkerOptions,
    stop: &tokio_util::sync::CancellationToken,
) -> bool {
    *failures = failures.saturating_add(1);
    let wait = crate::runtime::reconnect_backoff(options, *failures);
    tracing::warn!(error = %crate::error::chain(error), failures = *failures, retry_in = ?wait, "leader election interrupted: leadership suspended");
    crate::runtime::sleep_or_cancel(wait, stop).await
}

impl Elector for External {
    async fn campaign(&mut self, _cx: &Context<'_>) -> Result<Option<Grant>, WorkerError> {
        Ok((*self.state.borrow_and_update()).filter(Grant::holds))
    }

    async fn still_leads(
        &self,
        _tx: &Transaction<'_>,
        _cx: &Context<'_>,
        grant: Grant,
    ) -> Result<Check, WorkerError> {
        let now = *self.state.borrow();
        Ok(
            if now.is_some_and(|g| g.token == grant.token && g.holds()) {
                Check::Leads
            } else {
                Check::Deposed
            },
        )
    }

    async fn lost(&self, grant: Grant) {
        let mut state = self.state.clone();
        loop {
            let current = *state.borrow_and_update();
            let Some(current) = current.filter(|g| g.token == grant.token) else {
                return;
            };
            let expiry = current
                .valid_until
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                () = tokio::time::sleep_until(expiry) => return,
                changed = state.changed() => if changed.is_err() { return },
            }
        }
    }

    async fn changed(&mut self) {
        if self.state.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    fn forget(&mut self) {}

    async fn resign(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    fn external(&self) -> bool {
        true
    }
}

impl Drop for External {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The elector a worker runs with, chosen by its [`LeaderMode`](crate::LeaderMode).
pub(crate) enum AnyElector {
    /// Advisory lock or lease row.
    Postgres(postgres::PgElector),
    /// etcd or ZooKeeper.
    #[cfg_attr(
        not(any(feature = "etcd", feature = "zookeeper")),
        expect(dead_code, reason = "built only with an external elector's feature")
    )]
    External(External),
}

impl AnyElector {
    /// Starts the elector of the worker's options (an external one starts campaigning at once).
    ///
    /// # Errors
    /// [`WorkerError::InvalidElection`] for settings that can never work.
    pub(crate) fn start(shared: &Shared) -> Result<Self, WorkerError> {
        use crate::LeaderMode;
        match &shared.options.leader_mode {
            LeaderMode::AdvisoryLock | LeaderMode::Lease => {
                Ok(Self::Postgres(postgres::PgElector::default()))
            }
            #[cfg(feature = "etcd")]
            LeaderMode::Etcd(settings) => Ok(Self::External(etcd::start(shared, settings)?)),
            #[cfg(feature = "zookeeper")]
            LeaderMode::ZooKeeper(settings) => {
                Ok(Self::External(zookeeper::start(shared, settings)?))
            }
        }
    }

    pub(crate) async fn campaign(
        &mut self,
        cx: &Context<'_>,
    ) -> Result<Option<Grant>, WorkerError> {
        match self {
            Self::Postgres(e) => e.campaign(cx).await,
            Self::External(e) => e.campaign(cx).await,
        }
    }

    pub(crate) async fn still_leads(
        &self,
        tx: &Transaction<'_>,
        cx: &Context<'_>,
        grant: Grant,
    ) -> Result<Check, WorkerError> {
        match self {
            Self::Postgres(e) => e.still_leads(tx, cx, grant).await,
            Self::External(e) => e.still_leads(tx, cx, grant).await,
        }
    }

    pub(crate) async fn lost(&self, grant: Grant) {
        match self {
            Self::Postgres(e) => e.lost(grant).await,
            Self::External(e) => e.lost(grant).await,
        }
    }

    pub(crate) async fn changed(&mut self) {
        match self {
            Self::Postgres(e) => e.changed().await,
            Self::External(e) => e.changed().await,
        }
    }

    pub(crate) fn forget(&mut self) {
        match self {
            Self::Postgres(e) => e.forget(),
            Self::External(e) => e.forget(),
        }
    }

    pub(crate) async fn resign(&mut self) {
        match self {
            Self::Postgres(e) => e.resign().await,
            Self::External(e) => e.resign().await,
        }
    }

    pub(crate) fn external(&self) -> bool {
        match self {
            Self::Postgres(e) => e.external(),
            Self::External(e) => e.external(),
        }
    }
}

/// The default key prefix (etcd) or parent path (ZooKeeper) of a worker fleet: namespaced by the
/// store's schema, so that fleets of two schemas never share a leader.
#[cfg_attr(
    not(any(feature = "etcd", feature = "zookeeper")),
    expect(dead_code, reason = "built only with an external elector's feature")
)]
pub(crate) fn default_prefix(shared: &Shared) -> String {
    format!("/eventrail/{}/worker", shared.store.options().schema_name())
}

/// Checks a key prefix or parent path: absolute, no empty or relative components.
#[cfg_attr(
    not(any(feature = "etcd", feature = "zookeeper", test)),
    expect(dead_code, reason = "built only with an external elector's feature")
)]
pub(crate) fn check_prefix(prefix: &str) -> Result<String, WorkerError> {
    let trimmed = prefix.trim_end_matches('/');
    let ok = trimmed.starts_with('/')
        && trimmed
            .split('/')
            .skip(1)
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.chars().any(char::is_control));
    if ok {
        Ok(trimmed.to_owned())
    } else {
        Err(WorkerError::InvalidElection {
            reason: "the key prefix must be an absolute path like /eventrail/app (no empty, '.' or '..' parts)",
        })
    }
}

/// Publishes `grant`, waking the worker only when leadership starts, ends or changes token (a
/// renewed deadline is taken without a wake-up).
#[cfg_attr(
    not(any(feature = "etcd", feature = "zookeeper")),
    expect(dead_code, reason = "built only with an external elector's feature")
)]
pub(crate) fn publish(state: &watch::Sender<Option<Grant>>, grant: Option<Grant>) {
    state.send_if_modified(|current| {
        let wake = current.map(|g| g.token) != grant.map(|g| g.token);
        *current = grant;
        wake
    });
}

/// How long without an answer from the coordination service suspends leadership: a third of the
/// session timeout, well before the server could let the session expire.
#[cfg_attr(
    not(any(feature = "etcd", feature = "zookeeper", test)),
    expect(dead_code, reason = "built only with an external elector's feature")
)]
pub(crate) fn suspend_after(session_timeout: Duration) -> Duration {
    (session_timeout / 3).max(Duration::from_millis(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_absolute_paths() {
        assert_eq!(check_prefix("/eventrail/app/").unwrap(), "/eventrail/app");
        for bad in ["", "/", "eventrail", "/a//b", "/a/../b", "/a/./b", "/a\nb"] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_grant_holds_until_its_deadline() {
        let now = Instant::now();
        assert!(
            Grant {
                token: 1,
                valid_until: None
            }
            .holds()
        );
        assert!(
            !Grant {
                token: 1,
                valid_until: Some(now)
            }
            .holds()
        );
        assert!(
            Grant {
                token: 1,
                valid_until: Some(now + Duration::from_secs(5))
            }
            .holds()
        );
        assert_eq!(
            suspend_after(Duration::from_secs(6)),
            Duration::from_secs(2)
        );
    }
}
