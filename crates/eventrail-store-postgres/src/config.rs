//! One validated configuration for every eventrail component on a database: the schema, the
//! notification channels, the worker's and the outbox's table names, and the connection.
//!
//! Build it once — in code, from a JSON file, or from the environment — and hand it to the store
//! ([`PgEventStore::from_config`](crate::PgEventStore::from_config)), the worker, `wait_for`, the
//! outbox, the relay, both admin types and the CLI (`--config`). Everything is checked when it is
//! built, and every component derives its names from the same values, so a worker cannot listen
//! on a channel its store does not notify, or an admin look at another schema's tables.
//!
//! ```
//! use eventrail_store_postgres::{EventrailConfig, ConfigFile};
//!
//! let config = EventrailConfig::builder().schema("billing").build()?;
//! assert_eq!(config.events_channel(), Some("billing_events"));
//! assert_eq!(config.worker_tables().consumer_checkpoints, "consumer_checkpoints");
//!
//! let file: ConfigFile = serde_json::from_str(r#"{ "schema": "ops", "notify": false }"#)?;
//! let config = EventrailConfig::from_file_contents(file)?;
//! assert_eq!(config.events_channel(), None);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::connect::PgConnectOptions;
use crate::keys::default_channel;
use crate::{ConfigError, PgStoreOptions, qualify_table, validate_identifier};

/// Names of the worker's tables; each may carry a schema (`ops.worker_nodes`). Unqualified
/// names live in the configuration's schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerTables {
    /// Registered workers and their heartbeats.
    pub worker_nodes: String,
    /// Which worker runs which consumer, with an epoch.
    pub consumer_assignments: String,
    /// Each consumer's position, pause flag and parked error.
    pub consumer_checkpoints: String,
    /// Audited skips of holes.
    pub consumer_gap_skips: String,
    /// The leadership lease (lease mode).
    pub worker_leader: String,
}

impl Default for WorkerTables {
    fn default() -> Self {
        Self {
            worker_nodes: "worker_nodes".into(),
            consumer_assignments: "consumer_assignments".into(),
            consumer_checkpoints: "consumer_checkpoints".into(),
            consumer_gap_skips: "consumer_gap_skips".into(),
            worker_leader: "worker_leader".into(),
        }
    }
}

/// Names of the outbox's tables; each may carry a schema (`ops.outbox`). Unqualified names live
/// in the configuration's schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxTables {
    /// The outbox (default `outbox`).
    pub outbox: String,
    /// The consumers' inbox (default `inbox`).
    pub inbox: String,
    /// The destinations backed off after an outage (default `outbox_destinations`).
    pub destinations: String,
    /// The partition keys that have unsent messages (default `outbox_keys`).
    pub keys: String,
}

impl Default for OutboxTables {
    fn default() -> Self {
        Self {
            outbox: "outbox".into(),
            inbox: "inbox".into(),
            destinations: "outbox_destinations".into(),
            keys: "outbox_keys".into(),
        }
    }
}

/// Names of the sagas' tables; each may carry a schema (`ops.saga_steps`). Unqualified names live
/// in the configuration's schema. Fixed by the first migration of a schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SagaTables {
    /// One row per saga (default `saga_instances`).
    pub saga_instances: String,
    /// One row per step of each saga (default `saga_steps`).
    pub saga_steps: String,
    /// Signals the sagas received (default `saga_signals`).
    pub saga_signals: String,
    /// Registered definitions (default `saga_definitions`).
    pub saga_definitions: String,
    /// Live runners and their handlers (default `saga_runners`).
    pub saga_runners: String,
}

impl Default for SagaTables {
    fn default() -> Self {
        Self {
            saga_instances: "saga_instances".into(),
            saga_steps: "saga_steps".into(),
            saga_signals: "saga_signals".into(),
            saga_definitions: "saga_definitions".into(),
            saga_runners: "saga_runners".into(),
        }
    }
}

