use std::time::Duration;

/// How a worker learns that new events may be readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DispatcherStrategy {
    /// Check the log's head every dispatcher interval.
    Poll,
    /// LISTEN to the store's notify channel on a dedicated connection, and still check the head
    /// every dispatcher interval (reconciliation: a lost notification costs at most one interval).
    Notify,
}

/// How a worker takes part in leader election. Every worker of a schema must use the same mode.
///
/// Each mode hands its leader a fencing token greater than every earlier leader's; the leader
/// stores it with the assignments it writes, and a write with a lower token than the stored
/// one is refused in its own transaction (see the crate's documentation on leader election).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaderMode {
    /// A session advisory lock (`pg_try_advisory_lock`) on the worker's own connection: a dead
    /// leader's lock is released at once.
    AdvisoryLock,
    /// A lease row renewed every heartbeat, written through the worker's pool. A dead leader is
    /// replaced when its lease expires. Both modes work behind PgBouncer in transaction pooling
    /// mode; in both, the worker's own session (identity lock) needs a direct connection.
    Lease,
    /// etcd: a lease that the worker keeps alive and a leader key attached to it; the fencing
    /// token is the leader key's create revision.
    #[cfg(feature = "etcd")]
    #[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
    Etcd(crate::EtcdElection),
    /// ZooKeeper: ephemeral sequential nodes, the lowest leads; the fencing token is its
    /// sequence number.
    #[cfg(feature = "zookeeper")]
    #[cfg_attr(docsrs, doc(cfg(feature = "zookeeper")))]
    ZooKeeper(crate::ZooKeeperElection),
}

impl LeaderMode {
    /// The mode of a configuration's `leader_election` section
    /// ([`EventrailConfig::leader_election`](eventrail_store_postgres::EventrailConfig::leader_election)).
    /// A worker built without [`WorkerOptions::leader_mode`] takes its store configuration's.
    ///
    /// # Errors
    /// [`WorkerError::InvalidElection`](crate::WorkerError::InvalidElection) for etcd or
    /// ZooKeeper without endpoints, or without the cargo feature that brings them.
    pub fn from_config(
        election: &eventrail_store_postgres::LeaderElection,
    ) -> Result<Self, crate::WorkerError> {
        use eventrail_store_postgres::LeaderElectionMode as Mode;
        let needs_endpoints = || {
            if election.endpoints.is_empty() {
                Err(crate::WorkerError::InvalidElection {
                    reason: "leader_election.endpoints is empty",
                })
            } else {
                Ok(())
            }
        };
        match election.mode {
            Mode::Lease => Ok(Self::Lease),
            #[cfg(feature = "etcd")]
            Mode::Etcd => {
                needs_endpoints()?;
                let mut e = crate::EtcdElection::new(election.endpoints.iter().cloned());
                if let Some(prefix) = &election.key_prefix {
                    e = e.key_prefix(prefix.clone());
                }
                if let Some(ms) = election.session_timeout_ms {
                    e = e.session_timeout(Duration::from_millis(ms));
                }
                Ok(Self::Etcd(e))
            }
            #[cfg(feature = "zookeeper")]
            Mode::Zookeeper => {
                needs_endpoints()?;
                let mut z = crate::ZooKeeperElection::new(election.endpoints.join(","));
                if let Some(prefix) = &election.key_prefix {
                    z = z.key_prefix(prefix.clone());
                }
                if let Some(ms) = election.session_timeout_ms {
                    z = z.session_timeout(Duration::from_millis(ms));
                }
                Ok(Self::ZooKeeper(z))
            }
            #[cfg(not(feature = "etcd"))]
            Mode::Etcd => {
                needs_endpoints()?;
                Err(crate::WorkerError::InvalidElection {
                    reason: "leader election on etcd needs eventrail-worker's `etcd` feature",
                })
            }
            #[cfg(not(feature = "zookeeper"))]
            Mode::Zookeeper => {
                needs_endpoints()?;
                Err(crate::WorkerError::InvalidElection {
                    reason: "leader election on ZooKeeper needs eventrail-worker's `zookeeper` feature",
                })
            }
            _ => Ok(Self::AdvisoryLock),
        }
    }
}

/// What to do with a failing handler: attempts of one event (the first in its batch, the others
/// alone) before the consumer is parked at it (shared with the outbox; see
/// [`eventrail_core::RetryPolicy`]).
pub use eventrail_core::RetryPolicy;

/// Names of the worker's tables; each may carry a schema (`ops.worker_nodes`). Unqualified
/// names live in the store's schema. One type with the configuration handle's
/// ([`eventrail_store_postgres::EventrailConfig::worker_tables`]).
pub use eventrail_store_postgres::WorkerTables as TableNames;

