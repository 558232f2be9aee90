//! Faults a worker fleet must ride out: its session connection terminated, the database
//! restarted, a leader frozen with its connection open, a follower frozen mid-batch.
//!
//! Workers run in separate OS processes (the `test-worker` binary) where a signal must stop a
//! whole process; a restarted server is a throwaway cluster on a port of its own.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use eventrail_core::{AppendRequest, EventStore, ExpectedVersion, NewEvent, StreamName};
use eventrail_store_postgres::PgEventStore;
use eventrail_worker::{TableNames, Worker, WorkerAdmin, WorkerOptions};
use integration_tests::{HANDLED_DDL, Recorder};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::harness::{TestDb, connect, eventually};

/// Identity-lock class of a worker (see `eventrail_worker::runtime`).
const IDENTITY_LOCK: i32 = 1_701_147_140;

/// `handled` plus the order in which rows were written, to check per-consumer order.
async fn create_handled(client: &Client) -> anyhow::Result<()> {
    client.batch_execute(HANDLED_DDL).await?;
    client
        .batch_execute(
            "ALTER TABLE handled ADD COLUMN IF NOT EXISTS seq bigint GENERATED ALWAYS AS IDENTITY",
        )
        .await?;
    Ok(())
}

async fn append(store: &PgEventStore, stream: &str, n: usize) -> anyhow::Result<u64> {
    let events = (0..n)
        .map(|i| NewEvent::json("Happened", serde_json::json!({ "i": i })))
        .collect();
    Ok(store
        .append(AppendRequest::new(
            stream.parse::<StreamName>()?,
            ExpectedVersion::Any,
            events,
        ))
        .await?
        .last_position())
}

fn admin_on(pool: deadpool_postgres::Pool) -> anyhow::Result<WorkerAdmin> {
    Ok(WorkerAdmin::new(pool, "eventrail", &TableNames::default())?)
}

/// Every consumer reached `position`; false while none is registered yet (not vacuously true).
async fn all_at(admin: &WorkerAdmin, position: u64) -> anyhow::Result<bool> {
    let consumers = admin.status().await?.consumers;
    Ok(!consumers.is_empty() && consumers.iter().all(|c| c.position >= position))
}

/// Every consumer handled every committed event exactly once, in position order.
pub(crate) async fn assert_exactly_once_in_order(
    client: &Client,
    consumers: usize,
) -> anyhow::Result<()> {
    let committed: i64 = client
        .query_one("SELECT count(*) FROM eventrail.events", &[])
        .await?
        .get(0);
    let rows = client
        .query("SELECT consumer, count(*), count(DISTINCT position) FROM handled GROUP BY consumer ORDER BY consumer", &[])
        .await?;
    assert_eq!(rows.len(), consumers, "every consumer handled events");
    for r in rows {
        let (consumer, n, distinct): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
        assert_eq!(
            (n, distinct),
            (committed, committed),
            "{consumer}: each of {committed} events exactly once"
        );
    }
    let strays: i64 = client
        .query_one("SELECT count(*) FROM handled h WHERE NOT EXISTS (SELECT 1 FROM eventrail.events e WHERE e.global_position = h.position)", &[])
        .await?
        .get(0);
    assert_eq!(strays, 0);
    let has_seq: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_name = 'handled' AND column_name = 'seq')",
            &[],
        )
        .await?
        .get(0);
    if has_seq {
        let out_of_order: i64 = client
            .query_one(
                "SELECT count(*) FROM (SELECT position < lag(position) OVER (PARTITION BY consumer ORDER BY seq) AS back FROM handled) x WHERE back",
                &[],
            )
            .await?
            .get(0);
        assert_eq!(out_of_order, 0, "each consumer handled events in order");
    }
    Ok(())
}

