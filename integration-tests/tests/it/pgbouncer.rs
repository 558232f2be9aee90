//! The runtime through a real PgBouncer in transaction pooling mode (two server connections per
//! database, handed out round robin, so consecutive transactions of one client land on different
//! server connections): the store, workers in lease mode and the outbox relay, with only their
//! session and LISTEN connections going directly to PostgreSQL.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context;
use eventrail_core::{
    AppendRequest, Category, EventStore, ExpectedPosition, ExpectedVersion, NewEvent,
    ReadAllOptions, ReadStreamOptions, StoreError, StreamName,
};
use eventrail_devdb::{PgBouncer, start_pgbouncer};
use eventrail_outbox::{InMemorySink, NewMessage, Outbox, OutboxOptions, Relay, Wakeup};
use eventrail_store_postgres::{
    EventrailConfig, GapWatch, PgConnectOptions, PgEventStore, PgStoreOptions, Statements,
};
use eventrail_worker::{DispatcherStrategy, LeaderMode, TableNames, Worker, WorkerAdmin};
use integration_tests::{HANDLED_DDL, Recorder};
use tokio_util::sync::CancellationToken;

use crate::harness::{TestDb, eventually};

/// A PgBouncer of this test in front of the test server, and the test database through it.
async fn bouncer(db: &TestDb) -> anyhow::Result<(PgBouncer, PgConnectOptions)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = std::env::temp_dir().join(format!("eventrail-pgbouncer-{port}"));
    let bouncer = start_pgbouncer(&db.url, &dir, port, 2).await?;
    let options: PgConnectOptions = bouncer.url(&db.name).parse()?;
    Ok((bouncer, options.max_connections(8)))
}

/// A store through PgBouncer, sending unnamed statements only.
fn store_through(through: &PgConnectOptions) -> anyhow::Result<PgEventStore> {
    Ok(PgEventStore::with_options(
        through.pool("eventrail-store")?,
        PgStoreOptions::new().statements(Statements::Unnamed),
    )?)
}

fn events(n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| NewEvent::json("Happened", serde_json::json!({ "i": i })))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_works_through_pgbouncer_in_transaction_mode() -> anyhow::Result<()> {
    the_store_works_through_pgbouncer(TestDb::new().await?).await
}

/// On a log partitioned every 20 positions, the store learns the layout, attaches partitions
/// and retries an append past the last one on connections PgBouncer hands out per transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_works_through_pgbouncer_on_a_partitioned_log() -> anyhow::Result<()> {
    the_store_works_through_pgbouncer(TestDb::partitioned(20).await?).await
}

