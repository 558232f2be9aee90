//! Faults a worker fleet must ride out: its session connection terminated, the database
//! restarted, a leader frozen with its connection open, a follower frozen mid-batch.
//!
//! Workers run in separate OS processes (the `test-worker` binary) where a signal must stop a
//! whole process; a restarted server is a throwaway cluster on a port of its own.

use std::time::Duration;

use eventrail_store_postgres::PgEventStore;
use eventrail_worker::{TableNames, Worker, WorkerAdmin, WorkerOptions};
use integration_tests::Recorder;
use integration_tests::checks::{assert_exactly_once_in_order, create_handled};
use integration_tests::fleet::{WorkerCommand, WorkerProcess};
use integration_tests::servers::Cluster;
use integration_tests::torture::session_pid;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::harness::{TestDb, connect, eventually};
use crate::worker::{all_at, append};

fn admin_on(pool: deadpool_postgres::Pool) -> anyhow::Result<WorkerAdmin> {
    Ok(WorkerAdmin::new(pool, "eventrail", &TableNames::default())?)
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

/// `test-worker` processes with this heartbeat timeout.
fn fault_command(heartbeat_timeout_ms: u64) -> WorkerCommand {
    WorkerCommand::new(env!("CARGO_BIN_EXE_test-worker"))
        .env("EVENTRAIL_TEST_HEARTBEAT_TIMEOUT_MS", heartbeat_timeout_ms)
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
    let command = fault_command(timeout_ms);
    let p1 = WorkerProcess::spawn(&command, &db.url, "p1", 3)?;
    eventually(20, "the first process to lead", || async {
        Ok(leaders(&admin.status().await?) == [p1.id])
    })
    .await?;
    let p2 = WorkerProcess::spawn(&command, &db.url, "p2", 3)?;
    let mut p3 = WorkerProcess::spawn(&command, &db.url, "p3", 3)?;
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
    p3.kill()?;
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
    let mut command = fault_command(3000);
    command = command.env("EVENTRAIL_TEST_BATCH_TIMEOUT_MS", 60000);
    command = command.env("EVENTRAIL_TEST_HOLD_DIR", hold_dir.display());
    let p1 = WorkerProcess::spawn(&command, &db.url, "p1", 2)?;
    eventually(20, "the first process to lead", || async {
        Ok(leaders(&admin.status().await?) == [p1.id])
    })
    .await?;
    let p2 = WorkerProcess::spawn(&command, &db.url, "p2", 2)?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_processes_survive_a_real_database_restart_and_handle_everything_once_in_order()
-> anyhow::Result<()> {
    let cluster = Cluster::start(None).await?;
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
    let command = fault_command(3000);
    let mut p1 = WorkerProcess::spawn(&command, &url, "p1", 3)?;
    let mut p2 = WorkerProcess::spawn(&command, &url, "p2", 3)?;
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
