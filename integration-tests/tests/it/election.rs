//! Leader election on etcd and on ZooKeeper, in worker processes (`test-worker`): a leader is
//! elected; a killed leader is replaced within the session timeout; a frozen (SIGSTOP) leader is
//! deposed and a write with its old fencing token is refused; the coordination server frozen or
//! stopped suspends leadership at once, and a leader follows when it returns. Plus the fencing
//! token of the PostgreSQL modes.
//!
//! Tests that freeze or stop the coordination server start their own (`EtcdServer`,
//! `ZooKeeperServer`); the others use the shared ones that `scripts/ensure-etcd.sh` and
//! `scripts/ensure-zookeeper.sh` start (`ETCD_ENDPOINT`, `ZOOKEEPER_CONNECT` to use others).
//! Every test campaigns under a key prefix named after its own database.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use eventrail_worker::{TableNames, Worker, WorkerAdmin, WorkerOptions};
use integration_tests::Recorder;
use integration_tests::checks::{assert_exactly_once_in_order, create_handled};
use integration_tests::fleet::{WorkerCommand, WorkerProcess};
use integration_tests::servers::{EtcdServer, ZooKeeperServer};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::harness::{TestDb, eventually};
use crate::worker::{all_at, append};

/// The workers' heartbeat timeout (a frozen follower's consumers move after it).
const HEARTBEAT_TIMEOUT_MS: u64 = 3000;

#[derive(Debug, Clone, Copy)]
enum Service {
    Etcd,
    ZooKeeper,
}

impl Service {
    /// The shared server's address.
    fn shared(self) -> String {
        match self {
            Self::Etcd => {
                std::env::var("ETCD_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:2379".into())
            }
            Self::ZooKeeper => {
                std::env::var("ZOOKEEPER_CONNECT").unwrap_or_else(|_| "127.0.0.1:2181".into())
            }
        }
    }

    /// The session timeout the workers ask for (a shared ZooKeeper with Debian's 2 s tick
    /// grants no less than 4 s).
    fn session_timeout(self) -> Duration {
        match self {
            Self::Etcd => Duration::from_secs(3),
            Self::ZooKeeper => Duration::from_secs(4),
        }
    }

    /// `test-worker` processes electing their leader on `address`.
    fn command(self, address: &str, db: &TestDb) -> WorkerCommand {
        let kind = match self {
            Self::Etcd => "etcd",
            Self::ZooKeeper => "zookeeper",
        };
        WorkerCommand::new(env!("CARGO_BIN_EXE_test-worker"))
            .env("EVENTRAIL_TEST_HEARTBEAT_TIMEOUT_MS", HEARTBEAT_TIMEOUT_MS)
            .env("EVENTRAIL_TEST_ELECTOR", format!("{kind} {address}"))
            .env(
                "EVENTRAIL_TEST_ELECTION_PREFIX",
                format!("/eventrail-tests/{}", db.name),
            )
            .env(
                "EVENTRAIL_TEST_SESSION_TIMEOUT_MS",
                self.session_timeout().as_millis(),
            )
    }
}

fn admin(db: &TestDb) -> anyhow::Result<WorkerAdmin> {
    Ok(
        WorkerAdmin::new(db.pool.clone(), "eventrail", &TableNames::default())?
            .heartbeat_timeout(Duration::from_millis(HEARTBEAT_TIMEOUT_MS)),
    )
}

async fn leaders(admin: &WorkerAdmin) -> anyhow::Result<Vec<Uuid>> {
    Ok(admin
        .status()
        .await?
        .workers
        .iter()
        .filter(|w| w.leader)
        .map(|w| w.id)
        .collect())
}

/// The stored fencing token.
async fn fence(client: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(client
        .query_one("SELECT fencing_token FROM eventrail.worker_leader", &[])
        .await?
        .get(0))
}

/// Whether `worker` leads alone and runs every consumer.
async fn leads_and_runs_everything(admin: &WorkerAdmin, worker: Uuid) -> anyhow::Result<bool> {
    let status = admin.status().await?;
    Ok(status
        .workers
        .iter()
        .filter(|w| w.leader)
        .map(|w| w.id)
        .eq([worker])
        && status.consumers.iter().all(|c| c.worker_id == Some(worker)))
}