async fn the_store_works_through_pgbouncer(db: TestDb) -> anyhow::Result<()> {
    let (_bouncer, through) = bouncer(&db).await?;
    let store = store_through(&through)?;

    // Concurrent appends and reads from eight pooled connections over two server connections.
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let stream: StreamName = format!("order-{w}").parse()?;
            for i in 0..10u64 {
                let expected = if i == 0 {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(2 * i - 1)
                };
                store
                    .append(AppendRequest::new(stream.clone(), expected, events(2)))
                    .await?;
                assert_eq!(store.stream_version(&stream).await?, Some(2 * i + 1));
                let read = store
                    .read_stream(&stream, ReadStreamOptions::default().page_size(3))
                    .await?;
                assert_eq!(read.len() as u64, 2 * i + 2);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }

    // Typed outcomes keep working.
    let stream: StreamName = "order-0".parse()?;
    let stale = store
        .append(AppendRequest::new(
            stream.clone(),
            ExpectedVersion::Exact(3),
            events(1),
        ))
        .await;
    assert!(
        matches!(stale, Err(StoreError::WrongExpectedVersion { .. })),
        "{stale:?}"
    );
    let again = NewEvent::json("Happened", serde_json::json!({}));
    store
        .append(AppendRequest::new(
            stream.clone(),
            ExpectedVersion::Any,
            vec![again.clone()],
        ))
        .await?;
    let duplicate = store
        .append(AppendRequest::new(
            stream.clone(),
            ExpectedVersion::Any,
            vec![again],
        ))
        .await;
    assert!(
        matches!(duplicate, Err(StoreError::DuplicateEventId { .. })),
        "{duplicate:?}"
    );
    let all = store
        .read_all(ReadAllOptions::default().page_size(7))
        .await?;
    assert_eq!(all.len(), 161);
    let head = all.last().map(|e| e.global_position).unwrap_or_default();
    let moved = store
        .append(
            AppendRequest::new("order-9".parse()?, ExpectedVersion::Any, events(1))
                .with_expected_position(ExpectedPosition::all(Some(head - 1))),
        )
        .await;
    assert!(
        matches!(moved, Err(StoreError::PositionConflict { .. })),
        "{moved:?}"
    );
    let category = store
        .read_category(&"order".parse::<Category>()?, ReadAllOptions::default())
        .await?;
    assert_eq!(category.len(), 161);
    let complete = store
        .read_scope_complete(&eventrail_core::PositionScope::All, None, 1000)
        .await?;
    assert_eq!(complete.len(), 161);

    // In the caller's transaction, on a pooled connection through PgBouncer.
    {
        let mut client = store.pool().get().await?;
        let tx = client.transaction().await?;
        store
            .append_in(
                &tx,
                AppendRequest::new("order-9".parse()?, ExpectedVersion::Any, events(2)),
            )
            .await?;
        tx.commit().await?;
    }

    // The gap-safe subscription read, from the start to the head.
    let mut watch = GapWatch::new();
    let mut after = 0;
    let mut seen = 0;
    while seen < 163 {
        let read = store.read_safe(&mut watch, after, 50, None, None).await?;
        assert!(read.frontier.safe > after, "the frontier moves");
        seen += read.events.len();
        after = read.frontier.safe;
    }
    assert_eq!(seen, 163);
    let distinct: HashSet<_> = store
        .read_all(ReadAllOptions::default())
        .await?
        .into_iter()
        .map(|e| e.global_position)
        .collect();
    assert_eq!(distinct.len(), 163);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_workers_run_through_pgbouncer_with_their_sessions_direct() -> anyhow::Result<()> {
    workers_through_pgbouncer(LeaderMode::Lease).await
}

/// The advisory-lock leader mode too: its lock lives on the worker's direct session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn advisory_lock_workers_run_through_pgbouncer_with_their_sessions_direct()
-> anyhow::Result<()> {
    workers_through_pgbouncer(LeaderMode::AdvisoryLock).await
}

async fn workers_through_pgbouncer(mode: LeaderMode) -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    db.client().await?.batch_execute(HANDLED_DDL).await?;
    let (_bouncer, through) = bouncer(&db).await?;
    let options = eventrail_worker::WorkerOptions::new()
        .leader_mode(mode)
        .dispatcher(DispatcherStrategy::Notify)
        .heartbeat_interval(Duration::from_millis(100))
        .rebalance_interval(Duration::from_millis(100))
        .base_poll_interval(Duration::from_millis(10))
        .max_poll_interval(Duration::from_millis(200))
        .dispatcher_interval(Duration::from_millis(200));
    let stop = CancellationToken::new();
    let mut workers = Vec::new();
    // One configuration names both: PgBouncer for pooled work, PostgreSQL for sessions.
    let config = EventrailConfig::builder()
        .connect(through.clone())
        .direct_connect(db.config())
        .statements(Statements::Unnamed)
        .build()?;
    let direct = config.direct_connect_options().cloned().context("direct")?;
    for name in ["w1", "w2"] {
        // Pooled work through PgBouncer; the session and LISTEN connections direct.
        let pooled = config.connect_options().context("pooled")?;
        let store = PgEventStore::from_config(pooled.pool("eventrail-store")?, &config)?;
        let mut builder = Worker::builder(store, direct.clone()).options(options.clone());
        for i in 0..4 {
            builder = builder.consumer(Recorder::new(format!("c{i}"), name));
        }
        workers.push(tokio::spawn(builder.build()?.run(stop.clone())));
    }
    let store = store_through(&through)?;
    let mut last = 0;
    for i in 0..20 {
        last = store
            .append(AppendRequest::new(
                format!("lease-{}", i % 3).parse()?,
                ExpectedVersion::Any,
                events(3),
            ))
            .await?
            .last_position();
    }
    let admin = WorkerAdmin::new(store.pool().clone(), "eventrail", &TableNames::default())?;
    eventually(20, "every consumer at the head", || async {
        let status = admin.status().await?;
        Ok(status.consumers.len() == 4 && status.consumers.iter().all(|c| c.position >= last))
    })
    .await?;
    let status = admin.status().await?;
    assert_eq!(status.workers.iter().filter(|w| w.leader).count(), 1);
    stop.cancel();
    for w in workers {
        w.await??;
    }
    integration_tests::checks::assert_exactly_once_in_order(&db.client().await?, 4).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_relay_works_through_pgbouncer_with_its_listener_direct() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let (_bouncer, through) = bouncer(&db).await?;
    let pool = through.pool("eventrail-test")?;
    let sink = InMemorySink::new();
    let options = OutboxOptions::new()
        .statements(Statements::Unnamed)
        .wakeup(Wakeup::Notify)
        .poll_interval(Duration::from_secs(30));
    let stop = CancellationToken::new();
    let relays: Vec<_> = (0..2)
        .map(|_| {
            let relay =
                Relay::new(pool.clone(), sink.clone(), options.clone())?.listen(db.config());
            let token = stop.child_token();
            anyhow::Ok(tokio::spawn(async move { relay.run(token).await }))
        })
        .collect::<Result<_, _>>()?;
    let outbox = Outbox::new(&OutboxOptions::new())?;
    let mut ids = HashSet::new();
    for batch in 0..10 {
        let mut client = pool.get().await?;
        let tx = client.transaction().await?;
        let messages = (0..5)
            .map(|i| {
                NewMessage::json(
                    "orders",
                    format!("key-{}", (batch + i) % 4),
                    &serde_json::json!({ "batch": batch, "i": i }),
                )
            })
            .collect();
        ids.extend(outbox.enqueue_batch(&tx, messages).await?);
        tx.commit().await?;
    }
    // The poll interval is long: only the direct LISTEN connection wakes the relays this fast.
    eventually(20, "every message published and marked sent", || async {
        let sent: HashSet<_> = sink.messages().iter().map(|m| m.id).collect();
        let client = pool.get().await?;
        let unsent: i64 = client
            .query_typed_one(
                &format!(
                    "SELECT count(*) FROM {} WHERE state <> 'sent'",
                    integration_tests::OUTBOX_MESSAGES
                ),
                &[],
            )
            .await?
            .get(0);
        Ok(sent == ids && unsent == 0)
    })
    .await?;
    stop.cancel();
    for r in relays {
        r.await??;
    }
    Ok(())
}

/// Why the setting exists: cached prepared statements break when consecutive statements of one
/// client land on different server connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cached_statements_fail_through_pgbouncer_in_transaction_mode() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let (_bouncer, through) = bouncer(&db).await?;
    let store = PgEventStore::connect_with(&through)?;
    assert_eq!(store.statements(), Statements::Cached);
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let appended = store
                    .append(AppendRequest::new(
                        format!("cached-{w}").parse()?,
                        ExpectedVersion::Any,
                        events(1),
                    ))
                    .await;
                if let Err(e) = appended {
                    return anyhow::Ok(e.code().map(str::to_owned));
                }
            }
            anyhow::Ok(None)
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.extend(t.await??);
    }
    assert!(
        codes.iter().any(|c| c == "26000"),
        "no append failed on a missing prepared statement: {codes:?}"
    );
    Ok(())
}
