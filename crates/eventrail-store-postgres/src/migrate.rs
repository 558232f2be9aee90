use std::time::Duration;

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tracing::{info, instrument, warn};

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
    Migration {
        version: 7,
        name: "append_keys_and_privileges",
        template: include_str!("../../../migrations/0007_append_keys_and_privileges.sql"),
    },
    STREAM_LAST_POSITION,
    APPEND_PROBES,
];

/// Migration 13: on a partitioned log, `streams` keeps each stream's last position. A no-op on
/// the one table; `partition_by_position` runs it again after migration 10.
const STREAM_LAST_POSITION: Migration = Migration {
    version: 13,
    name: "stream_last_position",
    template: include_str!("../../../migrations/0013_stream_last_position.sql"),
};

/// Migration 14: `append_events` probes versions and category heads by index descent, not
/// `max()`; `partition_by_position` runs it again after migration 10 (which rewrites the function).
const APPEND_PROBES: Migration = Migration {
    version: 14,
    name: "append_version_probe",
    template: include_str!("../../../migrations/0014_append_version_probe.sql"),
};

/// Every migration any eventrail component ships, by version (the numbering is shared). An applied
/// migration missing here was written by a newer eventrail: this binary refuses to run on it.
const KNOWN_MIGRATIONS: &[(i32, &str)] = &[
    (1, "event_log"),
    (2, "worker"),
    (3, "outbox"),
    (4, "worker_faults"),
    (5, "outbox_destinations"),
    (6, "append_isolation"),
    (7, "append_keys_and_privileges"),
    (8, "worker_fencing"),
    (9, "saga"),
    (PARTITION_MIGRATION.version, PARTITION_MIGRATION.name),
    (11, "outbox_keys"),
    (12, "outbox_keys_progress"),
    (STREAM_LAST_POSITION.version, STREAM_LAST_POSITION.name),
    (APPEND_PROBES.version, APPEND_PROBES.name),
];

/// The optional conversion of the log to a table partitioned by position range
/// ([`Migrator::partition_by_position`]); `run` never applies it.
const PARTITION_MIGRATION: Migration = Migration {
    version: 10,
    name: "partition_by_position",
    template: include_str!("../../../migrations/optional/0010_partition_by_position.sql"),
};

/// The statement with which migration 7's text of `append_events` reads a stream's version. On the
/// plain table migration 14 replaces it by an index descent (the same text is its search string);
/// on a partitioned log the function reads the `streams` row instead.
const VERSION_PROBE: &str = "SELECT max(e.stream_version) INTO v_current FROM {schema}.events e WHERE e.stream_name = p_stream;";
const VERSION_FROM_STREAMS: &str =
    "SELECT s.version INTO v_current FROM {schema}.streams s WHERE s.stream_name = p_stream;";

/// Migration 7's `append_events`, reading versions from `streams` (see migration 10).
fn append_events_on_streams() -> String {
    let template = EVENT_STORE_MIGRATIONS
        .iter()
        .find(|m| m.name == "append_keys_and_privileges")
        .map_or("", |m| m.template);
    debug_assert!(template.contains(VERSION_PROBE));
    template.replace(VERSION_PROBE, VERSION_FROM_STREAMS)
}

/// Whether `migration` is in the catalogue of eventrail's migrations (each component checks
/// its own in a test, so that the catalogue cannot fall behind).
#[must_use]
pub fn is_known_migration(migration: &Migration) -> bool {
    KNOWN_MIGRATIONS.contains(&(migration.version, migration.name))
}

/// Where a migration stands in a database (see [`Migrator::info`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MigrationState {
    /// Applied, with the checksum of this binary's SQL.
    Applied,
    /// Applied with another checksum: someone edited an applied migration.
    Changed,
    /// Part of this runner, not applied yet.
    Pending,
    /// Applied by another eventrail component (the worker, the outbox) sharing the schema.
    OtherComponent,
    /// Applied, but unknown to this binary: a newer eventrail migrated this database.
    Unknown,
}

impl MigrationState {
    /// A lowercase word for listings.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Changed => "changed",
            Self::Pending => "pending",
            Self::OtherComponent => "other component",
            Self::Unknown => "unknown",
        }
    }
}

/// One row of [`Migrator::info`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationInfo {
    /// Its version.
    pub version: i32,
    /// Its name.
    pub name: String,
    /// Where it stands.
    pub state: MigrationState,
    /// The checksum (md5 of its SQL template) this runner would record, when it is this runner's.
    pub checksum: Option<String>,
    /// The checksum recorded when it was applied, if it was.
    pub applied_checksum: Option<String>,
    /// When it was applied (the database's text form), if it was.
    pub applied_at: Option<String>,
}