/// Each consumer's worker and epoch.
async fn assignments(admin: &WorkerAdmin) -> anyhow::Result<BTreeMap<String, (Option<Uuid>, i64)>> {
    Ok(admin
        .status()
        .await?
        .consumers
        .into_iter()
        .map(|c| (c.consumer, (c.worker_id, c.epoch)))
        .collect())
}

/// Two processes; waits until one leads and every consumer is assigned. Returns (leader,
/// follower).
async fn elect_one_of_two(
    db: &TestDb,
    admin: &WorkerAdmin,
    command: &WorkerCommand,
) -> anyhow::Result<(WorkerProcess, WorkerProcess)> {
    let p1 = WorkerProcess::spawn(command, &db.url, "p1", 3)?;
    let p2 = WorkerProcess::spawn(command, &db.url, "p2", 3)?;
    eventually(
        30,
        "one leader, every consumer assigned to a process",
        || async {
            let status = admin.status().await?;
            Ok(status.workers.iter().filter(|w| w.leader).count() == 1
                && status
                    .consumers
                    .iter()
                    .all(|c| c.worker_id == Some(p1.id) || c.worker_id == Some(p2.id))
                && status.consumers.len() == 3)
        },
    )
    .await?;
    let leader = leaders(admin).await?[0];
    Ok(if leader == p1.id { (p1, p2) } else { (p2, p1) })
}

/// A test's database with the `handled` table, a store, an admin and a client.
struct Fixture {
    db: TestDb,
    client: tokio_postgres::Client,
    store: eventrail_store_postgres::PgEventStore,
    admin: WorkerAdmin,
}

impl Fixture {
    async fn new() -> anyhow::Result<Self> {
        let db = TestDb::new().await?;
        let client = db.client().await?;
        create_handled(&client).await?;
        Ok(Self {
            store: db.store(),
            admin: admin(&db)?,
            client,
            db,
        })
    }
}

async fn a_leader_is_elected_and_a_killed_one_is_replaced_within_the_session_timeout(
    service: Service,
) -> anyhow::Result<()> {
    let Fixture {
        db,
        client,
        store,
        admin,
    } = Fixture::new().await?;
    let command = service.command(&service.shared(), &db);
    let (mut leader, follower) = elect_one_of_two(&db, &admin, &command).await?;
    // The leader's token (ZooKeeper's first candidate node is number 0).
    let first = fence(&client).await?;
    let before = append(&store, "kill-1", 20).await?;
    eventually(20, "consumers to reach the head", || all_at(&admin, before)).await?;

    leader.kill()?;
    let killed = Instant::now();
    let within = service.session_timeout() + Duration::from_secs(HEARTBEAT_TIMEOUT_MS / 1000 + 2);
    eventually(
        within.as_secs(),
        "the other process to lead with a greater token and run every consumer",
        || async {
            Ok(leads_and_runs_everything(&admin, follower.id).await?
                && fence(&client).await? > first)
        },
    )
    .await?;
    eprintln!(
        "{service:?}: leader killed, replaced after {:?} (session timeout {:?})",
        killed.elapsed(),
        service.session_timeout()
    );
    let last = append(&store, "kill-2", 20).await?;
    eventually(20, "consumers to reach the head again", || {
        all_at(&admin, last)
    })
    .await?;
    follower.stop()?;
    assert_exactly_once_in_order(&client, 3).await
}

