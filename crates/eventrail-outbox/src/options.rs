use std::time::Duration;

/// Names of the outbox's tables; each may carry a schema (`ops.outbox`). Unqualified names live
/// in the options' schema. One type with the configuration handle's
/// ([`eventrail_store_postgres::EventrailConfig::outbox_tables`]).
pub use eventrail_store_postgres::OutboxTables;

/// Retries of failed publishes: attempts of one message before it is dead and its partition key
/// parked, with exponential backoff jittered to between half and all of it, computed on the
/// database clock (shared with the worker; see [`eventrail_core::RetryPolicy`]).
pub use eventrail_core::RetryPolicy;

/// How long a destination that is down is left alone: exponential backoff with jitter, computed
/// on the database clock. Its messages keep their attempts meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DestinationBackoff {
    /// Wait after the first failure; doubled after each failed probe, then jittered to between
    /// half and all of it.
    pub initial: Duration,
    /// Longest wait between probes.
    pub max: Duration,
}

impl Default for DestinationBackoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// How an idle relay learns that messages may be waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wakeup {
    /// Look every poll interval.
    Poll,
    /// LISTEN to the outbox channel (enqueue sends a hint with the commit) on a dedicated
    /// connection, and still look every poll interval (a lost hint costs one interval).
    Notify,
}

/// Settings of the outbox, its relay and its inbox, as a consuming builder. Every setting has a
/// default.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct OutboxOptions {
    pub(crate) schema: String,
    pub(crate) tables: OutboxTables,
    /// `None`: `<schema>_outbox`.
    pub(crate) notify_channel: Option<String>,
    pub(crate) batch_size: usize,
    pub(crate) max_per_key: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) claims_in_flight: usize,
    pub(crate) lease: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) wakeup: Wakeup,
    pub(crate) retry: RetryPolicy,
    pub(crate) destination_backoff: DestinationBackoff,
    pub(crate) retention: Duration,
    pub(crate) cleanup_interval: Duration,
    pub(crate) cleanup_batch: usize,
    pub(crate) stats_interval: Duration,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) statements: eventrail_store_postgres::Statements,
}

impl Default for OutboxOptions {
    fn default() -> Self {
        Self {
            schema: "eventrail".into(),
            tables: OutboxTables::default(),
            notify_channel: None,
            batch_size: 512,
            max_per_key: 16,
            max_in_flight: 256,
            claims_in_flight: 4,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(500),
            wakeup: Wakeup::Notify,
            retry: RetryPolicy::new(10, Duration::from_millis(200), Duration::from_secs(60)),
            destination_backoff: DestinationBackoff::default(),
            retention: Duration::from_secs(7 * 24 * 3600),
            cleanup_interval: Duration::from_secs(60),
            cleanup_batch: 1000,
            stats_interval: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            statements: eventrail_store_postgres::Statements::Cached,
        }
    }
}

impl OutboxOptions {
    /// Defaults: see each setter.
    pub fn new() -> Self {
        Self::default()
    }

    /// The schema, table names and channel of a configuration; polls when it sends no hints.
    pub fn from_config(config: &eventrail_store_postgres::EventrailConfig) -> Self {
        let options = Self::new()
            .schema(config.schema())
            .tables(config.outbox_tables().clone())
            .statements(config.statements());
        match config.outbox_channel() {
            Some(channel) => options.notify_channel(channel),
            None => options.wakeup(Wakeup::Poll),
        }
    }

    /// The schema of unqualified table names (default `eventrail`).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The table names (defaults `outbox`, `inbox`, `outbox_destinations`).
    pub fn tables(mut self, tables: OutboxTables) -> Self {
        self.tables = tables;
        self
    }

    /// The channel of enqueue hints (default `<schema>_outbox`, so that two schemas never wake
    /// each other's relays).
    pub fn notify_channel(mut self, channel: impl Into<String>) -> Self {
        self.notify_channel = Some(channel.into());
        self
    }

    /// Most messages one claim takes (default 512).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Most consecutive messages of one partition key one claim takes; they publish one after
    /// the other (default 16).
    pub fn max_per_key(mut self, n: usize) -> Self {
        self.max_per_key = n.max(1);
        self
    }