/// How the workers elect their leader: the `leader_election` section of a configuration file.
/// The worker turns it into its `LeaderMode` (modes other than the PostgreSQL ones need the
/// worker's `etcd` or `zookeeper` feature); options set in code win over it.
///
/// ```json
/// { "mode": "etcd", "endpoints": ["http://etcd-1:2379", "http://etcd-2:2379"],
///   "key_prefix": "/eventrail/billing/worker", "session_timeout_ms": 5000 }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct LeaderElection {
    /// The mode (default `advisory_lock`).
    pub mode: LeaderElectionMode,
    /// etcd's endpoints (`http://host:2379`), or ZooKeeper's servers (`host:2181`, joined into
    /// one connect string); unused by the PostgreSQL modes.
    pub endpoints: Vec<String>,
    /// The prefix of the fleet's keys or nodes (default `/eventrail/<schema>/worker`).
    pub key_prefix: Option<String>,
    /// The session timeout in milliseconds (default: the mode's).
    pub session_timeout_ms: Option<u64>,
}

impl LeaderElection {
    /// `mode` with no endpoints and the defaults (set the public fields for the rest).
    #[must_use]
    pub fn new(mode: LeaderElectionMode) -> Self {
        Self {
            mode,
            ..Self::default()
        }
    }
}

/// A leader election mode, as named in a configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LeaderElectionMode {
    /// A PostgreSQL session advisory lock.
    #[default]
    AdvisoryLock,
    /// A PostgreSQL lease row.
    Lease,
    /// etcd.
    Etcd,
    /// ZooKeeper.
    Zookeeper,
}

/// The serde form of an [`EventrailConfig`], as read from a file: every field optional.
///
/// ```json
/// {
///   "database_url": "postgres://app@pgbouncer:6432/app?sslmode=verify-full",
///   "direct_database_url": "postgres://app@db:5432/app?sslmode=verify-full",
///   "statements": "unnamed",
///   "schema": "billing",
///   "notify": true,
///   "events_channel": "billing_events",
///   "outbox_channel": "billing_outbox",
///   "worker_tables": { "consumer_checkpoints": "ops.checkpoints" },
///   "outbox_tables": { "outbox": "ops.outbox" },
///   "saga_tables": { "saga_steps": "ops.saga_steps" },
///   "leader_election": { "mode": "zookeeper", "endpoints": ["zk-1:2181", "zk-2:2181"] }
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ConfigFile {
    /// The database (a libpq URL or `key=value` string); the `DATABASE_URL` environment
    /// variable when absent.
    pub database_url: Option<String>,
    /// The database without a pooler in between, for what needs a session: a worker's own
    /// connection (identity and leader locks), LISTEN connections, migrations and the CLI
    /// (default: `database_url`). Set it when `database_url` goes through PgBouncer in
    /// transaction pooling mode.
    pub direct_database_url: Option<String>,
    /// How pooled work sends statements (default `cached`; `unnamed` behind PgBouncer in
    /// transaction pooling mode, see [`Statements`](crate::Statements)).
    pub statements: crate::Statements,
    /// The schema of the event log and of unqualified table names (default `eventrail`).
    pub schema: String,
    /// Whether appends and enqueues send a wake-up hint (default true).
    pub notify: bool,
    /// The appends' channel (default `<schema>_events`).
    pub events_channel: Option<String>,
    /// The outbox's channel (default `<schema>_outbox`).
    pub outbox_channel: Option<String>,
    /// The worker's tables.
    pub worker_tables: WorkerTables,
    /// The outbox's tables.
    pub outbox_tables: OutboxTables,
    /// The sagas' tables.
    pub saga_tables: SagaTables,
    /// How the workers elect their leader (default: the advisory lock).
    pub leader_election: LeaderElection,
}

