//! Per-test databases cloned from a migrated template.
//!
//! The template's name carries a hash of the migrations, so a changed migration gets a new
//! template. Creating the template and cloning it happen under an advisory lock, because
//! PostgreSQL refuses to clone a database while another session is connected to it. A test's
//! database is dropped when the test passes and kept (with its name printed) when it fails.

use anyhow::Context;
use deadpool_postgres::Pool;
use eventrail_outbox::{OutboxTables, with_outbox_migration};
use eventrail_saga::{SagaTables, with_saga_migration};
use eventrail_store_postgres::{Migrator, PgEventStore, PgStoreOptions};
use eventrail_worker::{TableNames, worker_migrator};
use tokio_postgres::{Client, NoTls};

/// Advisory lock key of the harness (on the admin database).
const HARNESS_LOCK: i64 = 0x6576_656e_7472_6c00;

/// The template's migrations: the event store, the worker tables, the outbox and the sagas. The
/// fingerprint below covers every migration this runner applies.
pub(crate) fn migrator() -> anyhow::Result<Migrator> {
    let everything = worker_migrator("eventrail", &TableNames::default())?;
    let everything = with_outbox_migration(everything, "eventrail", &OutboxTables::default())?;
    Ok(with_saga_migration(
        everything,
        "eventrail",
        &SagaTables::default(),
    )?)
}

/// Logs of the code under test, shown for failing tests: RUST_LOG=debug for more.
pub(crate) fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub(crate) struct TestDb {
    pub(crate) name: String,
    pub(crate) url: String,
    pub(crate) pool: Pool,
    admin_url: String,
}

pub(crate) async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(connection);
    Ok(client)
}

/// The layouts of the log that the store must behave the same on: one table, and a log
/// partitioned every ten positions (small, so that tests cross partitions).
pub(crate) const LAYOUTS: [Option<u64>; 2] = [None, Some(10)];

impl TestDb {
    /// A fresh database with the event store migrated into schema `eventrail`.
    pub(crate) async fn new() -> anyhow::Result<Self> {
        Self::on(&eventrail_devdb::database_url().await?).await
    }

    /// [`TestDb::new`] on the server of `admin_url` (a throwaway cluster's).
    pub(crate) async fn on(admin_url: &str) -> anyhow::Result<Self> {
        init_logs();
        let admin = connect(admin_url).await?;
        let fingerprint: String = {
            let all: String = migrator()?
                .migrations()
                .iter()
                .map(|m| m.template)
                .collect();
            admin
                .query_one("SELECT left(md5($1), 12)", &[&all])
                .await?
                .get(0)
        };
        let template = format!("eventrail_tpl_{fingerprint}");
        Self::clone_of(
            admin_url,
            &admin,
            &template,
            "eventrail_test",
            |url| async move {
                let mut client = connect(&url).await?;
                migrator()?.run(&mut client).await?;
                anyhow::Ok(())
            },
        )
        .await
    }

    /// A fresh database like [`TestDb::new`], with the log partitioned by position range,
    /// `partition_size` positions per partition.
    pub(crate) async fn partitioned(partition_size: u64) -> anyhow::Result<Self> {
        let db = Self::new().await?;
        db.partition(partition_size).await?;
        Ok(db)
    }

    /// [`TestDb::new`] with the log in one table (`None`), or [`TestDb::partitioned`].
    pub(crate) async fn with_layout(partition_size: Option<u64>) -> anyhow::Result<Self> {
        match partition_size {
            None => Self::new().await,
            Some(size) => Self::partitioned(size).await,
        }
    }

    /// Partitions this database's log (see [`Migrator::partition_by_position`]).
    pub(crate) async fn partition(&self, partition_size: u64) -> anyhow::Result<bool> {
        let mut client = connect(&self.url).await?;
        Ok(migrator()?
            .partition_by_position(&mut client, partition_size)
            .await?)
    }

