//! Two eventrail schemas in one database run side by side without interfering: stream locks,
//! outbox key locks, checkpoint notifications (`wait_for`) and leader election are each keyed by
//! schema.

use std::time::Duration;

use eventrail_core::EventStore;
use eventrail_outbox::{NewMessage, Outbox, OutboxOptions, OutboxTables, with_outbox_migration};
use eventrail_store_postgres::{PgEventStore, PgStoreOptions};
use eventrail_worker::{TableNames, Worker, WorkerAdmin, WorkerError, WorkerOptions, wait_for};
use integration_tests::{HANDLED_DDL, Recorder};
use tokio_util::sync::CancellationToken;

use crate::harness::one_event as one;
use crate::harness::{TestDb, eventually};

const SCHEMAS: [&str; 2] = ["tenant_a", "tenant_b"];

async fn migrate(db: &TestDb) -> anyhow::Result<()> {
    let mut client = db.client().await?;
    for schema in SCHEMAS {
        let migrator = eventrail_worker::worker_migrator(schema, &TableNames::default())?;
        with_outbox_migration(migrator, schema, &OutboxTables::default())?
            .run(&mut client)
            .await?;
    }
    client.batch_execute(HANDLED_DDL).await?;
    Ok(())
}

fn store(db: &TestDb, schema: &str) -> PgEventStore {
    db.store_with(PgStoreOptions::new().schema(schema))
}

#[tokio::test]
async fn an_open_append_or_enqueue_in_one_schema_does_not_block_the_same_stream_or_key_in_another()
-> anyhow::Result<()> {
    let db = TestDb::new().await?;
    migrate(&db).await?;
    let (a, b) = (store(&db, SCHEMAS[0]), store(&db, SCHEMAS[1]));
    let outbox_a = Outbox::new(&OutboxOptions::new().schema(SCHEMAS[0]))?;
    let outbox_b = Outbox::new(&OutboxOptions::new().schema(SCHEMAS[1]))?;

    // Schema A holds the stream lock of `order-1` and the key lock of `k` in an open transaction.
    let mut client = db.pool.get().await?;
    let tx = client.transaction().await?;
    a.append_in(&tx, one("order-1")?).await?;
    outbox_a
        .enqueue(&tx, NewMessage::new("orders", "k", b"a".to_vec()))
        .await?;

    // Schema B appends to the same stream name and enqueues on the same key, undelayed.
    tokio::time::timeout(Duration::from_secs(3), b.append(one("order-1")?))
        .await
        .map_err(|_| anyhow::anyhow!("schema B's append waited for schema A's stream lock"))??;
    tokio::time::timeout(Duration::from_secs(3), async {
        let mut other = db.pool.get().await?;
        let tx = other.transaction().await?;
        outbox_b
            .enqueue(&tx, NewMessage::new("orders", "k", b"b".to_vec()))
            .await?;
        tx.commit().await?;
        anyhow::Ok(())
    })
    .await
    .map_err(|_| anyhow::anyhow!("schema B's enqueue waited for schema A's key lock"))??;
    tx.commit().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_schema_elects_its_own_leader_and_wait_for_hears_only_its_own_checkpoints()
-> anyhow::Result<()> {
    let db = TestDb::new().await?;
    migrate(&db).await?;
    let options = || {
        WorkerOptions::new()
            .heartbeat_interval(Duration::from_millis(100))
            .rebalance_interval(Duration::from_millis(100))
    };
    // Schema A: consumer `proj` is registered (by a worker that then stopped) but runs nowhere.
    let a = store(&db, SCHEMAS[0]);
    let stop_a = CancellationToken::new();
    let worker_a = Worker::builder(a.clone(), db.config())
        .options(options())
        .consumer(Recorder::new("proj", "a"))
        .build()?;
    let task_a = tokio::spawn(worker_a.run(stop_a.clone()));
    let admin_a = WorkerAdmin::new(db.pool.clone(), SCHEMAS[0], &TableNames::default())?;
    eventually(20, "schema A's worker to lead", || async {
        Ok(admin_a.status().await?.workers.iter().any(|w| w.leader))
    })
    .await?;
    admin_a.pause("proj").await?;

    // Schema B runs its own worker with a consumer of the same name: it must lead there too.
    let b = store(&db, SCHEMAS[1]);
    let stop_b = CancellationToken::new();
    let worker_b = Worker::builder(b.clone(), db.config())
        .options(options())
        .consumer(Recorder::new("proj_b", "b"))
        .build()?;
    let task_b = tokio::spawn(worker_b.run(stop_b.clone()));
    let admin_b = WorkerAdmin::new(db.pool.clone(), SCHEMAS[1], &TableNames::default())?;
    eventually(20, "schema B's worker to lead as well", || async {
        Ok(admin_b.status().await?.workers.iter().any(|w| w.leader))
    })
    .await?;
    assert!(admin_a.status().await?.workers.iter().any(|w| w.leader));

    // A checkpoint of `proj` in schema B (as B's batches announce them) must not wake schema
    // A's `wait_for("proj", ..)`.
    let target = a.append(one("a-1")?).await?.last_position();
    let waiting = tokio::spawn({
        let config = db.config();
        async move {
            wait_for(
                &config,
                SCHEMAS[0],
                &TableNames::default(),
                "proj",
                target,
                Duration::from_secs(3),
            )
            .await
        }
    });
    let client = db.client().await?;
    // Announce as schema B's worker would, several times while A's wait_for listens.
    for _ in 0..20 {
        client
            .execute(
                "INSERT INTO tenant_b.consumer_checkpoints (consumer, position) VALUES ('proj', $1)
                 ON CONFLICT (consumer) DO UPDATE SET position = excluded.position",
                &[&i64::try_from(target + 100)?],
            )
            .await?;
        client
            .execute(
                "SELECT pg_notify(c, 'proj ' || $1::text) FROM unnest(ARRAY['eventrail_checkpoints', 'tenant_b_checkpoints']) c",
                &[&i64::try_from(target + 100)?.to_string()],
            )
            .await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match waiting.await? {
        Err(WorkerError::Timeout { .. }) => {}
        other => panic!("schema A's wait_for returned on schema B's checkpoint: {other:?}"),
    }
    stop_a.cancel();
    stop_b.cancel();
    task_a.await??;
    task_b.await??;
    Ok(())
}