/// How many times [`WorkerOptions::batch_size`] a catch-up batch may grow by default.
const CATCH_UP_GROWTH: usize = 4;

/// Settings of a worker, as a consuming builder. Every setting has a default.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct WorkerOptions {
    pub(crate) name: String,
    pub(crate) batch_size: usize,
    /// `None`: [`CATCH_UP_GROWTH`] × `batch_size`.
    pub(crate) catch_up_batch_size: Option<usize>,
    pub(crate) base_poll_interval: Duration,
    pub(crate) max_poll_interval: Duration,
    pub(crate) dispatcher_interval: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) heartbeat_timeout: Duration,
    pub(crate) rebalance_interval: Duration,
    pub(crate) batch_pause: Duration,
    pub(crate) batch_timeout: Duration,
    pub(crate) dispatcher: DispatcherStrategy,
    pub(crate) leader_mode: LeaderMode,
    /// Whether [`WorkerOptions::leader_mode`] set it (else the store configuration's is taken).
    pub(crate) leader_mode_set: bool,
    /// Taken from the store when the worker is built.
    pub(crate) notify_channel: String,
    /// `None`: the store's configuration's.
    pub(crate) tables: Option<TableNames>,
    pub(crate) retry: RetryPolicy,
    pub(crate) stall_escape: Option<Duration>,
    pub(crate) max_reconnect_interval: Duration,
    pub(crate) register_timeout: Option<Duration>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            name: "worker".into(),
            batch_size: 1000,
            catch_up_batch_size: None,
            base_poll_interval: Duration::from_millis(50),
            max_poll_interval: Duration::from_secs(2),
            dispatcher_interval: Duration::from_millis(500),
            heartbeat_interval: Duration::from_millis(500),
            heartbeat_timeout: Duration::from_secs(5),
            rebalance_interval: Duration::from_millis(500),
            batch_pause: Duration::ZERO,
            batch_timeout: Duration::from_secs(30),
            dispatcher: DispatcherStrategy::Notify,
            leader_mode: LeaderMode::AdvisoryLock,
            leader_mode_set: false,
            notify_channel: String::new(),
            tables: None,
            retry: RetryPolicy::default(),
            stall_escape: None,
            max_reconnect_interval: Duration::from_secs(2),
            register_timeout: None,
        }
    }
}

impl WorkerOptions {
    /// Defaults: see each setter.
    pub fn new() -> Self {
        Self::default()
    }

    /// A human-readable name shown by `eventrail status` (default `worker`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Most positions one batch covers at the head (default 1000): smaller batches hold the
    /// checkpoint row for less time. Behind the head, batches grow from this up to
    /// [`catch_up_batch_size`](Self::catch_up_batch_size).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Most positions one batch covers while the consumer is behind the head (default 4 ×
    /// [`batch_size`](Self::batch_size); never below it). Behind the head, each batch that
    /// commits within a tenth of [`batch_timeout`](Self::batch_timeout) doubles the next one,
    /// up to this, so that a catch-up commits, probes and reads less often per event; back at
    /// the head, or after a slow or failed batch, batches start again at `batch_size`.
    pub fn catch_up_batch_size(mut self, n: usize) -> Self {
        self.catch_up_batch_size = Some(n);
        self
    }

    /// The largest catch-up batch: at least [`batch_size`](Self::batch_size).
    pub(crate) fn catch_up_limit(&self) -> usize {
        self.catch_up_batch_size
            .unwrap_or(self.batch_size.saturating_mul(CATCH_UP_GROWTH))
            .max(self.batch_size)
    }

    /// First wait of an idle consumer before it looks again (default 50 ms).
    pub fn base_poll_interval(mut self, d: Duration) -> Self {
        self.base_poll_interval = d;
        self
    }

    /// Longest wait of an idle consumer; the wait doubles up to it (default 2 s).
    pub fn max_poll_interval(mut self, d: Duration) -> Self {
        self.max_poll_interval = d;
        self
    }

    /// How often the dispatcher checks the log's head (default 500 ms).
    pub fn dispatcher_interval(mut self, d: Duration) -> Self {
        self.dispatcher_interval = d;
        self
    }

    /// How often the worker renews its registration (default 500 ms).
    pub fn heartbeat_interval(mut self, d: Duration) -> Self {
        self.heartbeat_interval = d;
        self
    }

    /// A worker whose heartbeat is older is dead (default 5 s).
    pub fn heartbeat_timeout(mut self, d: Duration) -> Self {
        self.heartbeat_timeout = d;
        self
    }