impl Default for ConfigFile {
    fn default() -> Self {
        Self {
            database_url: None,
            direct_database_url: None,
            statements: crate::Statements::Cached,
            schema: "eventrail".into(),
            notify: true,
            events_channel: None,
            outbox_channel: None,
            worker_tables: WorkerTables::default(),
            outbox_tables: OutboxTables::default(),
            saga_tables: SagaTables::default(),
            leader_election: LeaderElection::default(),
        }
    }
}

/// Reading a configuration failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read the configuration file {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid configuration (JSON, known fields).
    #[error("the configuration file {path} is not valid")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// An environment variable holds a value that cannot be used.
    #[error("environment variable {name} is not valid: {reason}")]
    Environment {
        /// The variable.
        name: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// A value was refused (a name, a URL).
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// The database URL was refused.
    #[error(transparent)]
    Connect(#[from] crate::ConnectError),
}

#[derive(Debug)]
struct Inner {
    schema: String,
    quoted_schema: String,
    events_channel: Option<String>,
    checkpoints_channel: String,
    outbox_channel: Option<String>,
    worker_tables: WorkerTables,
    outbox_tables: OutboxTables,
    saga_tables: SagaTables,
    leader_election: LeaderElection,
    connect: Option<PgConnectOptions>,
    direct: Option<PgConnectOptions>,
    statements: crate::Statements,
}

/// The validated configuration: cheap to clone, shared by every component (see the module
/// docs).
#[derive(Debug, Clone)]
pub struct EventrailConfig {
    inner: Arc<Inner>,
}

/// Builds an [`EventrailConfig`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct EventrailConfigBuilder {
    file: ConfigFile,
    connect: Option<PgConnectOptions>,
    direct: Option<PgConnectOptions>,
}

impl EventrailConfigBuilder {
    /// The schema (default `eventrail`).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.file.schema = schema.into();
        self
    }

    /// The appends' channel (default `<schema>_events`).
    pub fn events_channel(mut self, channel: impl Into<String>) -> Self {
        self.file.events_channel = Some(channel.into());
        self
    }

    /// The outbox's channel (default `<schema>_outbox`).
    pub fn outbox_channel(mut self, channel: impl Into<String>) -> Self {
        self.file.outbox_channel = Some(channel.into());
        self
    }

    /// No wake-up hints: subscribers and relays poll.
    pub fn without_notify(mut self) -> Self {
        self.file.notify = false;
        self
    }

    /// The worker's table names.
    pub fn worker_tables(mut self, tables: WorkerTables) -> Self {
        self.file.worker_tables = tables;
        self
    }

    /// The sagas' table names.
    pub fn saga_tables(mut self, tables: SagaTables) -> Self {
        self.file.saga_tables = tables;
        self
    }

    /// The outbox's table names.
    pub fn outbox_tables(mut self, tables: OutboxTables) -> Self {
        self.file.outbox_tables = tables;
        self
    }

    /// How the workers elect their leader.
    pub fn leader_election(mut self, election: LeaderElection) -> Self {
        self.file.leader_election = election;
        self
    }

    /// How to connect.
    pub fn connect(mut self, connect: impl Into<PgConnectOptions>) -> Self {
        self.connect = Some(connect.into());
        self
    }

    /// How to connect without a pooler in between, for what needs a session (see
    /// [`ConfigFile::direct_database_url`]); default: [`connect`](Self::connect)'s.
    pub fn direct_connect(mut self, connect: impl Into<PgConnectOptions>) -> Self {
        self.direct = Some(connect.into());
        self
    }

    /// How pooled work sends statements (see [`Statements`](crate::Statements)).
    pub fn statements(mut self, statements: crate::Statements) -> Self {
        self.file.statements = statements;
        self
    }

    /// Checks every value.
    ///
    /// # Errors
    /// [`ConfigError::InvalidIdentifier`] naming the refused value.
    pub fn build(self) -> Result<EventrailConfig, ConfigError> {
        let f = self.file;
        let quoted_schema = validate_identifier("schema", &f.schema)?;
        let channel = |explicit: &Option<String>, what: &'static str, purpose: &str| {
            let name = explicit
                .clone()
                .unwrap_or_else(|| default_channel(&f.schema, purpose));
            validate_identifier(what, &name).map(|_| name)
        };
        let events_channel = if f.notify {
            Some(channel(&f.events_channel, "events channel", "events")?)
        } else {
            None
        };
        let outbox_channel = if f.notify {
            Some(channel(&f.outbox_channel, "outbox channel", "outbox")?)
        } else {
            None
        };
        let checkpoints_channel = channel(&None, "checkpoints channel", "checkpoints")?;
        let w = &f.worker_tables;
        for (what, name) in [
            ("worker_nodes table", &w.worker_nodes),
            ("consumer_assignments table", &w.consumer_assignments),
            ("consumer_checkpoints table", &w.consumer_checkpoints),
            ("consumer_gap_skips table", &w.consumer_gap_skips),
            ("worker_leader table", &w.worker_leader),
        ] {
            qualify_table(what, name, &f.schema)?;
        }
        let o = &f.outbox_tables;
        for (what, name) in [
            ("outbox table", &o.outbox),
            ("inbox table", &o.inbox),
            ("destinations table", &o.destinations),
            ("keys table", &o.keys),
        ] {
            qualify_table(what, name, &f.schema)?;
        }
        let sg = &f.saga_tables;
        for (what, name) in [
            ("saga_instances table", &sg.saga_instances),
            ("saga_steps table", &sg.saga_steps),
            ("saga_signals table", &sg.saga_signals),
            ("saga_definitions table", &sg.saga_definitions),
            ("saga_runners table", &sg.saga_runners),
        ] {
            qualify_table(what, name, &f.schema)?;
        }
        Ok(EventrailConfig {
            inner: Arc::new(Inner {
                quoted_schema,
                events_channel,
                checkpoints_channel,
                outbox_channel,
                worker_tables: f.worker_tables,
                outbox_tables: f.outbox_tables,
                saga_tables: f.saga_tables,
                leader_election: f.leader_election,
                connect: self.connect,
                direct: self.direct,
                statements: f.statements,
                schema: f.schema,
            }),
        })
    }
}