const ROLES_TEMPLATE: &str = include_str!("../../../migrations/optional/roles.sql");

/// Advisory lock class of the migration runner (the key is the schema's hash).
const MIGRATION_LOCK_CLASS: i32 = crate::keys::MIGRATION_LOCK;

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
    roles: Vec<&'static str>,
    lock_timeout: Option<Duration>,
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
            roles: vec![ROLES_TEMPLATE],
            lock_timeout: None,
        })
    }

    /// Gives up waiting for another migrator's lock after `timeout`, with
    /// [`MigrationError::Locked`] naming the holder (default: wait as long as it takes, logging
    /// who holds it).
    #[must_use]
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = Some(timeout);
        self
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

    /// Adds a component's part of the optional roles (a template with the same placeholders as
    /// its migrations, plus `{role_prefix}`), applied after the event store's.
    #[must_use]
    pub fn with_roles(mut self, template: &'static str) -> Self {
        self.roles.push(template);
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
        let mut sql = template.replace("{schema}", &self.quoted).replace(
            "{lock_namespace}",
            &format!("'{}'", crate::keys::lock_namespace(&self.schema)),
        );
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

    fn bookkeeping_table(&self) -> String {
        format!("{}.eventrail_migrations", self.quoted)
    }

    fn bookkeeping_ddl(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (
                 version integer PRIMARY KEY,
                 name text NOT NULL,
                 checksum text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );\n",
            self.bookkeeping_table()
        )
    }

    /// The whole schema as one SQL script, for users who run their own migration tool. It also
    /// records each migration with its checksum, as [`Migrator::run`] does, so that a later
    /// `run` (or `eventrail migrate`) finds them applied.
    #[must_use]
    pub fn print_sql(&self) -> String {
        let mut sql = self.create_schemas();
        sql.push_str(&self.bookkeeping_ddl());
        for m in &self.migrations {
            sql.push_str(&self.recorded(m, &self.render(m.template)));
        }
        sql
    }

    /// `body`, the SQL of migration `m`, headed by its name and followed by its record.
    fn recorded(&self, m: &Migration, body: &str) -> String {
        format!(
            "\n-- migration {}: {}\n{body}\nINSERT INTO {} (version, name, checksum) VALUES ({}, '{}', '{}');\n",
            m.version,
            m.name,
            self.bookkeeping_table(),
            m.version,
            m.name,
            checksum(m)
        )
    }

    /// Every migration this runner knows and every one the database recorded, by version: which
    /// are applied (and with which checksum), pending, applied by another component, or
    /// unknown to this binary.
    ///
    /// # Errors
    /// [`MigrationError::Database`] when the bookkeeping cannot be read.
    pub async fn info(&self, client: &Client) -> Result<Vec<MigrationInfo>, MigrationError> {
        let exists: bool = client
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[&self.bookkeeping_table()],
            )
            .await
            .map_err(db)?
            .get(0);
        let applied = if exists {
            client
                .query(
                    &format!(
                        "SELECT version, name, checksum, applied_at::text FROM {} ORDER BY version",
                        self.bookkeeping_table()
                    ),
                    &[],
                )
                .await
                .map_err(db)?
        } else {
            Vec::new()
        };
        let mut out: Vec<MigrationInfo> = self
            .migrations
            .iter()
            .map(|m| MigrationInfo {
                version: m.version,
                name: m.name.to_owned(),
                state: MigrationState::Pending,
                checksum: Some(checksum(m)),
                applied_checksum: None,
                applied_at: None,
            })
            .collect();
        for row in applied {
            let (version, name, checksum, at): (i32, String, String, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            if let Some(known) = out.iter_mut().find(|i| i.version == version) {
                known.state = if known.checksum.as_deref() == Some(checksum.as_str()) {
                    MigrationState::Applied
                } else {
                    MigrationState::Changed
                };
                known.applied_checksum = Some(checksum);
                known.applied_at = Some(at);
            } else {
                let state = if version == PARTITION_MIGRATION.version {
                    if checksum == self::checksum(&PARTITION_MIGRATION) {
                        MigrationState::Applied
                    } else {
                        MigrationState::Changed
                    }
                } else if KNOWN_MIGRATIONS.contains(&(version, name.as_str())) {
                    MigrationState::OtherComponent
                } else {
                    MigrationState::Unknown
                };
                out.push(MigrationInfo {
                    version,
                    name,
                    state,
                    checksum: None,
                    applied_checksum: Some(checksum),
                    applied_at: Some(at),
                });
            }
        }
        out.sort_by_key(|i| i.version);
        Ok(out)
    }

    /// The optional least-privilege roles `<prefix>_reader`, `_writer`, `_worker` and `_admin`,
    /// with the parts of every component this runner migrates (see the README for what each
    /// may do).
    ///
    /// # Errors
    /// [`ConfigError::InvalidIdentifier`] for a prefix that is not a plain identifier.
    pub fn roles_sql(&self, role_prefix: &str) -> Result<String, ConfigError> {
        validate_identifier("role prefix", role_prefix)?;
        if role_prefix.len() > 50 {
            return Err(ConfigError::InvalidIdentifier {
                what: "role prefix",
                value: role_prefix.to_owned(),
                reason: "it is longer than 50 bytes (role names add a suffix)",
            });
        }
        let mut sql = String::new();
        for template in &self.roles {
            sql.push_str(&self.render(template));
            sql.push('\n');
        }
        // Tables a component placed in a schema of their own.
        for schema in &self.extra_schemas {
            sql.push_str(&format!(
                "GRANT USAGE ON SCHEMA {schema} TO {role_prefix}_reader, {role_prefix}_admin;\n"
            ));
        }
        Ok(sql.replace("{role_prefix}", role_prefix))
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
        self.lock(client).await?;
        let result = self.run_locked(client).await;
        self.unlock(client, result).await
    }

    /// Releases the migration lock, then returns `result` (its error first, if both failed).
    async fn unlock<T>(
        &self,
        client: &Client,
        result: Result<T, MigrationError>,
    ) -> Result<T, MigrationError> {
        let unlocked = client
            .execute(
                "SELECT pg_advisory_unlock($1, hashtext($2))",
                &[&MIGRATION_LOCK_CLASS, &self.schema],
            )
            .await;
        let value = result?;
        unlocked.map_err(db)?;
        Ok(value)
    }

    /// Takes the migration lock of this schema; while another migrator holds it, says who.
    async fn lock(&self, client: &Client) -> Result<(), MigrationError> {
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
            [&MIGRATION_LOCK_CLASS, &self.schema];
        let taken: bool = client
            .query_one("SELECT pg_try_advisory_lock($1, hashtext($2))", &params)
            .await
            .map_err(db)?
            .get(0);
        if taken {
            return Ok(());
        }
        let holder = client
            .query_opt(
                "SELECT a.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                  WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1::int4::oid
                    AND l.objid = hashtext($2)::oid AND l.objsubid = 2
                    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &params,
            )
            .await
            .map_err(db)?;
        let (pid, application_name): (Option<i32>, Option<String>) =
            holder.map_or((None, None), |r| (Some(r.get(0)), Some(r.get(1))));
        warn!(
            schema = %self.schema,
            holder_pid = ?pid,
            holder_application = ?application_name,
            "waiting for the migration lock, held by another migrator"
        );
        let Some(timeout) = self.lock_timeout else {
            client
                .execute("SELECT pg_advisory_lock($1, hashtext($2))", &params)
                .await
                .map_err(db)?;
            return Ok(());
        };
        let millis = i64::try_from(timeout.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        client
            .batch_execute(&format!("SET lock_timeout = {millis}"))
            .await
            .map_err(db)?;
        let waited = client
            .execute("SELECT pg_advisory_lock($1, hashtext($2))", &params)
            .await;
        client
            .batch_execute("RESET lock_timeout")
            .await
            .map_err(db)?;
        match waited {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                Err(MigrationError::Locked {
                    pid,
                    application_name,
                })
            }
            Err(e) => Err(db(e)),
        }
    }

    async fn run_locked(&self, client: &mut Client) -> Result<Vec<i32>, MigrationError> {
        client
            .batch_execute(&format!(
                "{}{}",
                self.create_schemas(),
                self.bookkeeping_ddl()
            ))
            .await
            .map_err(db)?;
        let table = self.bookkeeping_table();
        // A database migrated by a newer eventrail is not "up to date" for this one.
        if let Some(unknown) = self
            .info(client)
            .await?
            .into_iter()
            .find(|i| i.state == MigrationState::Unknown)
        {
            return Err(MigrationError::UnknownMigration {
                version: unknown.version,
                name: unknown.name,
            });
        }
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

impl Migrator {
    /// Converts the log to a table partitioned by position range, `partition_size` positions per
    /// partition (optional migration 10), after applying every pending migration. Returns
    /// `false` when the log was already partitioned with that size.
    ///
    /// Stream versions and event ids are then kept in tables of their own (`streams`,
    /// `event_ids`), and new partitions are attached ahead of the sequence by the store (see
    /// the README, "Very large logs"). The conversion rewrites the log in one transaction under
    /// an `ACCESS EXCLUSIVE` lock: appends and reads wait for it. Run it on a new or small log,
    /// or in a maintenance window. Re-run `install_roles` afterwards if you use the roles.
    ///
    /// # Errors
    /// [`MigrationError::InvalidPartitionSize`], [`MigrationError::PartitionedDifferently`],
    /// and those of [`run`](Self::run).
    #[instrument(skip_all, fields(schema = %self.schema, partition_size = partition_size))]
    pub async fn partition_by_position(
        &self,
        client: &mut Client,
        partition_size: u64,
    ) -> Result<bool, MigrationError> {
        let size = partition_size_sql(partition_size)?;
        self.lock(client).await?;
        let result = async {
            self.run_locked(client).await?;
            self.partition_locked(client, size).await
        }
        .await;
        self.unlock(client, result).await
    }

    /// The SQL of [`partition_by_position`](Self::partition_by_position) for your own migration
    /// tool: run it in one transaction after [`print_sql`](Self::print_sql)'s script. It
    /// records migration 10 with its checksum, as `partition_by_position` does.
    ///
    /// # Errors
    /// [`MigrationError::InvalidPartitionSize`].
    pub fn partition_sql(&self, partition_size: u64) -> Result<String, MigrationError> {
        Ok(self.partition_script(partition_size_sql(partition_size)?))
    }

    /// Migration 10, then `append_events` reading versions from `streams`, migration 13's last
    /// positions (applied before as a no-op) and migration 14's category probe (the function
    /// was just rewritten from migration 7's text), then its record.
    fn partition_script(&self, size: i64) -> String {
        let body = format!(
            "{}\n{}\n{}\n{}",
            self.render(PARTITION_MIGRATION.template)
                .replace("{partition_size}", &size.to_string()),
            self.render(&append_events_on_streams()),
            self.render(STREAM_LAST_POSITION.template),
            self.render(APPEND_PROBES.template)
        );
        self.recorded(&PARTITION_MIGRATION, &body)
    }

    async fn partition_locked(
        &self,
        client: &mut Client,
        size: i64,
    ) -> Result<bool, MigrationError> {
        let table = self.bookkeeping_table();
        let partitioning = format!("{}.event_partitioning", self.quoted);
        let tx = client.transaction().await.map_err(db)?;
        let done: bool = tx
            .query_one(
                &format!("SELECT EXISTS (SELECT FROM {table} WHERE version = $1)"),
                &[&PARTITION_MIGRATION.version],
            )
            .await
            .map_err(db)?
            .get(0);
        if done {
            let current: i64 = tx
                .query_one(&format!("SELECT partition_size FROM {partitioning}"), &[])
                .await
                .map_err(db)?
                .get(0);
            return if current == size {
                Ok(false)
            } else {
                Err(MigrationError::PartitionedDifferently {
                    partition_size: u64::try_from(current).unwrap_or_default(),
                })
            };
        }
        tx.batch_execute(&self.partition_script(size))
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        info!(
            partition_size = size,
            "partitioned the log by position range"
        );
        Ok(true)
    }
}

/// A partition size as SQL takes it: at least 1, at most `i64::MAX`.
fn partition_size_sql(size: u64) -> Result<i64, MigrationError> {
    i64::try_from(size)
        .ok()
        .filter(|s| *s > 0)
        .ok_or(MigrationError::InvalidPartitionSize { size })
}

/// The checksum recorded for a migration: the md5 of its template, in hex (as PostgreSQL's
/// `md5()` gives it, which older versions recorded).
fn checksum(m: &Migration) -> String {
    use md5::Digest;
    md5::Md5::digest(m.template.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn db(error: tokio_postgres::Error) -> MigrationError {
    MigrationError::Database(Box::new(crate::database_error(error)))
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

    #[test]
    fn checksums_are_postgres_md5_hex() {
        let m = Migration {
            version: 0,
            name: "x",
            template: "abc",
        };
        // SELECT md5('abc')
        assert_eq!(checksum(&m), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn the_partitioned_append_events_reads_versions_from_streams() {
        let sql = append_events_on_streams();
        assert!(sql.contains(VERSION_FROM_STREAMS) && !sql.contains(VERSION_PROBE));
        assert!(sql.contains("CREATE OR REPLACE FUNCTION {schema}.append_events("));
    }

    #[test]
    fn the_store_s_migrations_are_in_the_catalogue() {
        assert!(EVENT_STORE_MIGRATIONS.iter().all(is_known_migration));
    }
}