async fn a_frozen_leader_is_deposed_and_a_write_with_its_token_is_refused(
    service: Service,
) -> anyhow::Result<()> {
    let Fixture {
        db,
        mut client,
        store,
        admin,
    } = Fixture::new().await?;
    let command = service.command(&service.shared(), &db);
    let (leader, follower) = elect_one_of_two(&db, &admin, &command).await?;
    let old = fence(&client).await?;
    let before = append(&store, "freeze-1", 20).await?;
    eventually(20, "consumers to reach the head", || all_at(&admin, before)).await?;

    leader.signal("STOP")?;
    let frozen = Instant::now();
    eventually(
        30,
        "the live process to lead with a greater token and run every consumer",
        || async {
            Ok(
                leads_and_runs_everything(&admin, follower.id).await?
                    && fence(&client).await? > old,
            )
        },
    )
    .await?;
    let new = fence(&client).await?;
    eprintln!(
        "{service:?}: leader frozen, deposed after {:?}; token {old} -> {new}",
        frozen.elapsed()
    );
    let taken_over: std::time::SystemTime = client.query_one("SELECT now()", &[]).await?.get(0);

    // What the frozen leader would write when it wakes: refused by the database, whoever sends it.
    let refused = client
        .execute(
            "UPDATE eventrail.consumer_assignments SET worker_id = $1, epoch = epoch + 1, leader_token = $2
             WHERE consumer = 'c0'",
            &[&leader.id, &old],
        )
        .await
        .expect_err("a write with the deposed leader's token must be refused");
    assert_eq!(
        refused.code().map(tokio_postgres::error::SqlState::code),
        Some("ERF01"),
        "{refused:?}"
    );
    // The current leader's token passes the same check (the refusal is about the token).
    let tx = client.transaction().await?;
    tx.execute(
        "UPDATE eventrail.consumer_assignments SET leader_token = $1 WHERE consumer = 'c0'",
        &[&new],
    )
    .await?;
    tx.rollback().await?;

    leader.signal("CONT")?;
    eventually(20, "the old leader to come back as a follower", || async {
        let status = admin.status().await?;
        Ok(status
            .workers
            .iter()
            .any(|w| w.id == leader.id && w.heartbeat_age_seconds < 1.0 && !w.leader)
            && leaders(&admin).await? == [follower.id])
    })
    .await?;
    let more = append(&store, "freeze-2", 20).await?;
    eventually(20, "consumers to reach the head again", || {
        all_at(&admin, more)
    })
    .await?;
    let late: i64 = client
        .query_one(
            "SELECT count(*) FROM eventrail.consumer_assignments WHERE leader_token < $1 AND assigned_at > $2",
            &[&new, &taken_over],
        )
        .await?
        .get(0);
    assert_eq!(
        late, 0,
        "no assignment was written with an older token after the takeover"
    );
    assert_eq!(leaders(&admin).await?, [follower.id]);
    leader.stop()?;
    follower.stop()?;
    assert_exactly_once_in_order(&client, 3).await
}

/// The coordination server of a test's own: freeze, resume, kill, restart.
enum Own {
    Etcd(EtcdServer),
    ZooKeeper(ZooKeeperServer),
}

impl Own {
    async fn start(service: Service) -> anyhow::Result<Self> {
        Ok(match service {
            Service::Etcd => Self::Etcd(EtcdServer::start().await?),
            Service::ZooKeeper => Self::ZooKeeper(ZooKeeperServer::start().await?),
        })
    }

    fn address(&self) -> String {
        match self {
            Self::Etcd(s) => s.endpoint(),
            Self::ZooKeeper(s) => s.connect_string(),
        }
    }

    fn signal(&self, sig: &str) -> anyhow::Result<()> {
        match self {
            Self::Etcd(s) => s.signal(sig),
            Self::ZooKeeper(s) => s.signal(sig),
        }
    }

    fn kill(&mut self) -> anyhow::Result<()> {
        match self {
            Self::Etcd(s) => s.kill(),
            Self::ZooKeeper(s) => s.kill(),
        }
    }

    async fn restart(&mut self) -> anyhow::Result<()> {
        match self {
            Self::Etcd(s) => s.restart().await,
            Self::ZooKeeper(s) => s.restart().await,
        }
    }
}

