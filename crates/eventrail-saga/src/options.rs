use std::time::Duration;

use eventrail_store_postgres::EventrailConfig;

use crate::SagaTables;

/// Where the saga tables are and how runners claim: a consuming builder.
#[derive(Debug, Clone)]
#[must_use]
pub struct SagaOptions {
    pub(crate) schema: String,
    pub(crate) tables: SagaTables,
    pub(crate) lease: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) concurrency: usize,
    pub(crate) heartbeat: Duration,
}

impl Default for SagaOptions {
    fn default() -> Self {
        Self {
            schema: "eventrail".into(),
            tables: SagaTables::default(),
            lease: Duration::from_secs(10),
            poll_interval: Duration::from_millis(500),
            concurrency: 16,
            heartbeat: Duration::from_secs(2),
        }
    }
}

impl SagaOptions {
    /// The defaults: schema `eventrail`, default table names, a 10 s lease, 16 steps at once.
    pub fn new() -> Self {
        Self::default()
    }

    /// The schema and saga table names of `config` (shared with the store, the worker, the
    /// outbox and the CLI).
    pub fn from_config(config: &EventrailConfig) -> Self {
        Self::new()
            .schema(config.schema())
            .tables(config.saga_tables().clone())
    }

    /// The schema of the saga tables (and of the event store the sagas record into).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Other table names.
    pub fn tables(mut self, tables: SagaTables) -> Self {
        self.tables = tables;
        self
    }

    /// How long a claimed step is a runner's without renewal (renewed every third of it while
    /// the step runs). A runner that dies loses its steps after at most this long.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(300));
        self
    }

    /// The longest wait between looks for due steps (timers, retries, lost leases) when no
    /// notification arrives.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// How many steps one runner runs at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_take_the_configurations_schema_and_saga_tables() {
        let config = EventrailConfig::builder()
            .schema("billing")
            .saga_tables(SagaTables {
                saga_steps: "ops.steps".into(),
                ..SagaTables::default()
            })
            .build()
            .unwrap();
        let o = SagaOptions::from_config(&config);
        assert_eq!(o.schema, "billing");
        assert_eq!(o.tables.saga_steps, "ops.steps");
        let t = crate::tables::Tables::new(&o.tables, &o.schema).unwrap();
        assert_eq!(t.steps, "\"ops\".\"steps\"");
        assert_eq!(t.instances, "\"billing\".\"saga_instances\"");
    }
}
