pub use eventrail_store_postgres::SagaTables;
use eventrail_store_postgres::{ConfigError, Migration, Migrator};

/// The sagas' migration (number 9; 8 is left to the worker's elector tables).
pub const SAGA_MIGRATION: Migration = Migration {
    version: 9,
    name: "saga",
    template: include_str!("../../../migrations/0009_saga.sql"),
};

/// Validated, quoted, schema-qualified names.
#[derive(Debug, Clone)]
pub(crate) struct Tables {
    pub(crate) instances: String,
    pub(crate) steps: String,
    pub(crate) signals: String,
    pub(crate) definitions: String,
    pub(crate) runners: String,
    /// Where runners are woken when a step becomes due: `<schema>_sagas`.
    pub(crate) channel: String,
    schemas: Vec<String>,
}

impl Tables {
    pub(crate) fn new(names: &SagaTables, schema: &str) -> Result<Self, ConfigError> {
        let mut schemas = Vec::new();
        let mut q = |what, name: &str| {
            let t = eventrail_store_postgres::qualify_table(what, name, schema)?;
            schemas.push(t.schema);
            Ok::<_, ConfigError>(t.qualified)
        };
        let instances = q("saga_instances table", &names.saga_instances)?;
        let steps = q("saga_steps table", &names.saga_steps)?;
        let signals = q("saga_signals table", &names.saga_signals)?;
        let definitions = q("saga_definitions table", &names.saga_definitions)?;
        let runners = q("saga_runners table", &names.saga_runners)?;
        schemas.sort();
        schemas.dedup();
        Ok(Self {
            instances,
            steps,
            signals,
            definitions,
            runners,
            channel: eventrail_store_postgres::keys::default_channel(schema, "sagas"),
            schemas,
        })
    }
}

/// Adds the sagas' migration, with these table names, to `migrator` (for example one from
/// `eventrail_worker::worker_migrator`), so that one runner applies everything.
///
/// # Errors
/// [`ConfigError::InvalidIdentifier`] for a schema or table name that is not a plain identifier.
pub fn with_saga_migration(
    migrator: Migrator,
    schema: &str,
    names: &SagaTables,
) -> Result<Migrator, ConfigError> {
    let t = Tables::new(names, schema)?;
    let mut migrator = migrator
        .with_migrations(&[SAGA_MIGRATION])
        .with_replacement("{saga_instances}", &t.instances)
        .with_replacement("{saga_steps}", &t.steps)
        .with_replacement("{saga_signals}", &t.signals)
        .with_replacement("{saga_definitions}", &t.definitions)
        .with_replacement("{saga_runners}", &t.runners);
    for s in &t.schemas {
        migrator = migrator.with_schema(s);
    }
    Ok(migrator)
}

/// A migrator for the event store and the saga tables (the sagas record their history as
/// events, so they need the store).
///
/// # Errors
/// [`ConfigError::InvalidIdentifier`] for a schema or table name that is not a plain identifier.
pub fn saga_migrator(schema: &str, names: &SagaTables) -> Result<Migrator, ConfigError> {
    with_saga_migration(Migrator::new(schema)?, schema, names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn its_migration_is_in_the_catalogue() {
        assert!(eventrail_store_postgres::is_known_migration(
            &SAGA_MIGRATION
        ));
    }

    #[test]
    fn names_are_qualified_and_validated() {
        let names = SagaTables {
            saga_steps: "ops.steps".into(),
            ..SagaTables::default()
        };
        let sql = saga_migrator("eventrail", &names).unwrap().print_sql();
        assert!(sql.contains("CREATE TABLE \"ops\".\"steps\""));
        assert!(sql.contains("CREATE TABLE \"eventrail\".\"saga_instances\""));
        assert!(!sql.contains("{saga_"));
        for bad in ["a.b.c", "x;drop", "Steps"] {
            let names = SagaTables {
                saga_steps: bad.into(),
                ..SagaTables::default()
            };
            assert!(saga_migrator("eventrail", &names).is_err(), "{bad}");
        }
    }
}
