use tokio_postgres::Client;
use tracing::{info, instrument};

use crate::options::validate_identifier;
use crate::{ConfigError, MigrationError};

/// One embedded migration: a numbered SQL template in which `{schema}` stands for the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Its number; migrations apply in ascending order.
    pub version: i32,
    /// A short name.
    pub name: &'static str,
    /// The SQL template.
    pub template: &'static str,
}

/// The event store's migrations, from the workspace's `migrations/` folder.
const EVENT_STORE_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "event_log",
        template: include_str!("../../../migrations/0001_event_log.sql"),
    },
    // 2–5 belong to the worker and the outbox; the numbering is shared.
    Migration {
        version: 6,
        name: "append_isolation",
        template: include_str!("../../../migrations/0006_append_isolation.sql"),
    },
];

const ROLES_TEMPLATE: &str = include_str!("../../../migrations/optional/roles.sql");

/// Advisory lock class of the migration runner (the key is the schema's hash).
const MIGRATION_LOCK_CLASS: i32 = 1_701_147_136;

/// Applies the embedded migrations to one schema, once, under an advisory lock, recording a
/// checksum of each; refuses to run when an applied migration was changed.
///
/// ```no_run
/// # async fn f(client: &mut tokio_postgres::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let applied = eventrail_store_postgres::Migrator::new("eventrail")?.run(client).await?;
/// println!("applied {applied:?}");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Migrator {
    schema: String,
    quoted: String,
    migrations: Vec<Migration>,
    replacements: Vec<(String, String)>,
    extra_schemas: Vec<String>,
}

impl Migrator {
    /// A runner for `schema` with the event store's migrations.
    ///
    /// # Errors
    /// [`ConfigError::InvalidIdentifier`] for a schema name that is not a plain identifier.
    pub fn new(schema: &str) -> Result<Self, ConfigError> {
        Ok(Self {
            quoted: validate_identifier("schema", schema)?,
            schema: schema.to_owned(),
            migrations: EVENT_STORE_MIGRATIONS.to_vec(),
            replacements: Vec::new(),
            extra_schemas: Vec::new(),
        })
    }

    /// Adds migrations of another component (they share the numbering and the checksum table).
    #[must_use]
    pub fn with_migrations(mut self, migrations: &[Migration]) -> Self {
        self.migrations.extend_from_slice(migrations);
        self.migrations.sort_by_key(|m| m.version);
        self
    }

    /// Replaces `placeholder` (such as `{worker_nodes}`) by `sql` in every migration. `sql` must
    /// be a validated, quoted name (see [`validate_identifier`](crate::validate_identifier)).
    #[must_use]
    pub fn with_replacement(mut self, placeholder: &str, sql: &str) -> Self {
        self.replacements
            .push((placeholder.to_owned(), sql.to_owned()));
        self
    }

    /// Also creates this (validated, quoted) schema, for tables placed outside the main schema.
    #[must_use]
    pub fn with_schema(mut self, quoted_schema: &str) -> Self {
        if quoted_schema != self.quoted && !self.extra_schemas.iter().any(|s| s == quoted_schema) {
            self.extra_schemas.push(quoted_schema.to_owned());
        }
        self
    }

    /// The migrations this runner applies, in order.
    #[must_use]
    pub fn migrations(&self) -> &[Migration] {
        &self.migrations
    }

    fn render(&self, template: &str) -> String {
        let mut sql = template.replace("{schema}", &self.quoted);
        for (placeholder, value) in &self.replacements {
            sql = sql.replace(placeholder.as_str(), value);
        }
        sql
    }

    fn create_schemas(&self) -> String {
        std::iter::once(&self.quoted)
            .chain(&self.extra_schemas)
            .map(|s| format!("CREATE SCHEMA IF NOT EXISTS {s};\n"))
            .collect()
    }

    /// The whole schema as one SQL script, for users who run their own migration tool.
    #[must_use]
    pub fn print_sql(&self) -> String {
        let mut sql = self.create_schemas();
        for m in &self.migrations {
            sql.push_str(&format!("\n-- migration {}: {}\n", m.version, m.name));
            sql.push_str(&self.render(m.template));
        }
        sql
    }