    /// A new database cloned from `template`, which is built first with `build` when missing.
    ///
    /// Everything happens under the harness lock: PostgreSQL refuses to clone a database while
    /// another session is connected to it, and builds may create cluster-wide roles. The template
    /// is built under a temporary name and renamed when complete, so a failed build never leaves
    /// a half-built template behind.
    async fn clone_of<F, Fut>(
        admin_url: &str,
        admin: &Client,
        template: &str,
        prefix: &str,
        build: F,
    ) -> anyhow::Result<Self>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        admin
            .execute("SELECT pg_advisory_lock($1)", &[&HARNESS_LOCK])
            .await?;
        let created = async {
            let exists = admin
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&template])
                .await?
                .is_some();
            if !exists {
                let building = format!("{template}_building");
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
                    .await?;
                admin
                    .batch_execute(&format!("CREATE DATABASE {building}"))
                    .await?;
                if let Err(e) = build(eventrail_devdb::with_database(admin_url, &building)?).await {
                    admin
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
                        .await?;
                    return Err(e);
                }
                // The build's connections must be gone before the rename.
                admin
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                        &[&building],
                    )
                    .await?;
                admin
                    .batch_execute(&format!("ALTER DATABASE {building} RENAME TO {template}"))
                    .await?;
            }
            admin
                .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
                .await?;
            anyhow::Ok(())
        }
        .await;
        admin
            .execute("SELECT pg_advisory_unlock($1)", &[&HARNESS_LOCK])
            .await?;
        created?;
        let url = eventrail_devdb::with_database(admin_url, &name)?;
        let pool = eventrail_devdb::pool(&url, 24)?;
        Ok(Self {
            name,
            url,
            pool,
            admin_url: admin_url.to_owned(),
        })
    }

    /// From the next session on, plans every prepared statement generically (as PostgreSQL does
    /// after five executions when the generic plan looks no dearer: array parameters estimated
    /// at a few rows) and logs each plan with its row counts (`auto_explain`). For a database on
    /// a cluster of its own, whose `server.log` [`join_filter_rows`] then reads.
    pub(crate) async fn log_generic_plans(&self) -> anyhow::Result<()> {
        self.client()
            .await?
            .batch_execute(&format!(
                "ALTER DATABASE {0} SET plan_cache_mode = force_generic_plan",
                self.name
            ))
            .await?;
        self.log_plans().await
    }

    /// From the next session on, logs each plan with its row counts, the buffers it touched and
    /// its JIT compilation, if any (`auto_explain`). For a database on a cluster of its own,
    /// whose `server.log` the test then reads.
    pub(crate) async fn log_plans(&self) -> anyhow::Result<()> {
        self.client()
            .await?
            .batch_execute(&format!(
                "ALTER DATABASE {0} SET session_preload_libraries = 'auto_explain';
                 ALTER DATABASE {0} SET auto_explain.log_min_duration = 0;
                 ALTER DATABASE {0} SET auto_explain.log_analyze = on;
                 ALTER DATABASE {0} SET auto_explain.log_buffers = on;
                 ALTER DATABASE {0} SET auto_explain.log_timing = off;",
                self.name
            ))
            .await?;
        Ok(())
    }

    pub(crate) fn store(&self) -> PgEventStore {
        PgEventStore::new(self.pool.clone())
    }

    pub(crate) fn store_with(&self, options: PgStoreOptions) -> PgEventStore {
        PgEventStore::with_options(self.pool.clone(), options).expect("valid options")
    }

    /// The connection settings of this database (for dedicated connections).
    pub(crate) fn config(&self) -> tokio_postgres::Config {
        self.url.parse().expect("valid test database URL")
    }

    /// Waits until `consumer` (default worker tables in schema `eventrail`) has checkpointed
    /// `position`; see [`eventrail_worker::wait_for`].
    pub(crate) async fn wait_for(
        &self,
        consumer: &str,
        position: u64,
        timeout: std::time::Duration,
    ) -> Result<u64, eventrail_worker::WorkerError> {
        eventrail_worker::wait_for(
            &self.config(),
            "eventrail",
            &TableNames::default(),
            consumer,
            position,
            timeout,
        )
        .await
    }

    /// How many lock requests of `locktype` (`advisory`, `transactionid`, …) sessions of this
    /// database are waiting for, read on `watcher`.
    pub(crate) async fn lock_waits(watcher: &Client, locktype: &str) -> anyhow::Result<i64> {
        Ok(watcher
            .query_one(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
                 WHERE a.datname = current_database() AND l.locktype = $1 AND NOT l.granted",
                &[&locktype],
            )
            .await?
            .get(0))
    }

    /// A connection of its own (outside the pool).
    pub(crate) async fn client(&self) -> anyhow::Result<Client> {
        connect(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept database {} of the failed test", self.name);
            return;
        }
        self.pool.close();
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs inside the test's runtime: do the async work on a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let admin = connect(&admin_url).await?;
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await?;
                anyhow::Ok(())
            })
        })
        .join();
        if let Ok(Err(e)) | Err(e) = dropped.map_err(|_| anyhow::anyhow!("drop thread panicked")) {
            eprintln!("could not drop database {}: {e:#}", self.name);
        }
    }
}

