//! Making a store: the constructors (a pool, options, a configuration, a URL), the builder that
//! adds stateless processors, and the accessors for what the store was built with.

use std::fmt;
use std::sync::Arc;

use deadpool_postgres::Pool;
use eventrail_core::StoreError;

use super::append::{DynProcessor, PgStatelessProcessor};
use super::sql::Sql;
use super::{Inner, PgEventStore, backend};
use crate::{ConfigError, PgStoreOptions};

/// Builds a [`PgEventStore`]: its options (or configuration) and its stateless processors,
/// fixed when it is built (a store's clones all run the same processors).
#[must_use]
pub struct PgEventStoreBuilder {
    pool: Pool,
    options: PgStoreOptions,
    config: Option<crate::EventrailConfig>,
    processors: Vec<Arc<dyn DynProcessor>>,
}

impl fmt::Debug for PgEventStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgEventStoreBuilder")
            .field("options", &self.options)
            .field("processors", &self.processors.len())
            .finish_non_exhaustive()
    }
}

impl PgEventStoreBuilder {
    /// The store's options (schema, notify channel).
    pub fn options(mut self, options: PgStoreOptions) -> Self {
        self.options = options;
        self.config = None;
        self
    }

    /// A validated configuration (schema, channels; other components take their names from it).
    pub fn config(mut self, config: &crate::EventrailConfig) -> Self {
        self.options = config.store_options();
        self.config = Some(config.clone());
        self
    }

    /// Adds a stateless processor, run in every append transaction, in the order added.
    pub fn processor(mut self, processor: impl PgStatelessProcessor) -> Self {
        self.processors.push(Arc::new(processor));
        self
    }

    /// The store.
    ///
    /// # Errors
    /// [`ConfigError::InvalidIdentifier`] for a refused schema or channel.
    pub fn build(self) -> Result<PgEventStore, ConfigError> {
        let mut store = match &self.config {
            Some(config) => PgEventStore::from_config(self.pool, config)?,
            None => PgEventStore::with_options(self.pool, self.options)?,
        };
        let inner = Arc::get_mut(&mut store.inner).expect("a store being built is not shared yet");
        inner.processors = self.processors;
        Ok(store)
    }
}

/// The `application_name` of the store's own pool.
pub(crate) const STORE_COMPONENT: &str = "eventrail-store";

impl PgEventStore {
    /// A store on `pool` with default options (schema `eventrail`).
    #[must_use]
    pub fn new(pool: Pool) -> Self {
        Self::with_options(pool, PgStoreOptions::default()).expect("default options are valid")
    }

    /// A store on `pool` with `options`.
    ///
    /// # Errors
    /// [`ConfigError::InvalidIdentifier`] for a schema or channel that is not a plain identifier.
    pub fn with_options(pool: Pool, options: PgStoreOptions) -> Result<Self, ConfigError> {
        let mut config = crate::EventrailConfig::builder().schema(options.schema_name());
        config = match options.channel() {
            Some(channel) => config.events_channel(channel),
            None => config.without_notify(),
        };
        Self::build(pool, options, config.build()?)
    }

    /// A store on `pool` for a validated configuration: its schema and events channel; workers,
    /// `wait_for` and admins built on this store take its table names and channels too.
    ///
    /// # Errors
    /// None in practice (the configuration is validated); kept for symmetry.
    pub fn from_config(pool: Pool, config: &crate::EventrailConfig) -> Result<Self, ConfigError> {
        Self::build(pool, config.store_options(), config.clone())
    }

    fn build(
        pool: Pool,
        options: PgStoreOptions,
        config: crate::EventrailConfig,
    ) -> Result<Self, ConfigError> {
        let schema = options.validate()?;
        let channel = options.channel();
        let hinter = channel
            .clone()
            .map(|channel| super::hint::Hinter::new(channel, pool.clone()));
        Ok(Self {
            pool,
            inner: Arc::new(Inner {
                sql: Sql::new(&schema, options.schema_name()),
                hinter,
                plain_appends: std::sync::atomic::AtomicBool::new(true),
                partitions: super::partitions::Partitions::default(),
                channel,
                options,
                config,
                processors: Vec::new(),
            }),
        })
    }

    /// The configuration this store was built with (or derived from its options).
    #[must_use]
    pub fn config(&self) -> &crate::EventrailConfig {
        &self.inner.config
    }

    /// A store on a new pool for `url` (a libpq URL or `key=value` string: TLS from its
    /// `sslmode`, see [`PgConnectOptions`](crate::PgConnectOptions)), with default options. Its
    /// sessions are named `eventrail-store` unless the URL sets `application_name`.
    ///
    /// Nothing connects yet: the first operation does.
    ///
    /// # Errors
    /// [`StoreError::InvalidRequest`] when the URL does not parse or its TLS settings are
    /// refused (the source is a [`ConnectError`](crate::ConnectError)).
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let options: crate::PgConnectOptions = url.parse().map_err(|e: crate::ConnectError| {
            StoreError::InvalidRequest(format!(
                "invalid database URL: {}",
                eventrail_core::error_chain(&e)
            ))
        })?;
        Self::connect_with(&options)
    }

    /// A store on a new pool built by `connect` (TLS, timeouts, pool size), with default
    /// options. Nothing connects yet.
    ///
    /// # Errors
    /// [`StoreError::Backend`] with a [`ConnectError`](crate::ConnectError) when the TLS
    /// settings are refused (an unreadable CA file).
    pub fn connect_with(connect: &crate::PgConnectOptions) -> Result<Self, StoreError> {
        Ok(Self::new(connect.pool(STORE_COMPONENT).map_err(backend)?))
    }

    /// Applies the embedded migrations to this store's schema (see [`Migrator`](crate::Migrator)).
    ///
    /// # Errors
    /// [`MigrationError`](crate::MigrationError).
    pub async fn migrate(&self) -> Result<Vec<i32>, crate::MigrationError> {
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| crate::MigrationError::Database(e.into()))?;
        crate::Migrator::new(self.inner.options.schema_name())?
            .run(&mut client)
            .await
    }

    /// A builder: options or a configuration, and the stateless processors every append runs.
    ///
    /// ```no_run
    /// # fn f(pool: deadpool_postgres::Pool, audit: impl eventrail_store_postgres::PgStatelessProcessor) -> Result<(), eventrail_store_postgres::ConfigError> {
    /// use eventrail_store_postgres::{PgEventStore, PgStoreOptions};
    /// let store = PgEventStore::builder(pool)
    ///     .options(PgStoreOptions::new().schema("billing"))
    ///     .processor(audit)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn builder(pool: Pool) -> PgEventStoreBuilder {
        PgEventStoreBuilder {
            pool,
            options: PgStoreOptions::default(),
            config: None,
            processors: Vec::new(),
        }
    }

    /// The pool.
    #[must_use]
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The channel its appends notify, if any: a worker on this store listens on it.
    #[must_use]
    pub fn notify_channel(&self) -> Option<&str> {
        self.inner.channel.as_deref()
    }

    /// Its options.
    pub fn options(&self) -> &PgStoreOptions {
        &self.inner.options
    }

    /// How it sends statements on its pool ([`PgStoreOptions::statements`]).
    #[must_use]
    pub fn statements(&self) -> crate::Statements {
        self.inner.options.get_statements()
    }

    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| backend(crate::ConnectError::from_pool(e, &self.pool)))
    }
}