async fn the_server_frozen_or_stopped_suspends_leadership_at_once_and_a_leader_follows(
    service: Service,
) -> anyhow::Result<()> {
    let Fixture {
        db,
        client,
        store,
        admin,
    } = Fixture::new().await?;
    let mut server = Own::start(service).await?;
    let command = service.command(&server.address(), &db);
    let (leader, mut follower) = elect_one_of_two(&db, &admin, &command).await?;
    let first = append(&store, "outage-1", 20).await?;
    eventually(20, "consumers to reach the head", || all_at(&admin, first)).await?;

    // Frozen with its connections open: no answer, no error.
    server.signal("STOP")?;
    let frozen = Instant::now();
    // The follower dies meanwhile: a leader would move its consumers.
    follower.kill()?;
    eventually(30, "leadership to be suspended", || async {
        Ok(leaders(&admin).await?.is_empty())
    })
    .await?;
    let suspended = frozen.elapsed();
    eprintln!(
        "{service:?}: server frozen, leadership suspended after {suspended:?} (session timeout {:?})",
        service.session_timeout()
    );
    assert!(
        suspended < service.session_timeout(),
        "suspended at once, not when the session could expire: {suspended:?}"
    );
    let held = assignments(&admin).await?;
    // Observed, not awaited: no write may happen in this window. It lasts until the dead
    // follower is stale and a rebalance (every 200 ms) would have moved its consumers.
    eventually(20, "the killed follower to be stale", || async {
        Ok(admin
            .status()
            .await?
            .workers
            .iter()
            .any(|w| w.id == follower.id && w.stale))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        assignments(&admin).await?,
        held,
        "a suspended leader wrote assignments"
    );

    server.signal("CONT")?;
    eventually(
        30,
        "a leader again, running every consumer, once the server answers",
        || leads_and_runs_everything(&admin, leader.id),
    )
    .await?;
    let second = append(&store, "outage-2", 20).await?;
    eventually(20, "consumers to reach the head", || all_at(&admin, second)).await?;

    // Stopped: the connection breaks.
    server.kill()?;
    let stopped = Instant::now();
    eventually(30, "leadership to be suspended", || async {
        Ok(leaders(&admin).await?.is_empty())
    })
    .await?;
    let suspended = stopped.elapsed();
    eprintln!("{service:?}: server stopped, leadership suspended after {suspended:?}");
    assert!(
        suspended < service.session_timeout(),
        "suspended at once: {suspended:?}"
    );
    server.restart().await?;
    let restarted = Instant::now();
    eventually(40, "a leader again once the server is back", || {
        leads_and_runs_everything(&admin, leader.id)
    })
    .await?;
    eprintln!(
        "{service:?}: server restarted, a leader after {:?}",
        restarted.elapsed()
    );
    let third = append(&store, "outage-3", 20).await?;
    eventually(20, "consumers to reach the head", || all_at(&admin, third)).await?;
    leader.stop()?;
    let _ = follower.running();
    assert_exactly_once_in_order(&client, 3).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_elects_a_leader_and_replaces_a_killed_one_within_the_session_timeout()
-> anyhow::Result<()> {
    a_leader_is_elected_and_a_killed_one_is_replaced_within_the_session_timeout(Service::Etcd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_deposes_a_frozen_leader_and_refuses_a_write_with_its_token() -> anyhow::Result<()> {
    a_frozen_leader_is_deposed_and_a_write_with_its_token_is_refused(Service::Etcd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_frozen_or_stopped_suspends_leadership_at_once_and_a_leader_follows()
-> anyhow::Result<()> {
    the_server_frozen_or_stopped_suspends_leadership_at_once_and_a_leader_follows(Service::Etcd)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zookeeper_elects_a_leader_and_replaces_a_killed_one_within_the_session_timeout()
-> anyhow::Result<()> {
    a_leader_is_elected_and_a_killed_one_is_replaced_within_the_session_timeout(Service::ZooKeeper)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zookeeper_deposes_a_frozen_leader_and_refuses_a_write_with_its_token() -> anyhow::Result<()>
{
    a_frozen_leader_is_deposed_and_a_write_with_its_token_is_refused(Service::ZooKeeper).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zookeeper_frozen_or_stopped_suspends_leadership_at_once_and_a_leader_follows()
-> anyhow::Result<()> {
    the_server_frozen_or_stopped_suspends_leadership_at_once_and_a_leader_follows(
        Service::ZooKeeper,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_postgres_modes_hand_out_growing_tokens_and_a_stale_one_is_refused()
-> anyhow::Result<()> {
    for mode in [
        eventrail_worker::LeaderMode::AdvisoryLock,
        eventrail_worker::LeaderMode::Lease,
    ] {
        let db = TestDb::new().await?;
        let client = db.client().await?;
        create_handled(&client).await?;
        let admin = admin(&db)?;
        let options = WorkerOptions::new()
            .leader_mode(mode.clone())
            .heartbeat_interval(Duration::from_millis(100))
            .rebalance_interval(Duration::from_millis(100));
        let start = |name: &str| -> anyhow::Result<(Uuid, CancellationToken, _)> {
            let worker = Worker::builder(
                eventrail_store_postgres::PgEventStore::new(eventrail_devdb::pool(&db.url, 4)?),
                db.config(),
            )
            .options(options.clone())
            .consumer(Recorder::new("c0", name))
            .build()?;
            let id = worker.id();
            let stop = CancellationToken::new();
            Ok((id, stop.clone(), tokio::spawn(worker.run(stop))))
        };
        let (first, stop_first, task_first) = start("w1")?;
        eventually(20, "the first worker to lead and run the consumer", || {
            leads_and_runs_everything(&admin, first)
        })
        .await?;
        let old = fence(&client).await?;
        let (second, stop_second, task_second) = start("w2")?;
        stop_first.cancel();
        task_first.await??;
        eventually(20, "the second worker to take over", || async {
            Ok(leads_and_runs_everything(&admin, second).await? && fence(&client).await? > old)
        })
        .await?;
        let token: i64 = client
            .query_one(
                "SELECT leader_token FROM eventrail.consumer_assignments WHERE consumer = 'c0'",
                &[],
            )
            .await?
            .get(0);
        assert!(token > old, "{mode:?}: the move carries the new token");
        let refused = client
            .execute(
                "UPDATE eventrail.consumer_assignments SET worker_id = $1, leader_token = $2 WHERE consumer = 'c0'",
                &[&first, &old],
            )
            .await
            .expect_err("a stale token is refused");
        assert_eq!(
            refused.code().map(tokio_postgres::error::SqlState::code),
            Some("ERF01")
        );
        stop_second.cancel();
        task_second.await??;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_takes_its_leader_election_from_the_json_configuration() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let prefix = format!("/eventrail-tests/{}", db.name);
    let file: eventrail_store_postgres::ConfigFile = serde_json::from_value(serde_json::json!({
        "leader_election": {
            "mode": "etcd",
            "endpoints": [Service::Etcd.shared()],
            "key_prefix": prefix,
            "session_timeout_ms": 3000
        }
    }))?;
    let config = eventrail_store_postgres::EventrailConfig::from_file_contents(file)?;
    let store = eventrail_store_postgres::PgEventStore::from_config(
        eventrail_devdb::pool(&db.url, 4)?,
        &config,
    )?;
    let worker = Worker::builder(store, db.config())
        .options(
            WorkerOptions::new()
                .heartbeat_interval(Duration::from_millis(100))
                .rebalance_interval(Duration::from_millis(100)),
        )
        .consumer(Recorder::new("c0", "w"))
        .build()?;
    let id = worker.id();
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker.run(stop.clone()));
    let admin = admin(&db)?;
    eventually(20, "the worker to lead through etcd", || {
        leads_and_runs_everything(&admin, id)
    })
    .await?;
    // Led through etcd: its leader key's create revision is the stored token, and no advisory
    // lock was taken.
    let client = db.client().await?;
    let mut etcd = etcd_client::Client::connect([Service::Etcd.shared()], None).await?;
    let key = etcd
        .get(format!("{prefix}/leader"), None)
        .await?
        .kvs()
        .first()
        .map(|kv| (kv.value().to_vec(), kv.create_revision()))
        .ok_or_else(|| anyhow::anyhow!("no leader key in etcd"))?;
    assert_eq!(
        key.0,
        id.to_string().into_bytes(),
        "the leader key names the worker"
    );
    assert_eq!(
        fence(&client).await?,
        key.1,
        "the token is the key's create revision"
    );
    stop.cancel();
    task.await??;
    // Shutdown revoked the lease: the key is gone at once.
    assert!(
        etcd.get(format!("{prefix}/leader"), None)
            .await?
            .kvs()
            .is_empty(),
        "the leader key is deleted on shutdown"
    );

    let file: eventrail_store_postgres::ConfigFile =
        serde_json::from_str(r#"{ "leader_election": { "mode": "zookeeper" } }"#)?;
    let config = eventrail_store_postgres::EventrailConfig::from_file_contents(file)?;
    let store = eventrail_store_postgres::PgEventStore::from_config(
        eventrail_devdb::pool(&db.url, 4)?,
        &config,
    )?;
    match Worker::builder(store, db.config()).build() {
        Err(eventrail_worker::WorkerError::InvalidElection { .. }) => {}
        other => anyhow::bail!("expected an invalid election (no endpoints), got {other:?}"),
    }
    Ok(())
}
