use eventrail_store_postgres::{ConfigError, Migration, Migrator};

use crate::TableNames;

/// The worker's migration (number 2, after the event log).
pub const WORKER_MIGRATION: Migration = Migration {
    version: 2,
    name: "worker",
    template: include_str!("../../../migrations/0002_worker.sql"),
};

/// The worker's fault-handling migration (number 4): parked positions, poison skips.
pub const WORKER_FAULTS_MIGRATION: Migration = Migration {
    version: 4,
    name: "worker_faults",
    template: include_str!("../../../migrations/0004_worker_faults.sql"),
};

/// The worker's fencing migration (number 8): the leader's fencing token stored with the
/// assignments it writes, and a trigger refusing a write with a lower token than the stored one.
pub const WORKER_FENCING_MIGRATION: Migration = Migration {
    version: 8,
    name: "worker_fencing",
    template: include_str!("../../../migrations/0008_worker_fencing.sql"),
};

/// Validated, quoted, schema-qualified table names.
#[derive(Debug, Clone)]
pub(crate) struct Tables {
    pub(crate) nodes: String,
    pub(crate) assignments: String,
    pub(crate) checkpoints: String,
    pub(crate) gap_skips: String,
    pub(crate) leader: String,
    /// Where batch commits announce checkpoints (`consumer position`): `<schema>_checkpoints`.
    pub(crate) checkpoint_channel: String,
    schemas: Vec<String>,
    /// The batch's statements, built once (they run thousands of times a second while
    /// catching up, as cached prepared statements).
    pub(crate) lock_checkpoint: String,
    pub(crate) save_checkpoint: String,
    pub(crate) insert_proven_skip: String,
    pub(crate) insert_timeout_skip: String,
}

/// `name` or `schema.name` validated: the qualified name and its quoted schema.
fn qualify(
    what: &'static str,
    name: &str,
    default_schema: &str,
) -> Result<(String, String), ConfigError> {
    let q = eventrail_store_postgres::qualify_table(what, name, default_schema)?;
    Ok((q.qualified, q.schema))
}

impl Tables {
    pub(crate) fn new(names: &TableNames, default_schema: &str) -> Result<Self, ConfigError> {
        let mut schemas = Vec::new();
        let mut q = |what, name: &str| {
            let (qualified, schema) = qualify(what, name, default_schema)?;
            schemas.push(schema);
            Ok::<_, ConfigError>(qualified)
        };
        let nodes = q("worker_nodes table", &names.worker_nodes)?;
        let assignments = q("consumer_assignments table", &names.consumer_assignments)?;
        let checkpoints = q("consumer_checkpoints table", &names.consumer_checkpoints)?;
        let gap_skips = q("consumer_gap_skips table", &names.consumer_gap_skips)?;
        let leader = q("worker_leader table", &names.worker_leader)?;
        schemas.sort();
        schemas.dedup();
        Ok(Self {
            lock_checkpoint: format!(
                "SELECT position, paused OR parked_at IS NOT NULL FROM {checkpoints} WHERE consumer = $1 FOR UPDATE"
            ),
            // Fencing: the checkpoint moves only while this worker holds the assignment at this
            // epoch; the notification (for `wait_for`) goes out with the commit.
            save_checkpoint: format!(
                "WITH saved AS (
                     UPDATE {checkpoints} SET position = $2, updated_at = now(), failures = 0, last_error = NULL
                     WHERE consumer = $1
                       AND EXISTS (SELECT 1 FROM {assignments} a WHERE a.consumer = $1 AND a.worker_id = $3 AND a.epoch = $4)
                     RETURNING consumer, position
                 )
                 SELECT pg_notify($5, consumer || ' ' || position) IS NULL FROM saved"
            ),
            insert_proven_skip: format!(
                "INSERT INTO {gap_skips} (consumer, from_position, to_position, reason, observed_snapshot, candidate_xids, proven_snapshot, first_seen_at)
                 VALUES ($1, $2, $3, 'proven', $4, $5, $6, $7)"
            ),
            insert_timeout_skip: format!(
                "INSERT INTO {gap_skips} (consumer, from_position, to_position, reason, first_seen_at) VALUES ($1, $2, $3, 'timeout', $4)"
            ),
            nodes,
            assignments,
            checkpoints,
            gap_skips,
            leader,
            checkpoint_channel: checkpoint_channel(default_schema),
            schemas,
        })
    }
}

/// The channel on which batch commits in `schema` announce checkpoints (payload `consumer
/// position`), for your own LISTEN: `<schema>_checkpoints` (see
/// [`eventrail_store_postgres::keys::default_channel`]).
#[must_use]
pub fn checkpoint_channel(schema: &str) -> String {
    eventrail_store_postgres::keys::default_channel(schema, "checkpoints")
}

/// A migrator for the event store and the worker tables, with these names.
///
/// The names are fixed by the first run on a schema: migrations 2, 4 and 8 are recorded as applied,
/// so a later run with other names creates nothing (rename the tables by hand, or use another schema).
///
/// # Errors
/// [`ConfigError::InvalidIdentifier`] for a schema or table name that is not a plain identifier.
pub fn worker_migrator(schema: &str, names: &TableNames) -> Result<Migrator, ConfigError> {
    let tables = Tables::new(names, schema)?;
    let mut migrator = Migrator::new(schema)?
        .with_migrations(&[
            WORKER_MIGRATION,
            WORKER_FAULTS_MIGRATION,
            WORKER_FENCING_MIGRATION,
        ])
        .with_roles(include_str!(
            "../../../migrations/optional/roles_worker.sql"
        ))
        .with_replacement("{worker_nodes}", &tables.nodes)
        .with_replacement("{consumer_assignments}", &tables.assignments)
        .with_replacement("{consumer_checkpoints}", &tables.checkpoints)
        .with_replacement("{consumer_gap_skips}", &tables.gap_skips)
        .with_replacement("{worker_leader}", &tables.leader);
    for s in &tables.schemas {
        migrator = migrator.with_schema(s);
    }
    Ok(migrator)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn its_migrations_are_in_the_catalogue() {
        assert!(
            [
                WORKER_MIGRATION,
                WORKER_FAULTS_MIGRATION,
                WORKER_FENCING_MIGRATION
            ]
            .iter()
            .all(eventrail_store_postgres::is_known_migration)
        );
    }

    #[test]
    fn names_are_qualified_and_validated() {
        let names = TableNames {
            worker_nodes: "ops.nodes".into(),
            ..TableNames::default()
        };
        let t = Tables::new(&names, "eventrail").unwrap();
        assert_eq!(t.nodes, "\"ops\".\"nodes\"");
        assert_eq!(t.checkpoints, "\"eventrail\".\"consumer_checkpoints\"");
        let sql = worker_migrator("eventrail", &names).unwrap().print_sql();
        assert!(sql.contains("CREATE SCHEMA IF NOT EXISTS \"ops\""));
        assert!(sql.contains("CREATE TABLE \"ops\".\"nodes\""));
        assert!(!sql.contains("{worker_nodes}"));
        for bad in ["a.b.c", "x;drop", "Ops.nodes", ".nodes", "ops."] {
            let names = TableNames {
                worker_nodes: bad.into(),
                ..TableNames::default()
            };
            assert!(Tables::new(&names, "eventrail").is_err(), "{bad}");
        }
    }
}