    /// The optional least-privilege roles `<prefix>_reader`, `<prefix>_writer`, `<prefix>_admin`.
    ///
    /// # Errors
    /// [`ConfigError::InvalidIdentifier`] for a prefix that is not a plain identifier.
    pub fn roles_sql(&self, role_prefix: &str) -> Result<String, ConfigError> {
        validate_identifier("role prefix", role_prefix)?;
        if role_prefix.len() > 56 {
            return Err(ConfigError::InvalidIdentifier {
                what: "role prefix",
                value: role_prefix.to_owned(),
                reason: "it is longer than 56 bytes (role names add a suffix)",
            });
        }
        Ok(self
            .render(ROLES_TEMPLATE)
            .replace("{role_prefix}", role_prefix))
    }

    /// Creates (or updates the grants of) the optional roles.
    ///
    /// # Errors
    /// [`MigrationError::Config`] for a bad prefix, [`MigrationError::Database`] otherwise.
    pub async fn install_roles(
        &self,
        client: &mut Client,
        role_prefix: &str,
    ) -> Result<(), MigrationError> {
        let sql = self.roles_sql(role_prefix)?;
        let tx = client.transaction().await.map_err(db)?;
        tx.batch_execute(&sql).await.map_err(db)?;
        tx.commit().await.map_err(db)
    }

    /// Applies every migration not applied yet and returns their versions.
    ///
    /// Concurrent runners wait for each other on an advisory lock; each migration commits in its
    /// own transaction together with its record.
    ///
    /// # Errors
    /// [`MigrationError::ChecksumMismatch`] when an applied migration changed,
    /// [`MigrationError::Database`] when a statement fails (that migration is rolled back).
    #[instrument(skip_all, fields(schema = %self.schema))]
    pub async fn run(&self, client: &mut Client) -> Result<Vec<i32>, MigrationError> {
        client
            .execute(
                "SELECT pg_advisory_lock($1, hashtext($2))",
                &[&MIGRATION_LOCK_CLASS, &self.schema],
            )
            .await
            .map_err(db)?;
        let result = self.run_locked(client).await;
        let unlocked = client
            .execute(
                "SELECT pg_advisory_unlock($1, hashtext($2))",
                &[&MIGRATION_LOCK_CLASS, &self.schema],
            )
            .await;
        let applied = result?;
        unlocked.map_err(db)?;
        Ok(applied)
    }

    async fn run_locked(&self, client: &mut Client) -> Result<Vec<i32>, MigrationError> {
        client
            .batch_execute(&format!(
                "{create_schemas}
                 CREATE TABLE IF NOT EXISTS {schema}.eventrail_migrations (
                     version integer PRIMARY KEY,
                     name text NOT NULL,
                     checksum text NOT NULL,
                     applied_at timestamptz NOT NULL DEFAULT now()
                 );",
                create_schemas = self.create_schemas(),
                schema = self.quoted
            ))
            .await
            .map_err(db)?;
        let table = format!("{}.eventrail_migrations", self.quoted);
        let mut applied = Vec::new();
        for m in &self.migrations {
            let tx = client.transaction().await.map_err(db)?;
            let row = tx
                .query_opt(
                    &format!("SELECT checksum = md5($2) FROM {table} WHERE version = $1"),
                    &[&m.version, &m.template],
                )
                .await
                .map_err(db)?;
            match row.map(|r| r.get::<_, bool>(0)) {
                Some(true) => continue,
                Some(false) => {
                    return Err(MigrationError::ChecksumMismatch {
                        version: m.version,
                        name: m.name.to_owned(),
                    });
                }
                None => {}
            }
            tx.batch_execute(&self.render(m.template))
                .await
                .map_err(db)?;
            tx.execute(
                &format!("INSERT INTO {table} (version, name, checksum) VALUES ($1, $2, md5($3))"),
                &[&m.version, &m.name, &m.template],
            )
            .await
            .map_err(db)?;
            tx.commit().await.map_err(db)?;
            info!(version = m.version, name = m.name, "applied migration");
            applied.push(m.version);
        }
        Ok(applied)
    }
}

fn db(error: tokio_postgres::Error) -> MigrationError {
    MigrationError::Database(error.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_placeholder() {
        let m = Migrator::new("my_schema").unwrap();
        let sql = m.print_sql();
        assert!(!sql.contains("{schema}"));
        assert!(sql.contains("\"my_schema\".events"));
        let roles = m.roles_sql("app").unwrap();
        assert!(!roles.contains("{role_prefix}") && !roles.contains("{schema}"));
        assert!(roles.contains("app_writer"));
        assert!(m.roles_sql("App; DROP").is_err());
        assert!(Migrator::new("x\"; DROP SCHEMA public; --").is_err());
    }
}
