//! A worker in its own OS process, for the failover and torture tests: `<program> <database-url>
//! <name> <consumers>`. Prints `worker <id>` once registered and runs until killed or stdin
//! closes. The `test-worker` binary and `eventrail-bench worker` run it.
//!
//! Optional environment, for the fault tests:
//! - `EVENTRAIL_TEST_DEFAULT_OPTIONS`: when set, the worker runs with the default options (else
//!   with 200 ms heartbeats and rebalances, for fast tests);
//! - `EVENTRAIL_TEST_HEARTBEAT_TIMEOUT_MS`, `EVENTRAIL_TEST_BATCH_TIMEOUT_MS`: worker options;
//! - `EVENTRAIL_TEST_HOLD_DIR`: while the file `hold` in that folder names a consumer, that
//!   consumer's handler creates `entered-<worker name>` there and waits (mid-batch, its
//!   transaction open) until `hold` is removed;
//! - `EVENTRAIL_TEST_ELECTOR`: `etcd <endpoint>` or `zookeeper <connect string>` elects the
//!   leader there (else the advisory lock), with `EVENTRAIL_TEST_ELECTION_PREFIX` as the key
//!   prefix and `EVENTRAIL_TEST_SESSION_TIMEOUT_MS` as the session timeout when set;
//! - `RUST_LOG`: the worker's logs on stderr.

use std::path::PathBuf;
use std::time::Duration;

use crate::Recorder;
use eventrail_core::{BoxError, RecordedEvent};
use eventrail_store_postgres::PgEventStore;
use eventrail_worker::{Consumer, ConsumerScope, Worker, WorkerOptions};
use tokio::io::AsyncReadExt;
use tokio_postgres::Transaction;
use tokio_util::sync::CancellationToken;

/// A [`Recorder`] that can be held mid-batch through a file.
#[derive(Debug, Clone)]
struct Held {
    recorder: Recorder,
    hold_dir: Option<PathBuf>,
}

impl Consumer for Held {
    fn name(&self) -> &str {
        &self.recorder.name
    }

    fn scope(&self) -> ConsumerScope {
        self.recorder.scope.clone()
    }

    async fn handle(&self, tx: &Transaction<'_>, event: &RecordedEvent) -> Result<(), BoxError> {
        if let Some(dir) = &self.hold_dir {
            let hold = dir.join("hold");
            if std::fs::read_to_string(&hold).is_ok_and(|held| held.trim() == self.recorder.name) {
                std::fs::write(
                    dir.join(format!("entered-{}", self.recorder.worker)),
                    event.global_position.to_string(),
                )?;
                while hold.exists() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        self.recorder.handle(tx, event).await
    }
}

fn millis(var: &str) -> anyhow::Result<Option<Duration>> {
    std::env::var(var)
        .ok()
        .map(|v| Ok(Duration::from_millis(v.parse()?)))
        .transpose()
}

/// The leader mode of `EVENTRAIL_TEST_ELECTOR` (see the module's documentation).
fn elector_from_env() -> anyhow::Result<Option<eventrail_worker::LeaderMode>> {
    use eventrail_worker::{EtcdElection, LeaderMode, ZooKeeperElection};
    let Ok(spec) = std::env::var("EVENTRAIL_TEST_ELECTOR") else {
        return Ok(None);
    };
    let prefix = std::env::var("EVENTRAIL_TEST_ELECTION_PREFIX").ok();
    let timeout = millis("EVENTRAIL_TEST_SESSION_TIMEOUT_MS")?;
    let mode = match spec.split_once(' ') {
        Some(("etcd", endpoint)) => {
            let mut e = EtcdElection::new([endpoint]);
            if let Some(p) = prefix {
                e = e.key_prefix(p);
            }
            if let Some(t) = timeout {
                e = e.session_timeout(t);
            }
            LeaderMode::Etcd(e)
        }
        Some(("zookeeper", connect)) => {
            let mut z = ZooKeeperElection::new(connect);
            if let Some(p) = prefix {
                z = z.key_prefix(p);
            }
            if let Some(t) = timeout {
                z = z.session_timeout(t);
            }
            LeaderMode::ZooKeeper(z)
        }
        _ => anyhow::bail!(
            "EVENTRAIL_TEST_ELECTOR: expected `etcd <endpoint>` or `zookeeper <connect>`, got {spec:?}"
        ),
    };
    Ok(Some(mode))
}

/// Runs the worker of `args` (`<database-url> <name> <consumers>`) until stdin closes.
///
/// # Errors
/// Bad arguments, or the worker's error.
pub async fn run(mut args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let (Some(url), Some(name), Some(consumers)) = (args.next(), args.next(), args.next()) else {
        anyhow::bail!("usage: <database-url> <name> <consumers>");
    };
    let consumers: usize = consumers.parse()?;
    let store = PgEventStore::connect(&url)?;
    let mut options = WorkerOptions::new().name(name.clone());
    if std::env::var_os("EVENTRAIL_TEST_DEFAULT_OPTIONS").is_none() {
        options = options
            .heartbeat_interval(Duration::from_millis(200))
            .rebalance_interval(Duration::from_millis(200));
    }
    if let Some(d) = millis("EVENTRAIL_TEST_HEARTBEAT_TIMEOUT_MS")? {
        options = options.heartbeat_timeout(d);
    }
    if let Some(d) = millis("EVENTRAIL_TEST_BATCH_TIMEOUT_MS")? {
        options = options.batch_timeout(d);
    }
    if let Some(mode) = elector_from_env()? {
        options = options.leader_mode(mode);
    }
    let hold_dir = std::env::var_os("EVENTRAIL_TEST_HOLD_DIR").map(PathBuf::from);
    let mut builder = Worker::builder(
        store,
        url.parse::<eventrail_store_postgres::PgConnectOptions>()?,
    )
    .options(options);
    for i in 0..consumers {
        builder = builder.consumer(Held {
            recorder: Recorder::new(format!("c{i}"), name.clone()),
            hold_dir: hold_dir.clone(),
        });
    }
    let worker = builder.build()?;
    println!("worker {}", worker.id());
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        // Stdin closing (the test dropping the pipe) asks for a graceful stop.
        while matches!(tokio::io::stdin().read(&mut buf).await, Ok(n) if n > 0) {}
        stop.cancel();
    });
    worker.run(shutdown).await?;
    Ok(())
}