    /// How often the leader recomputes assignments (default 500 ms); a join or leave is picked up
    /// within one interval.
    pub fn rebalance_interval(mut self, d: Duration) -> Self {
        self.rebalance_interval = d;
        self
    }

    /// Pause between full batches while catching up, to leave the database room (default 0).
    pub fn batch_pause(mut self, d: Duration) -> Self {
        self.batch_pause = d;
        self
    }

    /// Longest a batch may take before it is rolled back and retried (default 30 s).
    pub fn batch_timeout(mut self, d: Duration) -> Self {
        self.batch_timeout = d;
        self
    }

    /// Poll or LISTEN/NOTIFY with reconciliation polling (default notify).
    pub fn dispatcher(mut self, strategy: DispatcherStrategy) -> Self {
        self.dispatcher = strategy;
        self
    }

    /// How leaders are elected: advisory lock (the default), lease row, etcd or ZooKeeper.
    ///
    /// Unset, the worker takes its store configuration's `leader_election` (see
    /// [`LeaderMode::from_config`]), which is the advisory lock unless configured.
    pub fn leader_mode(mut self, mode: LeaderMode) -> Self {
        self.leader_mode = mode;
        self.leader_mode_set = true;
        self
    }

    /// The worker's table names (default: those of the store's configuration, see
    /// [`PgEventStore::from_config`](eventrail_store_postgres::PgEventStore::from_config);
    /// `worker_nodes`, `consumer_assignments`, `consumer_checkpoints`, `consumer_gap_skips`,
    /// `worker_leader` unless configured).
    pub fn tables(mut self, tables: TableNames) -> Self {
        self.tables = Some(tables);
        self
    }

    /// Retries of failing handlers (default 5 attempts, 100 ms doubling to 10 s).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Longest wait between attempts to reconnect the worker's session after it was lost (the
    /// server restarted, failed over, or ended the session); the wait grows from 100 ms with
    /// jitter (default 2 s). Once the database accepts connections again the worker is back
    /// within about this interval.
    pub fn max_reconnect_interval(mut self, d: Duration) -> Self {
        self.max_reconnect_interval = d.max(Duration::from_millis(100));
        self
    }

    /// Gives up starting when the worker cannot register within `timeout`:
    /// [`Worker::run`](crate::Worker::run) then returns [`WorkerError::Connect`](crate::WorkerError::Connect)
    /// (the last attempt's cause, or a timeout). By default a starting worker retries until the
    /// database answers, as it does after losing its session; set this to let a supervisor see
    /// a database it cannot reach (wrong host, TLS refused) instead of a worker that waits.
    /// A TLS setting that can never work (an unreadable CA file) ends `run` at once either way.
    pub fn register_timeout(mut self, timeout: Duration) -> Self {
        self.register_timeout = Some(timeout);
        self
    }

    /// Opt in to skipping a hole held open longer than `after` by a long-running writer. Off by
    /// default: such a skip may lose the event if that writer commits later. Every such skip is
    /// audited with reason `timeout`.
    pub fn stall_escape(mut self, after: Duration) -> Self {
        self.stall_escape = Some(after);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configured_leader_election_becomes_a_leader_mode() {
        use eventrail_store_postgres::{LeaderElection, LeaderElectionMode as Mode};
        let mode = |m| LeaderMode::from_config(&LeaderElection::new(m));
        assert_eq!(mode(Mode::AdvisoryLock).unwrap(), LeaderMode::AdvisoryLock);
        assert_eq!(mode(Mode::Lease).unwrap(), LeaderMode::Lease);
        // etcd and ZooKeeper need endpoints (and their feature).
        assert!(matches!(
            mode(Mode::Etcd),
            Err(crate::WorkerError::InvalidElection { .. })
        ));
        assert!(matches!(
            mode(Mode::Zookeeper),
            Err(crate::WorkerError::InvalidElection { .. })
        ));
        let mut zk = LeaderElection::new(Mode::Zookeeper);
        zk.endpoints = vec!["zk-1:2181".into(), "zk-2:2181".into()];
        zk.session_timeout_ms = Some(4000);
        #[cfg(feature = "zookeeper")]
        assert_eq!(
            LeaderMode::from_config(&zk).unwrap(),
            LeaderMode::ZooKeeper(
                crate::ZooKeeperElection::new("zk-1:2181,zk-2:2181")
                    .session_timeout(Duration::from_secs(4))
            )
        );
        #[cfg(not(feature = "zookeeper"))]
        assert!(LeaderMode::from_config(&zk).is_err());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let r = RetryPolicy {
            max_attempts: 9,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        let waits: Vec<_> = (1..=6).map(|n| r.backoff(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(r.backoff(u32::MAX), Duration::from_secs(1));
    }
}