    /// Most partition keys publishing at once (default 256).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// How many batches' worth of claimed, unsettled messages one relay may hold (default 4):
    /// [`Relay::run`](crate::Relay::run) claims the next batch while earlier ones publish and
    /// settle (a claim skips the keys in flight), as long as a whole batch fits in
    /// `claims_in_flight × batch_size` messages. Keys are settled as their runs finish, so they
    /// free up before the batch's slowest key is done.
    pub fn claims_in_flight(mut self, n: usize) -> Self {
        self.claims_in_flight = n.max(1);
        self
    }

    /// How long a claim holds its partition keys (default 30 s). A relay renews the leases of
    /// the batches it publishes every third of this; a relay that dies holding a lease delays
    /// its keys by this much. A relay that cannot renew (the database is unreachable, or another
    /// relay took the key over after the lease lapsed) stops publishing the key's remaining
    /// messages; a publish under way when that happens may be repeated by the relay that takes
    /// over (same id, so brokers deduplicate).
    pub fn lease(mut self, d: Duration) -> Self {
        self.lease = d;
        self
    }

    /// How often an idle relay looks for due messages (default 500 ms). A busy relay that
    /// follows up the keys whose full runs it just sent still walks the due keys at least this
    /// often, and on enqueue hints at most every quarter of it.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    /// Poll only, or LISTEN with polling as fallback (default notify).
    pub fn wakeup(mut self, wakeup: Wakeup) -> Self {
        self.wakeup = wakeup;
        self
    }

    /// How the relay sends statements on its pool (default
    /// [`Statements::Cached`](eventrail_store_postgres::Statements::Cached)); behind PgBouncer in
    /// transaction pooling mode,
    /// [`Statements::Unnamed`](eventrail_store_postgres::Statements::Unnamed).
    pub fn statements(mut self, statements: eventrail_store_postgres::Statements) -> Self {
        self.statements = statements;
        self
    }

    /// Retries and dead-lettering (default 10 attempts, 200 ms doubling to 60 s).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// How a destination that is down (its sink reported [`SinkError::Unavailable`] or
    /// [`SinkError::Missing`]) is backed off as a whole (default 500 ms doubling to 30 s).
    /// Failures of that class do not count against the messages' attempts.
    ///
    /// [`SinkError::Unavailable`]: crate::SinkError::Unavailable
    /// [`SinkError::Missing`]: crate::SinkError::Missing
    pub fn destination_backoff(mut self, backoff: DestinationBackoff) -> Self {
        self.destination_backoff = backoff;
        self
    }

    /// Sent messages older than this are deleted (default 7 days): on PostgreSQL those enqueued
    /// longer ago (a settle writes no time per message), on MySQL those sent longer ago. The
    /// cut-off slides with the database clock. With [`Duration::ZERO`] a sent message is
    /// deleted as soon as its broker acknowledged it, in the settle, at the price of the sent
    /// history, and of
    /// [`OutboxError::DuplicateMessageId`](crate::OutboxError::DuplicateMessageId) for an id
    /// enqueued again after it was sent.
    pub fn retention(mut self, d: Duration) -> Self {
        self.retention = d;
        self
    }

    /// How often a relay runs the cleanup (default 60 s). A cleanup that took more than a
    /// twentieth of this interval puts the next one twenty times its duration later.
    pub fn cleanup_interval(mut self, d: Duration) -> Self {
        self.cleanup_interval = d;
        self
    }

    /// Most rows one cleanup statement deletes (default 1000).
    pub fn cleanup_batch(mut self, n: usize) -> Self {
        self.cleanup_batch = n.max(1);
        self
    }

    /// How often a relay samples the pending count and the oldest pending age for metrics, and
    /// forgets keys left without unsent messages (default 5 s). The count reads every unsent
    /// message: when it took more than a twentieth of this interval (a backlog of millions),
    /// the next one comes twenty times its duration later, so that counting never takes more
    /// than a twentieth of the relay's time.
    pub fn stats_interval(mut self, d: Duration) -> Self {
        self.stats_interval = d;
        self
    }

    /// After shutdown is requested, how long in-flight publishes may still finish before the
    /// rest is handed back (default 10 s).
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }
}
