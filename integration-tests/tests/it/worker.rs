//! The worker runtime against PostgreSQL: assignment, exactly-once effects, failover, fencing,
//! gaps, failures, shutdown, dispatchers and read-your-writes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use eventrail_core::{
    AppendRequest, BoxError, EventStore, ExpectedVersion, NewEvent, RecordedEvent, StreamName,
};
use eventrail_store_postgres::PgEventStore;
use eventrail_worker::{
    Consumer, ConsumerScope, DispatcherStrategy, LeaderMode, RetryPolicy, TableNames, Worker,
    WorkerAdmin, WorkerError, WorkerOptions, wait_for,
};
use integration_tests::{HANDLED_DDL, Recorder};
use tokio::task::JoinHandle;
use tokio_postgres::Transaction;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::harness::{TestDb, eventually};

struct Running {
    id: Uuid,
    stop: CancellationToken,
    task: JoinHandle<Result<(), WorkerError>>,
}

impl Running {
    async fn stop(self) -> Result<(), WorkerError> {
        self.stop.cancel();
        self.task.await.expect("worker task")
    }
}

fn fast() -> WorkerOptions {
    WorkerOptions::new()
        .heartbeat_interval(Duration::from_millis(100))
        .rebalance_interval(Duration::from_millis(100))
        .base_poll_interval(Duration::from_millis(10))
        .max_poll_interval(Duration::from_millis(200))
        .dispatcher_interval(Duration::from_millis(200))
}

/// Starts a worker on a pool of its own.
fn start<C: Consumer + Clone>(
    db: &TestDb,
    options: WorkerOptions,
    consumers: &[C],
) -> anyhow::Result<Running> {
    let store = PgEventStore::new(eventrail_devdb::pool(&db.url, 8)?);
    let mut builder = Worker::builder(store, db.config()).options(options);
    for c in consumers {
        builder = builder.consumer(c.clone());
    }
    let worker = builder.build()?;
    let id = worker.id();
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker.run(stop.clone()));
    Ok(Running { id, stop, task })
}

fn recorders(worker: &str, n: usize) -> Vec<Recorder> {
    (0..n)
        .map(|i| Recorder::new(format!("c{i}"), worker))
        .collect()
}

async fn setup() -> anyhow::Result<TestDb> {
    let db = TestDb::new().await?;
    db.client().await?.batch_execute(HANDLED_DDL).await?;
    Ok(db)
}

