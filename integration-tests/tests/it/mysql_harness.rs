//! Per-test databases on MySQL/MariaDB (`EVENTRAIL_MYSQL_URL`, default the MariaDB of
//! `scripts/ensure-mariadb.sh` on 127.0.0.1:3306 as root): each test creates its own database,
//! migrates the outbox into it, and drops it when it passes (a failed test's is kept and named).

use anyhow::Context;
use eventrail_outbox::{MySqlOutbox, OutboxOptions};
use mysql_async::prelude::Queryable;

/// The server's URL, without a database.
pub(crate) fn mysql_url() -> String {
    std::env::var("EVENTRAIL_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

pub(crate) struct MyTestDb {
    pub(crate) name: String,
    pub(crate) pool: mysql_async::Pool,
}

impl MyTestDb {
    /// A fresh database with the outbox migrated.
    pub(crate) async fn new() -> anyhow::Result<Self> {
        crate::harness::init_logs();
        let name = format!("eventrail_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = mysql_async::Conn::from_url(mysql_url())
            .await
            .context("MariaDB must be running (scripts/ensure-mariadb.sh)")?;
        admin
            .query_drop(format!("CREATE DATABASE `{name}`"))
            .await?;
        admin.disconnect().await?;
        let opts = mysql_async::Opts::from_url(&format!("{}/{name}", mysql_url()))?;
        let pool = mysql_async::Pool::new(opts);
        MySqlOutbox::new(&OutboxOptions::new())?
            .migrate(&pool)
            .await?;
        Ok(Self { name, pool })
    }
}

impl Drop for MyTestDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept MySQL database {} of the failed test", self.name);
            return;
        }
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which also drives the pool's connections: the
        // pool is left alone (a connection of an aborted relay may still hold a transaction),
        // and a thread of its own ends this database's sessions and drops it.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut admin = mysql_async::Conn::from_url(mysql_url()).await?;
                let sessions: Vec<u64> = admin
                    .exec(
                        "SELECT id FROM information_schema.processlist WHERE db = ? AND id <> CONNECTION_ID()",
                        (name.as_str(),),
                    )
                    .await?;
                for id in sessions {
                    // A session may end by itself meanwhile.
                    let _ = admin.query_drop(format!("KILL {id}")).await;
                }
                admin
                    .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
                    .await?;
                admin.disconnect().await?;
                anyhow::Ok(())
            })
        })
        .join();
        if let Ok(Err(e)) | Err(e) = dropped.map_err(|_| anyhow::anyhow!("drop thread panicked")) {
            eprintln!("could not drop MySQL database {}: {e:#}", self.name);
        }
    }
}