impl EventrailConfig {
    /// A builder with every default: schema `eventrail`, derived channels, default tables.
    pub fn builder() -> EventrailConfigBuilder {
        EventrailConfigBuilder::default()
    }

    /// The defaults.
    #[must_use]
    pub fn default_config() -> Self {
        Self::builder()
            .build()
            .expect("the default configuration is valid")
    }

    /// Validates a configuration read with serde; its `database_url` (or none) becomes the
    /// connection.
    ///
    /// # Errors
    /// [`ConfigFileError::Invalid`] for a refused name, [`ConfigFileError::Connect`] for a
    /// refused URL.
    pub fn from_file_contents(file: ConfigFile) -> Result<Self, ConfigFileError> {
        let connect = file
            .database_url
            .as_deref()
            .map(PgConnectOptions::from_url)
            .transpose()?;
        let direct = file
            .direct_database_url
            .as_deref()
            .map(PgConnectOptions::from_url)
            .transpose()?;
        let builder = EventrailConfigBuilder {
            file,
            connect,
            direct,
        };
        Ok(builder.build()?)
    }

    /// Reads and validates a JSON configuration file (see [`ConfigFile`]).
    ///
    /// # Errors
    /// [`ConfigFileError`] saying what is wrong, and where.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self, ConfigFileError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: shown.clone(),
            source,
        })?;
        let file: ConfigFile =
            serde_json::from_str(&text).map_err(|source| ConfigFileError::Parse {
                path: shown,
                source,
            })?;
        Self::from_file_contents(file)
    }

    /// From the environment: `EVENTRAIL_SCHEMA`, `EVENTRAIL_NOTIFY` (`true`/`false`),
    /// `EVENTRAIL_EVENTS_CHANNEL`, `EVENTRAIL_OUTBOX_CHANNEL`, `EVENTRAIL_STATEMENTS`
    /// (`cached`/`unnamed`), `DATABASE_URL`, `EVENTRAIL_DIRECT_DATABASE_URL`, and the leader
    /// election: `EVENTRAIL_LEADER_ELECTION` (`advisory_lock`, `lease`, `etcd`, `zookeeper`),
    /// `EVENTRAIL_LEADER_ENDPOINTS` (comma-separated), `EVENTRAIL_LEADER_KEY_PREFIX` and
    /// `EVENTRAIL_LEADER_SESSION_TIMEOUT_MS`; unset variables keep their defaults.
    ///
    /// # Errors
    /// [`ConfigFileError`] naming the variable or value that is wrong.
    pub fn from_env() -> Result<Self, ConfigFileError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`EventrailConfig::from_env`] over any source of variables (for tests, or a secrets
    /// store).
    ///
    /// # Errors
    /// As [`EventrailConfig::from_env`].
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigFileError> {
        let var = |name| get(name).filter(|v| !v.is_empty());
        let mut file = ConfigFile::default();
        if let Some(schema) = var("EVENTRAIL_SCHEMA") {
            file.schema = schema;
        }
        if let Some(notify) = var("EVENTRAIL_NOTIFY") {
            file.notify = match notify.as_str() {
                "true" | "1" | "on" => true,
                "false" | "0" | "off" => false,
                _ => {
                    return Err(ConfigFileError::Environment {
                        name: "EVENTRAIL_NOTIFY",
                        reason: "expected true or false",
                    });
                }
            };
        }
        if let Some(statements) = var("EVENTRAIL_STATEMENTS") {
            file.statements = match statements.as_str() {
                "cached" => crate::Statements::Cached,
                "unnamed" => crate::Statements::Unnamed,
                _ => {
                    return Err(ConfigFileError::Environment {
                        name: "EVENTRAIL_STATEMENTS",
                        reason: "expected cached or unnamed",
                    });
                }
            };
        }
        if let Some(mode) = var("EVENTRAIL_LEADER_ELECTION") {
            file.leader_election.mode = match mode.as_str() {
                "advisory_lock" => LeaderElectionMode::AdvisoryLock,
                "lease" => LeaderElectionMode::Lease,
                "etcd" => LeaderElectionMode::Etcd,
                "zookeeper" => LeaderElectionMode::Zookeeper,
                _ => {
                    return Err(ConfigFileError::Environment {
                        name: "EVENTRAIL_LEADER_ELECTION",
                        reason: "expected advisory_lock, lease, etcd or zookeeper",
                    });
                }
            };
        }
        if let Some(endpoints) = var("EVENTRAIL_LEADER_ENDPOINTS") {
            file.leader_election.endpoints = endpoints
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_owned)
                .collect();
        }
        file.leader_election.key_prefix = var("EVENTRAIL_LEADER_KEY_PREFIX");
        if let Some(ms) = var("EVENTRAIL_LEADER_SESSION_TIMEOUT_MS") {
            file.leader_election.session_timeout_ms =
                Some(ms.parse().map_err(|_| ConfigFileError::Environment {
                    name: "EVENTRAIL_LEADER_SESSION_TIMEOUT_MS",
                    reason: "expected milliseconds",
                })?);
        }
        file.events_channel = var("EVENTRAIL_EVENTS_CHANNEL");
        file.outbox_channel = var("EVENTRAIL_OUTBOX_CHANNEL");
        file.database_url = var("DATABASE_URL");
        file.direct_database_url = var("EVENTRAIL_DIRECT_DATABASE_URL");
        Self::from_file_contents(file)
    }

    /// The schema, as given.
    #[must_use]
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The schema, quoted for SQL.
    #[must_use]
    pub fn quoted_schema(&self) -> &str {
        &self.inner.quoted_schema
    }

    /// The channel appends notify, if any (`<schema>_events` by default).
    #[must_use]
    pub fn events_channel(&self) -> Option<&str> {
        self.inner.events_channel.as_deref()
    }

    /// The channel batch commits announce checkpoints on (`<schema>_checkpoints`).
    #[must_use]
    pub fn checkpoints_channel(&self) -> &str {
        &self.inner.checkpoints_channel
    }

    /// The channel enqueues notify, if any (`<schema>_outbox` by default).
    #[must_use]
    pub fn outbox_channel(&self) -> Option<&str> {
        self.inner.outbox_channel.as_deref()
    }

    /// The worker's table names.
    #[must_use]
    pub fn worker_tables(&self) -> &WorkerTables {
        &self.inner.worker_tables
    }

    /// The sagas' table names.
    #[must_use]
    pub fn saga_tables(&self) -> &SagaTables {
        &self.inner.saga_tables
    }

    /// The outbox's table names.
    #[must_use]
    pub fn outbox_tables(&self) -> &OutboxTables {
        &self.inner.outbox_tables
    }

    /// How the workers elect their leader.
    #[must_use]
    pub fn leader_election(&self) -> &LeaderElection {
        &self.inner.leader_election
    }

    /// How to connect, when the configuration names a database.
    #[must_use]
    pub fn connect_options(&self) -> Option<&PgConnectOptions> {
        self.inner.connect.as_ref()
    }

    /// How to connect for what needs a session (a worker's own connection, LISTEN, migrations,
    /// the CLI): the direct settings when given, else [`connect_options`](Self::connect_options).
    #[must_use]
    pub fn direct_connect_options(&self) -> Option<&PgConnectOptions> {
        self.inner.direct.as_ref().or(self.inner.connect.as_ref())
    }

    /// How pooled work sends statements.
    #[must_use]
    pub fn statements(&self) -> crate::Statements {
        self.inner.statements
    }

    /// The store's options for this configuration.
    pub fn store_options(&self) -> PgStoreOptions {
        let options = PgStoreOptions::new()
            .schema(self.schema())
            .statements(self.statements());
        match self.events_channel() {
            Some(channel) => options.notify_channel(channel),
            None => options.without_notify(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_derive_every_name_from_the_schema() {
        let c = EventrailConfig::default_config();
        assert_eq!(c.schema(), "eventrail");
        assert_eq!(c.events_channel(), Some("eventrail_events"));
        assert_eq!(c.checkpoints_channel(), "eventrail_checkpoints");
        assert_eq!(c.outbox_channel(), Some("eventrail_outbox"));
        let c = EventrailConfig::builder()
            .schema("tenant_a")
            .build()
            .unwrap();
        assert_eq!(c.events_channel(), Some("tenant_a_events"));
        assert_eq!(
            c.store_options().channel().as_deref(),
            Some("tenant_a_events")
        );
    }

    #[test]
    fn bad_values_are_refused_when_built() {
        assert!(
            EventrailConfig::builder()
                .schema("Bad-Schema")
                .build()
                .is_err()
        );
        assert!(
            EventrailConfig::builder()
                .events_channel("no spaces")
                .build()
                .is_err()
        );
        let tables = WorkerTables {
            consumer_checkpoints: "ops.bad name".into(),
            ..WorkerTables::default()
        };
        assert!(
            EventrailConfig::builder()
                .worker_tables(tables)
                .build()
                .is_err()
        );
        let unknown = serde_json::from_str::<ConfigFile>(r#"{ "shema": "x" }"#);
        assert!(unknown.is_err(), "unknown fields are refused");
        let sagas = SagaTables {
            saga_steps: "ops;drop".into(),
            ..SagaTables::default()
        };
        assert!(
            EventrailConfig::builder()
                .saga_tables(sagas)
                .build()
                .is_err()
        );
    }

    #[test]
    fn saga_table_names_come_from_the_file() {
        let file: ConfigFile = serde_json::from_str(
            r#"{ "schema": "billing", "saga_tables": { "saga_steps": "ops.saga_steps" } }"#,
        )
        .unwrap();
        let c = EventrailConfig::from_file_contents(file).unwrap();
        assert_eq!(c.saga_tables().saga_steps, "ops.saga_steps");
        assert_eq!(c.saga_tables().saga_instances, "saga_instances");
    }

    #[test]
    fn the_environment_sets_what_it_names() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let c = EventrailConfig::from_vars(env(&[
            ("EVENTRAIL_SCHEMA", "shop"),
            ("EVENTRAIL_NOTIFY", "false"),
            ("DATABASE_URL", "postgres://app@db/app?sslmode=require"),
        ]))
        .unwrap();
        assert_eq!((c.schema(), c.events_channel()), ("shop", None));
        assert!(c.connect_options().is_some());
        assert_eq!(
            c.direct_connect_options()
                .map(PgConnectOptions::get_ssl_mode),
            Some(crate::SslMode::Require),
            "the direct settings default to the database's"
        );
        assert_eq!(c.statements(), crate::Statements::Cached);
        let c = EventrailConfig::from_vars(env(&[
            ("EVENTRAIL_STATEMENTS", "unnamed"),
            ("DATABASE_URL", "postgres://app@pgbouncer:6432/app"),
            (
                "EVENTRAIL_DIRECT_DATABASE_URL",
                "postgres://app@db:5432/app",
            ),
        ]))
        .unwrap();
        assert_eq!(
            c.store_options().get_statements(),
            crate::Statements::Unnamed
        );
        assert_eq!(
            c.direct_connect_options()
                .map(|o| o.tokio_config().get_ports().to_vec()),
            Some(vec![5432])
        );
        assert!(matches!(
            EventrailConfig::from_vars(env(&[("EVENTRAIL_STATEMENTS", "named")])),
            Err(ConfigFileError::Environment { .. })
        ));
        assert!(matches!(
            EventrailConfig::from_vars(env(&[("EVENTRAIL_NOTIFY", "maybe")])),
            Err(ConfigFileError::Environment { .. })
        ));
        assert!(matches!(
            EventrailConfig::from_vars(env(&[("EVENTRAIL_SCHEMA", "Bad")])),
            Err(ConfigFileError::Invalid(_))
        ));
    }

    #[test]
    fn the_leader_election_comes_from_json_or_the_environment() {
        let file: ConfigFile = serde_json::from_str(
            r#"{ "leader_election": { "mode": "etcd", "endpoints": ["http://e1:2379"], "session_timeout_ms": 4000 } }"#,
        )
        .unwrap();
        let c = EventrailConfig::from_file_contents(file).unwrap();
        assert_eq!(c.leader_election().mode, LeaderElectionMode::Etcd);
        assert_eq!(c.leader_election().endpoints, ["http://e1:2379"]);
        assert_eq!(c.leader_election().session_timeout_ms, Some(4000));
        assert_eq!(
            EventrailConfig::default_config().leader_election(),
            &LeaderElection::default()
        );
        assert!(
            serde_json::from_str::<ConfigFile>(r#"{ "leader_election": { "mode": "raft" } }"#)
                .is_err()
        );
        let vars = [
            ("EVENTRAIL_LEADER_ELECTION", "zookeeper"),
            ("EVENTRAIL_LEADER_ENDPOINTS", "zk-1:2181, zk-2:2181"),
            ("EVENTRAIL_LEADER_KEY_PREFIX", "/apps/billing"),
        ];
        let c = EventrailConfig::from_vars(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
        .unwrap();
        let e = c.leader_election();
        assert_eq!(e.mode, LeaderElectionMode::Zookeeper);
        assert_eq!(e.endpoints, ["zk-1:2181", "zk-2:2181"]);
        assert_eq!(e.key_prefix.as_deref(), Some("/apps/billing"));
        assert!(matches!(
            EventrailConfig::from_vars(
                |name| (name == "EVENTRAIL_LEADER_ELECTION").then(|| "raft".to_owned())
            ),
            Err(ConfigFileError::Environment { .. })
        ));
    }
}