pub(crate) async fn append(store: &PgEventStore, stream: &str, n: usize) -> anyhow::Result<u64> {
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

/// Appends one event in `tx`, which the caller keeps open: a lower position that may commit.
async fn append_in_open(
    store: &PgEventStore,
    tx: &Transaction<'_>,
    stream: &str,
) -> anyhow::Result<u64> {
    let request = AppendRequest::new(
        stream.parse::<StreamName>()?,
        ExpectedVersion::Any,
        vec![NewEvent::json("E", serde_json::json!({}))],
    );
    Ok(store.append_in(tx, request).await?.last_position())
}

fn admin(db: &TestDb) -> anyhow::Result<WorkerAdmin> {
    Ok(WorkerAdmin::new(
        db.pool.clone(),
        "eventrail",
        &TableNames::default(),
    )?)
}

async fn assignment_loads(admin: &WorkerAdmin) -> anyhow::Result<BTreeMap<Option<Uuid>, usize>> {
    let mut loads = BTreeMap::new();
    for c in admin.status().await?.consumers {
        *loads.entry(c.worker_id).or_default() += 1;
    }
    Ok(loads)
}

/// Every consumer reached `position`; false while none is registered yet (not vacuously true).
pub(crate) async fn all_at(admin: &WorkerAdmin, position: u64) -> anyhow::Result<bool> {
    let consumers = admin.status().await?.consumers;
    Ok(!consumers.is_empty() && consumers.iter().all(|c| c.position >= position))
}

/// Every consumer handled every committed event exactly once.
async fn assert_exactly_once(db: &TestDb, consumers: usize) -> anyhow::Result<()> {
    integration_tests::checks::assert_exactly_once_in_order(&db.client().await?, consumers).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_share_six_consumers_evenly_and_handle_everything_once_while_joining_and_leaving()
-> anyhow::Result<()> {
    let db = setup().await?;
    let store = db.store();
    let admin = admin(&db)?;
    let a = start(&db, fast().name("a"), &recorders("a", 6))?;
    append(&store, "order-1", 50).await?;
    let b = start(&db, fast().name("b"), &recorders("b", 6))?;
    let c = start(&db, fast().name("c"), &recorders("c", 6))?;
    eventually(10, "an even assignment over three workers", || async {
        let loads = assignment_loads(&admin).await?;
        Ok(loads.len() == 3 && !loads.contains_key(&None) && loads.values().all(|n| *n == 2))
    })
    .await?;
    let mut last = 0;
    for i in 0..20 {
        last = append(&store, &format!("order-{i}"), 5).await?;
    }
    b.stop().await?; // leaves gracefully while events flow
    for i in 0..20 {
        last = append(&store, &format!("invoice-{i}"), 5).await?;
    }
    eventually(
        10,
        "the two remaining workers to share the consumers",
        || async {
            let loads = assignment_loads(&admin).await?;
            Ok(loads.len() == 2 && !loads.contains_key(&None) && loads.values().all(|n| *n == 3))
        },
    )
    .await?;
    let d = start(&db, fast().name("d"), &recorders("d", 6))?;
    last = last.max(append(&store, "late-1", 10).await?);
    eventually(20, "every consumer to reach the head", || {
        all_at(&admin, last)
    })
    .await?;
    let loads = assignment_loads(&admin).await?;
    let (max, min) = (
        loads.values().max().copied().unwrap_or(0),
        loads.values().min().copied().unwrap_or(0),
    );
    assert!(max - min <= 1, "even: {loads:?}");
    for w in [a, c, d] {
        w.stop().await?;
    }
    assert_exactly_once(&db, 6).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_killed_with_sigkill_is_replaced_and_its_consumers_resume_elsewhere_without_duplicates()
-> anyhow::Result<()> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let db = setup().await?;
    let store = db.store();
    let admin = admin(&db)?;
    let spawn = |name: &str| -> anyhow::Result<(std::process::Child, Uuid)> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_test-worker"))
            .args([db.url.as_str(), name, "4"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line)?;
        let id = line
            .trim()
            .strip_prefix("worker ")
            .ok_or_else(|| anyhow::anyhow!("unexpected line {line:?}"))?
            .parse()?;
        Ok((child, id))
    };
    let (mut first, first_id) = spawn("p1")?;
    eventually(10, "the first process to lead", || async {
        Ok(admin
            .status()
            .await?
            .workers
            .iter()
            .any(|w| w.id == first_id && w.leader))
    })
    .await?;
    let (mut second, second_id) = spawn("p2")?;
    eventually(10, "both processes to run consumers", || async {
        let loads = assignment_loads(&admin).await?;
        Ok(loads.get(&Some(first_id)) == Some(&2) && loads.get(&Some(second_id)) == Some(&2))
    })
    .await?;
    let before = append(&store, "pay-1", 30).await?;
    eventually(10, "consumers to reach the head", || all_at(&admin, before)).await?;

    first.kill()?; // SIGKILL: no goodbye, its session locks vanish with the process
    first.wait()?;
    let killed = std::time::Instant::now();
    let last = append(&store, "pay-2", 30).await?;
    eventually(
        10,
        "the survivor to lead and run every consumer",
        || async {
            let status = admin.status().await?;
            let leads = status.workers.iter().any(|w| w.id == second_id && w.leader);
            Ok(leads
                && status
                    .consumers
                    .iter()
                    .all(|c| c.worker_id == Some(second_id)))
        },
    )
    .await?;
    let failover = killed.elapsed();
    eventually(10, "consumers to resume to the head", || {
        all_at(&admin, last)
    })
    .await?;
    drop(second.stdin.take()); // graceful stop
    second.wait()?;
    assert!(
        failover < Duration::from_secs(5),
        "failover took {failover:?}"
    );
    assert_exactly_once(&db, 4).await
}

/// A consumer whose handler waits for a signal, to act in the middle of a batch.
#[derive(Clone)]
struct Gate {
    entered: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Notify>,
    attempts: Arc<AtomicUsize>,
    hold: Arc<AtomicBool>,
}

impl Consumer for Gate {
    fn name(&self) -> &str {
        "gate"
    }

    async fn handle(&self, tx: &Transaction<'_>, event: &RecordedEvent) -> Result<(), BoxError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if self.hold.load(Ordering::SeqCst) {
            self.entered.notify_one();
            self.release.notified().await;
        }
        let position = i64::try_from(event.global_position)?;
        tx.execute(
            "INSERT INTO handled (consumer, position, worker) VALUES ('gate', $1, 'x')",
            &[&position],
        )
        .await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_whose_consumer_was_reassigned_mid_batch_cannot_commit_its_checkpoint()
-> anyhow::Result<()> {
    let db = setup().await?;
    let gate = Gate {
        entered: Arc::default(),
        release: Arc::default(),
        attempts: Arc::default(),
        hold: Arc::new(AtomicBool::new(true)),
    };
    let w = start(&db, fast(), std::slice::from_ref(&gate))?;
    let position = append(&db.store(), "fence-1", 1).await?;
    tokio::time::timeout(Duration::from_secs(10), gate.entered.notified()).await?; // the batch is in flight
    // The leader's move, done by hand: the assignment's epoch changes under the batch.
    db.client()
        .await?
        .execute(
            "UPDATE eventrail.consumer_assignments SET epoch = epoch + 1 WHERE consumer = 'gate'",
            &[],
        )
        .await?;
    gate.hold.store(false, Ordering::SeqCst);
    gate.release.notify_one();
    let admin = admin(&db)?;
    // The leader hands the consumer out again (new epoch) and the event is handled then.
    eventually(10, "the event to be handled under the new epoch", || {
        all_at(&admin, position)
    })
    .await?;
    w.stop().await?;
    assert_eq!(
        gate.attempts.load(Ordering::SeqCst),
        2,
        "the fenced batch rolled back and ran again"
    );
    let rows: i64 = db
        .client()
        .await?
        .query_one("SELECT count(*) FROM handled", &[])
        .await?
        .get(0);
    assert_eq!(rows, 1, "the fenced batch's effect was rolled back");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumers_never_pass_an_open_lower_position_skip_audited_holes_and_scoped_ones_advance()
-> anyhow::Result<()> {
    let db = setup().await?;
    let store = db.store();
    let admin = admin(&db)?;
    let mut scoped = Recorder::new("wanted-only", "w");
    scoped.scope = ConsumerScope::all().categories(["wanted"]);
    let all = Recorder::new("everything", "w");
    let w = start(&db, fast(), std::slice::from_ref(&all))?;
    let w2 = start(&db, fast(), &[scoped.clone()])?;
    let first = append(&store, "other-1", 2).await?;
    eventually(10, "consumers to reach the first events", || {
        all_at(&admin, first)
    })
    .await?;

    let mut holder = db.client().await?;
    let tx = holder.transaction().await?;
    let held = append_in_open(&store, &tx, "wanted-1").await?;
    let above = append(&store, "other-2", 3).await?;
    // Passing the open position would be a bug: give the consumers half a second to try.
    let wanted = db
        .wait_for("everything", above, Duration::from_millis(500))
        .await;
    assert!(
        matches!(wanted, Err(WorkerError::Timeout { .. })),
        "passed an open lower position: {wanted:?}"
    );
    for c in admin.status().await?.consumers {
        assert!(
            c.position < held,
            "{} passed the open position {held}",
            c.consumer
        );
    }
    tx.rollback().await?;
    eventually(10, "consumers to skip the rolled-back hole", || {
        all_at(&admin, above)
    })
    .await?;
    let gaps = admin.gaps(None, 10).await?;
    assert!(
        gaps.iter()
            .any(|g| g.from == held && g.reason == "proven" && g.evidence.contains("candidates=")),
        "{gaps:?}"
    );
    let scoped_rows: i64 = db
        .client()
        .await?
        .query_one(
            "SELECT count(*) FROM handled WHERE consumer = 'wanted-only'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(
        scoped_rows, 0,
        "no event of the wanted category committed, yet the scoped consumer advanced"
    );
    let wanted = append(&store, "wanted-2", 1).await?;
    eventually(10, "the scoped consumer to handle its event", || {
        all_at(&admin, wanted)
    })
    .await?;
    let scoped_rows: i64 = db
        .client()
        .await?
        .query_one(
            "SELECT count(*) FROM handled WHERE consumer = 'wanted-only'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(scoped_rows, 1);
    w.stop().await?;
    w2.stop().await?;
    Ok(())
}

#[derive(Clone)]
struct Flaky {
    failing: Arc<AtomicBool>,
}

impl Consumer for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }

    async fn handle(&self, _tx: &Transaction<'_>, _event: &RecordedEvent) -> Result<(), BoxError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err("the downstream service is down".into());
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_handler_is_retried_then_parked_while_others_run_and_resumes()
-> anyhow::Result<()> {
    let db = setup().await?;
    let store = db.store();
    let admin = admin(&db)?;
    let flaky = Flaky {
        failing: Arc::new(AtomicBool::new(true)),
    };
    let retry = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
    };
    let w = start(&db, fast().retry(retry), std::slice::from_ref(&flaky))?;
    let healthy = start(&db, fast(), &[Recorder::new("healthy", "h")])?;
    let last = append(&store, "job-1", 3).await?;
    let parked = db.wait_for("flaky", last, Duration::from_secs(10)).await;
    match parked {
        Err(WorkerError::ConsumerParked { error, .. }) => {
            assert!(error.contains("downstream"), "{error}")
        }
        other => panic!("expected a parked consumer, got {other:?}"),
    }
    let status = admin.status().await?;
    let flaky_status = status
        .consumers
        .iter()
        .find(|c| c.consumer == "flaky")
        .expect("flaky");
    assert_eq!(
        flaky_status.position, 0,
        "nothing of the failing batch committed"
    );
    eventually(10, "the healthy consumer to keep running", || async {
        Ok(admin
            .status()
            .await?
            .consumers
            .iter()
            .any(|c| c.consumer == "healthy" && c.position >= last))
    })
    .await?;

    flaky.failing.store(false, Ordering::SeqCst);
    admin.resume("flaky").await?;
    let reached = db.wait_for("flaky", last, Duration::from_secs(10)).await?;
    assert!(reached >= last);
    assert!(
        admin
            .status()
            .await?
            .consumers
            .iter()
            .all(|c| c.parked_error.is_none())
    );
    w.stop().await?;
    healthy.stop().await?;
    Ok(())
}

/// Workers `a` and `b`, four consumers each, two of them running on each. A long heartbeat
/// timeout: only an explicit release can explain a quick takeover.
async fn two_workers(db: &TestDb, admin: &WorkerAdmin) -> anyhow::Result<(Running, Running)> {
    let options = || fast().heartbeat_timeout(Duration::from_secs(60));
    let a = start(db, options().name("a"), &recorders("a", 4))?;
    let b = start(db, options().name("b"), &recorders("b", 4))?;
    eventually(10, "both workers to run consumers", || async {
        Ok(assignment_loads(admin).await?.values().all(|n| *n == 2)
            && assignment_loads(admin).await?.len() == 2)
    })
    .await?;
    Ok((a, b))
}

/// Waits until `worker` runs every consumer.
async fn takes_everything(admin: &WorkerAdmin, worker: Uuid) -> anyhow::Result<()> {
    eventually(5, "the other worker to take everything", || async {
        Ok(admin
            .status()
            .await?
            .consumers
            .iter()
            .all(|c| c.worker_id == Some(worker)))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_hands_everything_back_at_once() -> anyhow::Result<()> {
    let db = setup().await?;
    let admin = admin(&db)?;
    let (a, b) = two_workers(&db, &admin).await?;
    let a_id = a.id;
    a.stop().await?;
    let status = admin.status().await?;
    assert!(
        status.workers.iter().all(|w| w.id != a_id),
        "deregistered at once"
    );
    assert!(
        status.consumers.iter().all(|c| c.worker_id != Some(a_id)),
        "assignments released at once"
    );
    takes_everything(&admin, b.id).await?;
    b.stop().await?;
    Ok(())
}

/// A worker leaves while the leader's rebalance holds the assignment rows. That rebalance read
/// the leaving worker as live and hands it one more consumer; the leaving worker's shutdown
/// waits for the rebalance and hands that consumer back too: nothing stays assigned to a worker
/// that is gone. (Released first and deregistered second, as two statements, the consumer the
/// rebalance handed over stayed with the departed worker until the next rebalance.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebalance_in_flight_at_shutdown_leaves_nothing_with_the_leaving_worker()
-> anyhow::Result<()> {
    let db = setup().await?;
    let admin = admin(&db)?;
    let (a, b) = two_workers(&db, &admin).await?;
    let (a_id, b_id) = (a.id, b.id);
    // A rebalance in flight, as the leader runs one: every assignment row locked first.
    let mut client = db.client().await?;
    let rebalance = client.transaction().await?;
    rebalance
        .batch_execute("SELECT FROM eventrail.consumer_assignments FOR UPDATE")
        .await?;
    let stopping = tokio::spawn(a.stop());
    let watcher = db.client().await?;
    eventually(10, "the leaving worker to wait for the rows", || async {
        // Not the other worker's own rebalance, which waits for them too.
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                   AND wait_event_type = 'Lock' AND query NOT LIKE 'SELECT consumer, worker_id%'",
                &[],
            )
            .await?
            .get(0);
        Ok(waiting > 0)
    })
    .await?;
    // The rebalance counted the leaving worker live: it hands it one of the other's consumers.
    let moved = rebalance
        .execute(
            "UPDATE eventrail.consumer_assignments SET worker_id = $1, epoch = epoch + 1
             WHERE consumer = (SELECT min(consumer) FROM eventrail.consumer_assignments WHERE worker_id = $2)",
            &[&a_id, &b_id],
        )
        .await?;
    assert_eq!(moved, 1);
    rebalance.commit().await?;
    stopping.await??;
    let status = admin.status().await?;
    assert!(
        status.consumers.iter().all(|c| c.worker_id != Some(a_id)),
        "assignments of the departed worker: {:?}",
        status.consumers
    );
    takes_everything(&admin, b_id).await?;
    b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_whose_registration_disappears_stops() -> anyhow::Result<()> {
    let db = setup().await?;
    let w = start(&db, fast(), &recorders("w", 1))?;
    let admin = admin(&db)?;
    eventually(10, "registration", || async {
        Ok(!admin.status().await?.workers.is_empty())
    })
    .await?;
    db.client()
        .await?
        .execute("DELETE FROM eventrail.worker_nodes", &[])
        .await?;
    let ended = tokio::time::timeout(Duration::from_secs(10), w.task).await??;
    assert!(
        matches!(ended, Err(WorkerError::Deregistered(id)) if id == w.id),
        "{ended:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_notify_dispatcher_wakes_consumers_long_before_the_poll_interval_and_survives_a_dropped_listen()
-> anyhow::Result<()> {
    let db = setup().await?;
    let store = db.store();
    // Every timer is slow: only a notification can explain a fast delivery.
    let slow = WorkerOptions::new()
        .dispatcher(DispatcherStrategy::Notify)
        .dispatcher_interval(Duration::from_secs(30))
        .base_poll_interval(Duration::from_secs(30))
        .max_poll_interval(Duration::from_secs(30))
        .heartbeat_interval(Duration::from_millis(100))
        .rebalance_interval(Duration::from_millis(100));
    let mut config = db.config();
    config.application_name("eventrail-under-test");
    let w = {
        let store = PgEventStore::new(eventrail_devdb::pool(&db.url, 8)?);
        let worker = Worker::builder(store, config)
            .options(slow)
            .consumer(Recorder::new("fast", "w"))
            .build()?;
        let stop = CancellationToken::new();
        let id = worker.id();
        Running {
            id,
            stop: stop.clone(),
            task: tokio::spawn(worker.run(stop)),
        }
    };
    let admin = admin(&db)?;
    eventually(10, "the consumer to be assigned", || async {
        Ok(admin
            .status()
            .await?
            .consumers
            .iter()
            .all(|c| c.worker_id == Some(w.id)))
    })
    .await?;
    // Let the idle consumer settle into its long wait, then append.
    let first = append(&store, "ping-1", 1).await?;
    let started = std::time::Instant::now();
    db.wait_for("fast", first, Duration::from_secs(10)).await?;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "delivered by notification, not by the 30 s timers"
    );

    // Drop the LISTEN connection: the dispatcher reconnects and catches up.
    let client = db.client().await?;
    let killed: i64 = client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'eventrail-under-test' AND query ILIKE 'LISTEN%'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(killed, 1, "the LISTEN connection was found and terminated");
    let second = append(&store, "ping-2", 1).await?;
    db.wait_for("fast", second, Duration::from_secs(10)).await?;
    w.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_mode_elects_a_leader_without_session_locks() -> anyhow::Result<()> {
    let db = setup().await?;
    let admin = admin(&db)?;
    let w = start(
        &db,
        fast().leader_mode(LeaderMode::Lease),
        &recorders("w", 2),
    )?;
    let last = append(&db.store(), "lease-1", 5).await?;
    eventually(10, "the lease leader to assign and run consumers", || {
        all_at(&admin, last)
    })
    .await?;
    assert!(
        admin
            .status()
            .await?
            .workers
            .iter()
            .any(|x| x.id == w.id && x.leader)
    );
    w.stop().await?;
    Ok(())
}

#[tokio::test]
async fn bad_consumer_sets_and_table_names_are_refused() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let twice = Worker::builder(db.store(), db.config())
        .consumer(Recorder::new("x", "w"))
        .consumer(Recorder::new("x", "w"))
        .build();
    assert!(matches!(twice, Err(WorkerError::InvalidConsumer { .. })));
    let empty = Worker::builder(db.store(), db.config())
        .consumer(Recorder::new(" ", "w"))
        .build();
    assert!(matches!(empty, Err(WorkerError::InvalidConsumer { .. })));
    let hostile = TableNames {
        worker_nodes: "nodes; DROP TABLE x".into(),
        ..TableNames::default()
    };
    let bad = Worker::builder(db.store(), db.config())
        .options(WorkerOptions::new().tables(hostile))
        .build();
    assert!(matches!(bad, Err(WorkerError::Config(_))));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_opt_in_stall_escape_skips_a_hole_held_too_long_and_audits_it() -> anyhow::Result<()> {
    let db = setup().await?;
    let store = db.store();
    let admin = admin(&db)?;
    let w = start(
        &db,
        fast().stall_escape(Duration::from_millis(300)),
        &[Recorder::new("impatient", "w")],
    )?;
    let mut holder = db.client().await?;
    let tx = holder.transaction().await?;
    let held = append_in_open(&store, &tx, "slow-1").await?;
    let above = append(&store, "fast-1", 1).await?;
    eventually(10, "the escape to pass the held position", || {
        all_at(&admin, above)
    })
    .await?;
    let gaps = admin.gaps(Some("impatient"), 10).await?;
    assert!(
        gaps.iter().any(|g| g.from == held && g.reason == "timeout"),
        "{gaps:?}"
    );
    tx.rollback().await?;
    w.stop().await?;
    Ok(())
}

/// A reactor: side effects outside the database (here, a list in memory).
#[derive(Clone, Default)]
struct Mailer {
    sent: Arc<std::sync::Mutex<Vec<u64>>>,
}

impl eventrail_core::Reactor for Mailer {
    fn name(&self) -> &str {
        "mailer"
    }

    async fn react(&self, event: &RecordedEvent) -> Result<(), BoxError> {
        self.sent
            .lock()
            .map_err(|_| "poisoned")?
            .push(event.global_position);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reactors_and_stateful_processors_run_on_the_same_runtime() -> anyhow::Result<()> {
    use eventrail_core::PositionScope;
    use eventrail_core::conformance::CountingProjection;
    use eventrail_worker::{ReactorConsumer, StatefulConsumer};

    let db = setup().await?;
    let store = db.store();
    let mailer = Mailer::default();
    let projection = Arc::new(CountingProjection::new(PositionScope::All, None));
    let worker = Worker::builder(
        PgEventStore::new(eventrail_devdb::pool(&db.url, 8)?),
        db.config(),
    )
    .options(fast())
    .consumer(ReactorConsumer::new(
        mailer.clone(),
        ConsumerScope::all().categories(["signup"]),
    ))
    .consumer(StatefulConsumer::new(
        "projection",
        projection.clone(),
        ConsumerScope::all(),
    ))
    .build()?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker.run(stop.clone()));
    let signup = append(&store, "signup-1", 2).await?;
    let last = append(&store, "other-1", 1).await?;
    for consumer in ["mailer", "projection"] {
        db.wait_for(consumer, last, Duration::from_secs(10)).await?;
    }
    stop.cancel();
    task.await??;
    assert_eq!(
        *mailer.sent.lock().expect("lock"),
        [signup - 1, signup],
        "the reactor saw its category"
    );
    assert_eq!(
        projection.state().applied,
        [signup - 1, signup, last],
        "the projection applied every event in order"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_runs_on_renamed_tables_in_another_schema() -> anyhow::Result<()> {
    let db = setup().await?;
    let tables = TableNames {
        worker_nodes: "ops.nodes".into(),
        consumer_assignments: "ops.assignments".into(),
        consumer_checkpoints: "ops.checkpoints".into(),
        consumer_gap_skips: "ops.skips".into(),
        worker_leader: "ops.leader".into(),
    };
    let mut client = db.client().await?;
    let applied = eventrail_worker::worker_migrator("tenant", &tables)?
        .run(&mut client)
        .await?;
    assert_eq!(applied, [1, 2, 4, 6, 7, 8, 13, 14]);
    let store = db.store_with(eventrail_store_postgres::PgStoreOptions::new().schema("tenant"));
    let worker = Worker::builder(store.clone(), db.config())
        .options(fast().tables(tables.clone()))
        .consumer(Recorder::new("renamed", "w"))
        .build()?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker.run(stop.clone()));
    let last = append(&store, "thing-1", 3).await?;
    let reached = wait_for(
        &db.config(),
        "tenant",
        &tables,
        "renamed",
        last,
        Duration::from_secs(10),
    )
    .await?;
    assert!(reached >= last);
    let rows: i64 = client
        .query_one("SELECT count(*) FROM ops.checkpoints", &[])
        .await?
        .get(0);
    assert_eq!(rows, 1, "the checkpoint lives in the renamed table");
    stop.cancel();
    task.await??;
    Ok(())
}

/// Each consumer's assignment epoch (it grows on every move).
async fn epochs(admin: &WorkerAdmin) -> anyhow::Result<BTreeMap<String, i64>> {
    Ok(admin
        .status()
        .await?
        .consumers
        .into_iter()
        .map(|c| (c.consumer, c.epoch))
        .collect())
}

/// The consumers whose epoch changed between two readings.
fn moved(before: &BTreeMap<String, i64>, after: &BTreeMap<String, i64>) -> Vec<String> {
    after
        .iter()
        .filter(|(c, e)| before.get(*c) != Some(*e))
        .map(|(c, _)| c.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_joining_or_leaving_moves_only_the_consumers_that_must_move() -> anyhow::Result<()>
{
    let db = setup().await?;
    let store = db.store();
    let admin = admin(&db)?;
    let a = start(&db, fast().name("a"), &recorders("a", 6))?;
    let b = start(&db, fast().name("b"), &recorders("b", 6))?;
    let c = start(&db, fast().name("c"), &recorders("c", 6))?;
    eventually(10, "an even assignment over three workers", || async {
        let loads = assignment_loads(&admin).await?;
        Ok(loads.len() == 3 && !loads.contains_key(&None) && loads.values().all(|n| *n == 2))
    })
    .await?;
    let mut last = append(&store, "move-1", 20).await?;
    let stable = epochs(&admin).await?;

    // A fourth worker joins: 6 over 4 is 2-2-1-1, so exactly one consumer must move (to it).
    let d = start(&db, fast().name("d"), &recorders("d", 6))?;
    eventually(10, "the new worker to get a consumer", || async {
        Ok(assignment_loads(&admin).await?.get(&Some(d.id)) == Some(&1))
    })
    .await?;
    last = last.max(append(&store, "move-2", 20).await?);
    let joined = epochs(&admin).await?;
    let moved_on_join = moved(&stable, &joined);
    let status = admin.status().await?;
    assert_eq!(
        moved_on_join.len(),
        1,
        "one consumer moves to the new worker, not {moved_on_join:?}"
    );
    assert!(
        status
            .consumers
            .iter()
            .any(|s| s.consumer == moved_on_join[0] && s.worker_id == Some(d.id)),
        "the moved consumer went to the new worker"
    );

    // `b` leaves: only its consumers move (each once: released, then handed out).
    let b_had: Vec<String> = status
        .consumers
        .iter()
        .filter(|s| s.worker_id == Some(b.id))
        .map(|s| s.consumer.clone())
        .collect();
    let b_id = b.id;
    b.stop().await?;
    eventually(10, "the leaver's consumers to be handed out", || async {
        let loads = assignment_loads(&admin).await?;
        Ok(loads.len() == 3 && !loads.contains_key(&None) && !loads.contains_key(&Some(b_id)))
    })
    .await?;
    last = last.max(append(&store, "move-3", 20).await?);
    let left = epochs(&admin).await?;
    assert_eq!(
        moved(&joined, &left),
        b_had,
        "only the leaver's consumers moved"
    );
    let loads = assignment_loads(&admin).await?;
    assert!(
        loads.values().max().copied().unwrap_or(0) - loads.values().min().copied().unwrap_or(0)
            <= 1,
        "still even: {loads:?}"
    );
    eventually(20, "every consumer to reach the head", || {
        all_at(&admin, last)
    })
    .await?;
    for w in [a, c, d] {
        w.stop().await?;
    }
    assert_exactly_once(&db, 6).await
}

/// Records each event in `handled` (in the batch transaction) and fails on one position while
/// `poisoned` is set; counts its invocations per position.
#[derive(Clone)]
struct Poisoned {
    at: Arc<std::sync::atomic::AtomicU64>,
    poisoned: Arc<AtomicBool>,
    calls: Arc<std::sync::Mutex<BTreeMap<u64, usize>>>,
}

impl Consumer for Poisoned {
    fn name(&self) -> &str {
        "poisoned"
    }

    async fn handle(&self, tx: &Transaction<'_>, event: &RecordedEvent) -> Result<(), BoxError> {
        *self
            .calls
            .lock()
            .map_err(|_| "poisoned lock")?
            .entry(event.global_position)
            .or_default() += 1;
        let position = i64::try_from(event.global_position)?;
        tx.execute(
            "INSERT INTO handled (consumer, position, worker) VALUES ('poisoned', $1, 'w')",
            &[&position],
        )
        .await?;
        if self.poisoned.load(Ordering::SeqCst)
            && event.global_position == self.at.load(Ordering::SeqCst)
        {
            let cause = std::io::Error::other("the invoice template is missing");
            return Err(Box::new(PoisonError(cause)));
        }
        Ok(())
    }
}

/// A handler error with a cause, to see the whole chain in the parked state.
#[derive(Debug)]
struct PoisonError(std::io::Error);

impl std::fmt::Display for PoisonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("rendering the invoice failed")
    }
}

impl std::error::Error for PoisonError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_event_commits_the_good_prefix_and_parks_the_consumer_at_exactly_that_event()
-> anyhow::Result<()> {
    let db = setup().await?;
    let store = db.store();
    let admin = admin(&db)?;
    // One append of ten events before the worker starts: the first batch holds all ten.
    let last = append(&store, "invoice-1", 10).await?;
    let positions: Vec<u64> = (last - 9..=last).collect();
    let seventh = positions[6];
    let consumer = Poisoned {
        at: Arc::new(std::sync::atomic::AtomicU64::new(seventh)),
        poisoned: Arc::new(AtomicBool::new(true)),
        calls: Arc::default(),
    };
    let retry = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
    };
    let w = start(&db, fast().retry(retry), std::slice::from_ref(&consumer))?;
    match db.wait_for("poisoned", last, Duration::from_secs(20)).await {
        Err(WorkerError::ConsumerParked { .. }) => {}
        other => panic!("expected a parked consumer, got {other:?}"),
    }
    assert_eq!(
        handled(&db, "poisoned").await?,
        positions[..6].iter().map(|p| (*p, 1)).collect::<Vec<_>>(),
        "events 1-6 committed once, nothing after"
    );
    let status = admin.status().await?;
    let parked = status
        .consumers
        .iter()
        .find(|c| c.consumer == "poisoned")
        .expect("status of the consumer");
    assert_eq!(parked.position, positions[5], "checkpoint at event 6");
    assert_eq!(parked.parked_position, Some(seventh), "parked at event 7");
    let error = parked.parked_error.clone().unwrap_or_default();
    assert!(
        error.contains("rendering the invoice failed")
            && error.contains("the invoice template is missing"),
        "the whole error chain: {error}"
    );
    {
        let calls = consumer.calls.lock().expect("lock");
        assert_eq!(
            calls.get(&seventh),
            Some(&3),
            "event 7 tried as often as the retry policy says: {calls:?}"
        );
        for p in &positions[7..] {
            assert_eq!(calls.get(p), None, "events after the poison were not tried");
        }
        for p in &positions[..6] {
            assert!(
                calls.get(p).is_some_and(|n| *n <= 2),
                "the good prefix is not retried with the poison event: {calls:?}"
            );
        }
    }

    consumer.poisoned.store(false, Ordering::SeqCst);
    admin.resume("poisoned").await?;
    db.wait_for("poisoned", last, Duration::from_secs(20))
        .await?;
    assert_eq!(
        handled(&db, "poisoned").await?,
        positions.iter().map(|p| (*p, 1)).collect::<Vec<_>>(),
        "events 7-10 handled once after the resume"
    );
    w.stop().await?;
    Ok(())
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
}

/// How many times each position's effect was committed in `handled` for `consumer`.
async fn handled(db: &TestDb, consumer: &str) -> anyhow::Result<Vec<(u64, i64)>> {
    let rows = db
        .client()
        .await?
        .query(
            "SELECT position, count(*) FROM handled WHERE consumer = $1 GROUP BY position ORDER BY position",
            &[&consumer],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (to_u64(r.get(0)), r.get::<_, i64>(1)))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_undecodable_row_parks_only_the_consumers_that_read_it_and_can_be_skipped_or_fixed()
-> anyhow::Result<()> {
    let db = setup().await?;
    let store = db.store();
    let admin = admin(&db)?;
    append(&store, "good-1", 3).await?;
    // Written by raw SQL (an older version, a bug): a number where a string is expected. The
    // xid first, as the store's own appends do, so the gap proof holds for this writer too.
    let bad: i64 = {
        let mut client = db.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_current_xact_id()", &[]).await?;
        let row = tx
            .query_one(
                "INSERT INTO eventrail.events (stream_name, stream_version, event_id, event_type, data, metadata)
                 VALUES ('bad-1', 0, gen_random_uuid(), 'Happened', '{}', '{\"correlation_id\": 42}')
                 RETURNING global_position",
                &[],
            )
            .await?;
        tx.commit().await?;
        row.get(0)
    };
    let bad = to_u64(bad);
    let last = append(&store, "good-2", 3).await?;
    let mut other = Recorder::new("other", "w");
    other.scope = ConsumerScope::all().categories(["good"]);
    let w = start(
        &db,
        fast(),
        &[
            Recorder::new("skipper", "w"),
            Recorder::new("fixer", "w"),
            other,
        ],
    )?;
    // A consumer whose scope excludes the row never reads it: it is not stopped at all.
    db.wait_for("other", last, Duration::from_secs(20)).await?;
    for consumer in ["skipper", "fixer"] {
        match db.wait_for(consumer, last, Duration::from_secs(20)).await {
            Err(WorkerError::ConsumerParked { .. }) => {}
            other => panic!("expected {consumer} parked at the bad row, got {other:?}"),
        }
        let status = admin.status().await?;
        let s = status
            .consumers
            .iter()
            .find(|c| c.consumer == consumer)
            .expect("status");
        assert_eq!(s.position, bad - 1, "{consumer}: the good prefix committed");
        assert_eq!(
            s.parked_position,
            Some(bad),
            "{consumer}: parked at the row"
        );
        let error = s.parked_error.clone().unwrap_or_default();
        assert!(
            error.contains(&bad.to_string()),
            "names the position: {error}"
        );
        assert_eq!(
            handled(&db, consumer).await?,
            (1..bad).map(|p| (p, 1)).collect::<Vec<_>>(),
            "{consumer}: everything before the row, once"
        );
    }

    // One operator skips it (audited) ...
    assert_eq!(admin.skip("skipper").await?, bad);
    db.wait_for("skipper", last, Duration::from_secs(20))
        .await?;
    assert_eq!(
        handled(&db, "skipper").await?,
        (1..=last)
            .filter(|p| *p != bad)
            .map(|p| (p, 1))
            .collect::<Vec<_>>()
    );
    let gaps = admin.gaps(Some("skipper"), 10).await?;
    assert!(
        gaps.iter()
            .any(|g| g.from == bad && g.to == bad && g.reason == "poison"),
        "{gaps:?}"
    );
    assert!(matches!(
        admin.skip("skipper").await,
        Err(WorkerError::NotParked { .. })
    ));

    // ... another fixes the row (events are immutable: a superuser lifts the trigger for it)
    // and resumes.
    db.client()
        .await?
        .batch_execute(&format!(
            "BEGIN;
             ALTER TABLE eventrail.events DISABLE TRIGGER events_immutable_rows;
             UPDATE eventrail.events SET metadata = '{{\"correlation_id\": \"42\"}}' WHERE global_position = {bad};
             ALTER TABLE eventrail.events ENABLE TRIGGER events_immutable_rows;
             COMMIT;"
        ))
        .await?;
    admin.resume("fixer").await?;
    db.wait_for("fixer", last, Duration::from_secs(20)).await?;
    assert_eq!(
        handled(&db, "fixer").await?,
        (1..=last).map(|p| (p, 1)).collect::<Vec<_>>()
    );
    w.stop().await?;
    Ok(())
}

/// JSON nested `depth` arrays deep: PostgreSQL's `jsonb` stores it, `serde_json` parses at most
/// 128 levels.
pub(crate) fn nested(depth: usize) -> serde_json::Value {
    (0..depth).fold(serde_json::json!(1), |inner, _| {
        serde_json::Value::Array(vec![inner])
    })
}

/// Records like [`Recorder`]; when `reads_payload`, after parsing the event's JSON.
#[derive(Clone)]
struct PayloadReader {
    recorder: Recorder,
    reads_payload: bool,
}

impl Consumer for PayloadReader {
    fn name(&self) -> &str {
        &self.recorder.name
    }

    async fn handle(&self, tx: &Transaction<'_>, event: &RecordedEvent) -> Result<(), BoxError> {
        use eventrail_core::Codec as _;
        if self.reads_payload {
            eventrail_core::JsonCodec.decode::<serde_json::Value>(&event.data)?;
        }
        self.recorder.handle(tx, event).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payload_the_json_parser_refuses_parks_only_the_consumers_that_read_it()
-> anyhow::Result<()> {
    let db = setup().await?;
    let store = db.store();
    append(&store, "good-1", 3).await?;
    // Taken by the store and by jsonb, refused by serde_json when parsed.
    let deep = store
        .append(AppendRequest::new(
            "deep-1".parse()?,
            ExpectedVersion::Any,
            vec![NewEvent::json("Nested", nested(200))],
        ))
        .await?
        .last_position();
    let last = append(&store, "good-2", 3).await?;
    let consumer = |name: &str, reads_payload| PayloadReader {
        recorder: Recorder::new(name, "w"),
        reads_payload,
    };
    let retry = RetryPolicy {
        max_attempts: 2,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
    };
    let w = start(
        &db,
        fast().retry(retry),
        &[consumer("skims", false), consumer("reads", true)],
    )?;
    // The payload is parsed when a handler reads it, not when the batch is read: a consumer
    // that never looks at it goes past it.
    db.wait_for("skims", last, Duration::from_secs(20)).await?;
    assert_eq!(
        handled(&db, "skims").await?,
        (1..=last).map(|p| (p, 1)).collect::<Vec<_>>()
    );
    // The one that reads it gets the parse error from its codec, and is parked at that event.
    match db.wait_for("reads", last, Duration::from_secs(20)).await {
        Err(WorkerError::ConsumerParked { .. }) => {}
        other => panic!("expected the reader parked at the deep payload, got {other:?}"),
    }
    let status = admin(&db)?.status().await?;
    let reads = status
        .consumers
        .iter()
        .find(|c| c.consumer == "reads")
        .expect("status");
    assert_eq!(reads.parked_position, Some(deep));
    assert!(
        reads
            .parked_error
            .as_deref()
            .is_some_and(|e| e.contains("recursion limit")),
        "{:?}",
        reads.parked_error
    );
    assert_eq!(
        handled(&db, "reads").await?,
        (1..deep).map(|p| (p, 1)).collect::<Vec<_>>()
    );
    w.stop().await?;
    Ok(())
}

/// The relay's claim went quadratic under generic plans (see the outbox test of the same name);
/// the store's appends (one statement, `COPY`, `append_events` with a position precondition) and
/// a consumer catching up, planned the same way, compare no row of one intermediate result with
/// every row of another.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_and_catch_up_planned_generically_never_compare_every_row_with_every_row()
-> anyhow::Result<()> {
    let cluster = integration_tests::servers::Cluster::start(None).await?;
    let db = crate::harness::TestDb::on(&cluster.admin_url).await?;
    db.client().await?.batch_execute(HANDLED_DDL).await?;
    db.log_generic_plans().await?;
    // A pool of its own: every session opens after the settings.
    let store = PgEventStore::new(eventrail_devdb::pool(&db.url, 4)?);
    let mut last = 0;
    for i in 0..20 {
        last = append(&store, &format!("single-{i}"), 1).await?;
    }
    for i in 0..5 {
        last = append(&store, &format!("batch-{i}"), 200).await?;
    }
    for i in 0..10 {
        let request = AppendRequest::new(
            format!("single-{i}").parse()?,
            ExpectedVersion::Exact(0),
            vec![NewEvent::json("Checked", serde_json::json!({ "i": i }))],
        )
        .with_expected_position(eventrail_core::ExpectedPosition::all(Some(last)));
        last = store.append(request).await?.last_position();
    }
    let w = start(&db, fast(), &[Recorder::new("generic", "w")])?;
    db.wait_for("generic", last, Duration::from_secs(30))
        .await?;
    w.stop().await?;
    assert_eq!(
        handled(&db, "generic").await?,
        (1..=last).map(|p| (p, 1)).collect::<Vec<_>>()
    );

    let log = std::fs::read_to_string(cluster.data().join("server.log"))?;
    for statement in [
        "append_events",
        "events_global_position_seq",
        "pg_current_snapshot",
    ] {
        assert!(log.contains(statement), "plans of {statement} logged");
    }
    let removed = crate::harness::join_filter_rows(&log)?;
    assert!(
        removed < last,
        "{removed} rows removed by join filters for {last} events"
    );
    Ok(())
}

/// Records like [`Recorder`], but fails the first attempt at each of its positions.
#[derive(Clone)]
struct FailsOnceAt {
    recorder: Recorder,
    positions: Arc<std::sync::Mutex<std::collections::BTreeSet<u64>>>,
}

impl Consumer for FailsOnceAt {
    fn name(&self) -> &str {
        &self.recorder.name
    }

    async fn handle(&self, tx: &Transaction<'_>, event: &RecordedEvent) -> Result<(), BoxError> {
        let first_attempt = self
            .positions
            .lock()
            .map_err(|_| "poisoned")?
            .remove(&event.global_position);
        if first_attempt {
            return Err(format!("first attempt at {}", event.global_position).into());
        }
        self.recorder.handle(tx, event).await
    }
}

/// Catch-up reads the next batch while the current one runs. Over a backlog of many small
/// batches, with handlers failing once in the middle of batches (so batches shrink to isolate
/// them and what was read ahead must be dropped), every event is still handled exactly once,
/// in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catching_up_with_reads_ahead_and_failures_mid_batch_handles_everything_once_in_order()
-> anyhow::Result<()> {
    let db = setup().await?;
    let store = db.store();
    let admin = admin(&db)?;
    let mut head = 0;
    for i in 0..30 {
        head = append(&store, &format!("backlog-{i}"), 20).await?;
    }
    let fail_at: std::collections::BTreeSet<u64> = [37, 138, 139, 301, 450, head].into();
    let consumer = FailsOnceAt {
        recorder: Recorder::new("c0", "w"),
        positions: Arc::new(std::sync::Mutex::new(fail_at)),
    };
    let retry = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
    };
    let running = start(
        &db,
        fast().batch_size(25).retry(retry),
        std::slice::from_ref(&consumer),
    )?;
    eventually(60, "the consumer to reach the head", || {
        all_at(&admin, head)
    })
    .await?;
    assert!(
        consumer
            .positions
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .is_empty(),
        "every failing event was reached"
    );
    running.stop().await?;
    assert_exactly_once(&db, 1).await
}

/// Behind the head, batches grow from `batch_size` up to `catch_up_batch_size` (fewer commits,
/// probes and reads per event), never past it, and every event is still handled once, in order.
/// Each batch is one transaction: the recorder's rows carry its id (`xmin`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catching_up_grows_batches_up_to_the_catch_up_size_and_handles_everything_once_in_order()
-> anyhow::Result<()> {
    let db = setup().await?;
    let store = db.store();
    let admin = admin(&db)?;
    let mut head = 0;
    for i in 0..20 {
        head = append(&store, &format!("backlog-{i}"), 50).await?;
    }
    let consumer = Recorder::new("c0", "w");
    let running = start(
        &db,
        fast().batch_size(10).catch_up_batch_size(80),
        std::slice::from_ref(&consumer),
    )?;
    eventually(60, "the consumer to reach the head", || {
        all_at(&admin, head)
    })
    .await?;
    running.stop().await?;
    assert_exactly_once(&db, 1).await?;
    let sizes: Vec<i64> = db
        .client()
        .await?
        .query(
            "SELECT count(*) FROM handled GROUP BY xmin::text::bigint ORDER BY min(position)",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let largest = sizes.iter().copied().max().unwrap_or_default();
    assert!(largest <= 80, "no batch past the catch-up size: {sizes:?}");
    assert_eq!(largest, 80, "batches grew to the catch-up size: {sizes:?}");
    assert!(
        sizes.len() < 30,
        "{} batches for {head} events: {sizes:?}",
        sizes.len()
    );
    Ok(())
}