/// Waits until a condition holds (shared with the library's fault tools).
pub(crate) use integration_tests::servers::eventually;

impl TestDb {
    /// A fresh database with Message DB installed from its published package (its `install.sh`
    /// creates the cluster-wide `message_store` role, once, when the template is built).
    pub(crate) async fn message_db() -> anyhow::Result<Self> {
        let admin_url = eventrail_devdb::database_url().await?;
        let admin = connect(&admin_url).await?;
        let template = format!(
            "message_db_tpl_{}",
            eventrail_devdb::MESSAGE_DB_PACKAGE
                .rsplit('@')
                .next()
                .unwrap_or_default()
                .replace('.', "_")
        );
        Self::clone_of(
            &admin_url,
            &admin,
            &template,
            "eventrail_mdb_test",
            |url| async move {
                let (admin_url, db) = split_database(&url)?;
                tokio::task::spawn_blocking(move || {
                    eventrail_devdb::install_message_db(&admin_url, &db)
                })
                .await?
                .context("installing Message DB from its npm package")
            },
        )
        .await
    }
}

/// `(url of the same server, database name)` of a database URL.
fn split_database(url: &str) -> anyhow::Result<(String, String)> {
    let config: tokio_postgres::Config = url.parse()?;
    let db = config
        .get_dbname()
        .context("the URL names no database")?
        .to_owned();
    Ok((url.to_owned(), db))
}

/// A request appending one `E` event to `stream`, at any version.
pub(crate) fn one_event(stream: &str) -> anyhow::Result<eventrail_core::AppendRequest> {
    Ok(eventrail_core::AppendRequest::new(
        stream.parse()?,
        eventrail_core::ExpectedVersion::Any,
        vec![eventrail_core::NewEvent::json("E", serde_json::json!({}))],
    ))
}

/// The plans `auto_explain` logged in `log` of the statements whose text starts with `query`.
pub(crate) fn logged_plans<'l>(log: &'l str, query: &str) -> Vec<&'l str> {
    let marker = format!("Query Text: {query}");
    log.split("plan:")
        .filter(|plan| plan.trim_start().starts_with(&marker))
        .collect()
}

/// The shared buffers (hit and read) a plan `auto_explain` logged touched in all: the first
/// `Buffers:` line, its top node's.
pub(crate) fn plan_buffers(plan: &str) -> anyhow::Result<u64> {
    let line = plan
        .lines()
        .find_map(|l| l.trim().strip_prefix("Buffers: shared "))
        .context("a plan logged with its buffers")?;
    line.split_whitespace()
        .filter_map(|part| part.split_once('='))
        .filter(|(what, _)| matches!(*what, "hit" | "read"))
        .map(|(_, n)| Ok(n.trim_end_matches(',').parse::<u64>()?))
        .sum()
}

/// The rows removed by join filters over every plan `auto_explain` logged in `log`: a join
/// planned as a nested loop over two intermediate results compares every pair, and removes
/// nearly all of them here.
pub(crate) fn join_filter_rows(log: &str) -> anyhow::Result<u64> {
    Ok(log
        .lines()
        .filter_map(|line| line.split("Rows Removed by Join Filter: ").nth(1))
        .map(|n| n.trim().parse::<u64>())
        .sum::<Result<_, _>>()?)
}