/// The pid of the session holding `worker`'s identity lock, if any.
async fn session_pid(client: &Client, worker: Uuid) -> anyhow::Result<Option<i32>> {
    Ok(client
        .query_opt(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = $1::int4::oid
               AND objid = hashtext($2::text)::oid AND objsubid = 2
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&IDENTITY_LOCK, &worker.to_string()],
        )
        .await?
        .map(|r| r.get(0)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_whose_session_backend_is_terminated_reconnects_and_handles_everything_once()
-> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let client = db.client().await?;
    create_handled(&client).await?;
    let store = db.store();
    let admin = admin_on(db.pool.clone())?;
    let options = WorkerOptions::new()
        .heartbeat_interval(Duration::from_millis(100))
        .rebalance_interval(Duration::from_millis(100))
        .base_poll_interval(Duration::from_millis(10))
        .max_poll_interval(Duration::from_millis(200))
        .dispatcher_interval(Duration::from_millis(200));
    let worker = Worker::builder(
        PgEventStore::new(eventrail_devdb::pool(&db.url, 8)?),
        db.config(),
    )
    .options(options)
    .consumer(Recorder::new("c0", "w"))
    .consumer(Recorder::new("c1", "w"))
    .build()?;
    let id = worker.id();
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker.run(stop.clone()));
    let first = append(&store, "before-1", 10).await?;
    eventually(20, "consumers to reach the first events", || {
        all_at(&admin, first)
    })
    .await?;
    let old = session_pid(&client, id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no identity lock held"))?;
    let terminated: bool = client
        .query_one("SELECT pg_terminate_backend($1)", &[&old])
        .await?
        .get(0);
    assert!(terminated);
    let mut last = 0;
    for i in 0..10 {
        last = append(&store, &format!("after-{i}"), 3).await?;
    }
    eventually(20, "the worker to take its identity lock again", || async {
        Ok(session_pid(&client, id)
            .await?
            .is_some_and(|pid| pid != old))
    })
    .await?;
    eventually(
        20,
        "the worker to lead and run both consumers again",
        || async {
            let status = admin.status().await?;
            Ok(status
                .workers
                .iter()
                .any(|w| w.id == id && w.leader && w.session_alive)
                && status.consumers.iter().all(|c| c.worker_id == Some(id)))
        },
    )
    .await?;
    eventually(
        20,
        "consumers to handle the events appended afterwards",
        || all_at(&admin, last),
    )
    .await?;
    assert!(!task.is_finished(), "the worker is still running");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), task).await???;
    assert_exactly_once_in_order(&client, 2).await
}

/// A `test-worker` process; killed (after a SIGCONT) when dropped.
struct Proc {
    child: Child,
    id: Uuid,
    name: String,
}

impl Proc {
    fn spawn(
        url: &str,
        name: &str,
        consumers: usize,
        env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_test-worker"));
        command
            .args([url, name, &consumers.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line)?;
        let id = line
            .trim()
            .strip_prefix("worker ")
            .ok_or_else(|| anyhow::anyhow!("unexpected line {line:?}"))?
            .parse()?;
        Ok(Self {
            child,
            id,
            name: name.to_owned(),
        })
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {} failed", self.name);
        Ok(())
    }

    fn running(&mut self) -> anyhow::Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    /// Graceful stop (stdin closes); the process must exit successfully.
    fn stop(mut self) -> anyhow::Result<()> {
        drop(self.child.stdin.take());
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "{} exited with {status}", self.name);
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.signal("CONT");
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn fault_env(heartbeat_timeout_ms: u64) -> Vec<(&'static str, String)> {
    vec![(
        "EVENTRAIL_TEST_HEARTBEAT_TIMEOUT_MS",
        heartbeat_timeout_ms.to_string(),
    )]
}

fn leaders(status: &eventrail_worker::Status) -> Vec<Uuid> {
    status
        .workers
        .iter()
        .filter(|w| w.leader)
        .map(|w| w.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_frozen_with_sigstop_is_deposed_within_the_timeout_and_fenced_after_sigcont()
-> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let client = db.client().await?;
    create_handled(&client).await?;
    let store = db.store();
    let admin = admin_on(db.pool.clone())?;
    let timeout_ms = 3000;
    let env = fault_env(timeout_ms);
    let p1 = Proc::spawn(&db.url, "p1", 3, &env)?;
    eventually(20, "the first process to lead", || async {
        Ok(leaders(&admin.status().await?) == [p1.id])
    })
    .await?;
    let p2 = Proc::spawn(&db.url, "p2", 3, &env)?;
    let mut p3 = Proc::spawn(&db.url, "p3", 3, &env)?;
    eventually(20, "three processes to run a consumer each", || async {
        let status = admin.status().await?;
        Ok([p1.id, p2.id, p3.id].iter().all(|id| {
            status
                .consumers
                .iter()
                .filter(|c| c.worker_id == Some(*id))
                .count()
                == 1
        }))
    })
    .await?;
    let before = append(&store, "pay-1", 30).await?;
    eventually(20, "consumers to reach the head", || all_at(&admin, before)).await?;

    // The leader stops with its connections open; a follower really dies meanwhile.
    p1.signal("STOP")?;
    p3.child.kill()?;
    p3.child.wait()?;
    let frozen = std::time::Instant::now();
    let last = append(&store, "pay-2", 30).await?;
    eventually(
        30,
        "the live process to lead and run every consumer",
        || async {
            let status = admin.status().await?;
            Ok(leaders(&status) == [p2.id]
                && status.consumers.iter().all(|c| c.worker_id == Some(p2.id)))
        },
    )
    .await?;
    let takeover = frozen.elapsed();
    eprintln!("leader frozen: takeover after {takeover:?} (heartbeat timeout {timeout_ms} ms)");
    eventually(20, "consumers to resume to the head", || {
        all_at(&admin, last)
    })
    .await?;
    let epochs: Vec<(String, i64)> = admin
        .status()
        .await?
        .consumers
        .iter()
        .map(|c| (c.consumer.clone(), c.epoch))
        .collect();

    // The old leader wakes up: it must not act as leader any more.
    p1.signal("CONT")?;
    eventually(20, "the old leader to come back as a follower", || async {
        let status = admin.status().await?;
        Ok(status
            .workers
            .iter()
            .any(|w| w.id == p1.id && w.session_alive && w.heartbeat_age_seconds < 1.0)
            && leaders(&status) == [p2.id])
    })
    .await?;
    let more = append(&store, "pay-3", 30).await?;
    eventually(20, "consumers to reach the head again", || {
        all_at(&admin, more)
    })
    .await?;
    let status = admin.status().await?;
    assert_eq!(leaders(&status), [p2.id], "one leader: {status:?}");
    for c in &status.consumers {
        let before = epochs
            .iter()
            .find(|(n, _)| *n == c.consumer)
            .map(|(_, e)| *e);
        assert!(
            before.is_none_or(|e| c.epoch >= e),
            "{}: epoch went back from {before:?} to {}",
            c.consumer,
            c.epoch
        );
    }
    p1.stop()?;
    p2.stop()?;
    assert_exactly_once_in_order(&client, 3).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_frozen_mid_batch_loses_its_consumer_within_the_timeout_and_blocks_nobody()
-> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let client = db.client().await?;
    create_handled(&client).await?;
    let store = db.store();
    let admin = admin_on(db.pool.clone())?;
    let hold_dir = std::env::temp_dir().join(format!("eventrail-hold-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&hold_dir)?;
    let mut env = fault_env(3000);
    env.push(("EVENTRAIL_TEST_BATCH_TIMEOUT_MS", "60000".to_owned()));
    env.push(("EVENTRAIL_TEST_HOLD_DIR", hold_dir.display().to_string()));
    let p1 = Proc::spawn(&db.url, "p1", 2, &env)?;
    eventually(20, "the first process to lead", || async {
        Ok(leaders(&admin.status().await?) == [p1.id])
    })
    .await?;
    let p2 = Proc::spawn(&db.url, "p2", 2, &env)?;
    eventually(20, "each process to run one consumer", || async {
        let status = admin.status().await?;
        Ok([p1.id, p2.id].iter().all(|id| {
            status
                .consumers
                .iter()
                .filter(|c| c.worker_id == Some(*id))
                .count()
                == 1
        }))
    })
    .await?;
    let held = admin
        .status()
        .await?
        .consumers
        .iter()
        .find(|c| c.worker_id == Some(p2.id))
        .map(|c| c.consumer.clone())
        .ok_or_else(|| anyhow::anyhow!("the follower runs no consumer"))?;
    std::fs::write(hold_dir.join("hold"), &held)?;
    let position = append(&store, "held-1", 1).await?;
    let entered = hold_dir.join("entered-p2");
    eventually(20, "the follower to be mid-batch", || async {
        Ok(entered.exists())
    })
    .await?;

    // Frozen with its batch transaction open (the checkpoint row locked), then the hold ends
    // for whoever runs the consumer next.
    p2.signal("STOP")?;
    let frozen = std::time::Instant::now();
    std::fs::remove_file(hold_dir.join("hold"))?;
    let handled_by_p1 = || async {
        Ok(client
            .query_opt(
                "SELECT 1 FROM handled WHERE consumer = $1 AND position = $2 AND worker = 'p1'",
                &[&held, &i64::try_from(position)?],
            )
            .await?
            .is_some())
    };
    eventually(
        40,
        "the other process to handle the held event",
        handled_by_p1,
    )
    .await?;
    eprintln!(
        "follower frozen mid-batch: its event handled elsewhere after {:?}",
        frozen.elapsed()
    );
    let last = append(&store, "after-1", 20).await?;
    eventually(20, "consumers to reach the head", || all_at(&admin, last)).await?;

    p2.signal("CONT")?;
    eventually(20, "the frozen process to come back", || async {
        Ok(admin
            .status()
            .await?
            .workers
            .iter()
            .any(|w| w.id == p2.id && w.heartbeat_age_seconds < 1.0))
    })
    .await?;
    let more = append(&store, "after-2", 20).await?;
    eventually(20, "consumers to reach the head again", || {
        all_at(&admin, more)
    })
    .await?;
    p1.stop()?;
    p2.stop()?;
    let _ = std::fs::remove_dir_all(&hold_dir);
    assert_exactly_once_in_order(&client, 2).await
}

/// A throwaway cluster of its own, stopped and removed when dropped.
struct Cluster {
    dir: PathBuf,
    admin_url: String,
}

impl Cluster {
    async fn start(port: u16) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir()
            .join(format!("eventrail-restart-{}", Uuid::new_v4().simple()))
            .join("data");
        let admin_url = eventrail_devdb::start_throwaway_cluster(&dir, port).await?;
        Ok(Self { dir, admin_url })
    }

    async fn restart(&self) -> anyhow::Result<()> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || eventrail_devdb::restart_throwaway_cluster(&dir))
            .await??;
        Ok(())
    }

    fn data(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = eventrail_devdb::stop_throwaway_cluster(self.data());
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_processes_survive_a_real_database_restart_and_handle_everything_once_in_order()
-> anyhow::Result<()> {
    let cluster = Cluster::start(54_343).await?;
    let url = eventrail_devdb::recreate_database(&cluster.admin_url, "eventrail_restart").await?;
    {
        let mut client = connect(&url).await?;
        eventrail_worker::worker_migrator("eventrail", &TableNames::default())?
            .run(&mut client)
            .await?;
        create_handled(&client).await?;
    }
    let fresh_store = || -> anyhow::Result<PgEventStore> {
        Ok(PgEventStore::new(eventrail_devdb::pool(&url, 4)?))
    };
    let admin = admin_on(eventrail_devdb::pool(&url, 4)?)?;
    let env = fault_env(3000);
    let mut p1 = Proc::spawn(&url, "p1", 3, &env)?;
    let mut p2 = Proc::spawn(&url, "p2", 3, &env)?;
    eventually(20, "both processes to run consumers", || async {
        let status = admin.status().await?;
        Ok([p1.id, p2.id]
            .iter()
            .all(|id| status.consumers.iter().any(|c| c.worker_id == Some(*id))))
    })
    .await?;
    let mut last = 0;
    for i in 0..10 {
        last = append(&fresh_store()?, &format!("before-{i}"), 2).await?;
    }
    eventually(20, "consumers to reach the head", || all_at(&admin, last)).await?;

    cluster.restart().await?;
    let restarted = std::time::Instant::now();
    // Connections made after the restart: the test's own pools were cut too.
    let admin = admin_on(eventrail_devdb::pool(&url, 4)?)?;
    for i in 0..10 {
        last = append(&fresh_store()?, &format!("after-{i}"), 2).await?;
    }
    eventually(
        40,
        "consumers to handle the events appended after the restart",
        || all_at(&admin, last),
    )
    .await?;
    eprintln!(
        "database restart: consumers at the head {:?} after the server accepted connections",
        restarted.elapsed()
    );
    assert!(p1.running()? && p2.running()?, "both processes still run");
    eventually(
        20,
        "both processes to be registered and alive again",
        || async {
            let status = admin.status().await?;
            Ok([p1.id, p2.id].iter().all(|id| {
                status
                    .workers
                    .iter()
                    .any(|w| w.id == *id && w.session_alive && w.heartbeat_age_seconds < 1.0)
            }) && leaders(&status).len() == 1)
        },
    )
    .await?;
    p1.stop()?;
    p2.stop()?;
    assert_exactly_once_in_order(&connect(&url).await?, 3).await
}
