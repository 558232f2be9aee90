//! Preconditions at every isolation level: READ COMMITTED, REPEATABLE READ and SERIALIZABLE, set
//! per transaction and as the database default. A precondition is either checked against every
//! append it must see, or refused with a typed error; never checked against a stale snapshot.

use std::sync::Arc;

use eventrail_core::{
    AppendRequest, Category, EventStore, ExpectedPosition, ExpectedVersion, NewEvent,
    PositionScope, ReadAllOptions, StoreError, StreamName,
};
use eventrail_store_postgres::PgEventStore;
use tokio::sync::Barrier;
use tokio_postgres::IsolationLevel;

use crate::harness::{LAYOUTS, TestDb};

const LEVELS: [(IsolationLevel, &str); 2] = [
    (IsolationLevel::RepeatableRead, "repeatable read"),
    (IsolationLevel::Serializable, "serializable"),
];

/// Every isolation level above READ COMMITTED on every layout of the log.
fn cases() -> impl Iterator<Item = ((IsolationLevel, &'static str), Option<u64>)> {
    LEVELS
        .into_iter()
        .flat_map(|level| LAYOUTS.map(|layout| (level, layout)))
}

fn tick() -> NewEvent {
    NewEvent::json("Tick", serde_json::json!({}))
}

fn append(stream: &StreamName, expected: ExpectedVersion) -> AppendRequest {
    AppendRequest::new(stream.clone(), expected, vec![tick()])
}

#[tokio::test]
async fn a_caller_transaction_above_read_committed_never_passes_a_stale_precondition()
-> anyhow::Result<()> {
    let ledger: Category = "ledger".parse()?;
    for ((level, name), layout) in cases() {
        let db = TestDb::with_layout(layout).await?;
        let store = db.store();
        let stream: StreamName = format!("ledger-{}", name.replace(' ', "_")).parse()?;
        let head = store.append(append(&stream, ExpectedVersion::Any)).await?;
        let mut client = db.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(level)
            .start()
            .await?;
        // The caller's snapshot is taken here, before the concurrent append commits.
        tx.query_one("SELECT count(*) FROM eventrail.events", &[])
            .await?;
        store.append(append(&stream, ExpectedVersion::Any)).await?;

        let by_position = store
            .append_in(
                &tx,
                append(&stream, ExpectedVersion::Any).with_expected_position(
                    ExpectedPosition::category(ledger.clone(), Some(head.last_position())),
                ),
            )
            .await;
        assert!(
            matches!(&by_position, Err(StoreError::IsolationNotSupported { level }) if level == name),
            "{name}, partitions {layout:?}: {by_position:?}"
        );
        let by_version = store
            .append_in(
                &tx,
                append(&stream, ExpectedVersion::Exact(head.stream_version)),
            )
            .await;
        assert!(
            matches!(by_version, Err(StoreError::IsolationNotSupported { .. })),
            "{name}, partitions {layout:?}: {by_version:?}"
        );
        // Refused without aborting the caller's transaction.
        tx.query_one("SELECT 1", &[]).await?;
        tx.commit().await?;
        assert_eq!(
            store.stream_version(&stream).await?,
            Some(1),
            "{name}, partitions {layout:?}: nothing written"
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_unconditional_append_on_a_stale_snapshot_is_a_typed_serialization_conflict()
-> anyhow::Result<()> {
    for ((level, name), layout) in cases() {
        let db = TestDb::with_layout(layout).await?;
        let store = db.store();
        let stream: StreamName = format!("stale-{}", name.replace(' ', "_")).parse()?;
        store.append(append(&stream, ExpectedVersion::Any)).await?;
        let mut client = db.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(level)
            .start()
            .await?;
        tx.query_one("SELECT count(*) FROM eventrail.events", &[])
            .await?;
        store.append(append(&stream, ExpectedVersion::Any)).await?;
        let stale = store
            .append_in(&tx, append(&stream, ExpectedVersion::Any))
            .await;
        match stale {
            Err(e @ StoreError::SerializationConflict(_)) => assert!(e.is_retryable()),
            other => panic!(
                "{name}, partitions {layout:?}: expected a serialization conflict, got {other:?}"
            ),
        }
        tx.rollback().await?;
        // Retried in a new transaction, it goes through.
        let tx = client
            .build_transaction()
            .isolation_level(level)
            .start()
            .await?;
        store
            .append_in(&tx, append(&stream, ExpectedVersion::Any))
            .await?;
        tx.commit().await?;
        assert_eq!(
            store.stream_version(&stream).await?,
            Some(2),
            "{name}, partitions {layout:?}"
        );
    }
    Ok(())
}

/// The database's default isolation set to `level`, and a store on a new pool (new sessions
/// take the default).
pub(crate) async fn store_with_default(db: &TestDb, level: &str) -> anyhow::Result<PgEventStore> {
    db.client()
        .await?
        .batch_execute(&format!(
            "ALTER DATABASE {} SET default_transaction_isolation = '{level}'",
            db.name
        ))
        .await?;
    let store = PgEventStore::new(eventrail_devdb::pool(&db.url, 12)?);
    let client = store.pool().get().await?;
    let shown: String = client
        .query_one("SHOW default_transaction_isolation", &[])
        .await?
        .get(0);
    anyhow::ensure!(shown == level, "the default did not apply: {shown}");
    Ok(store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stores_own_appends_hold_their_preconditions_whatever_the_database_default()
-> anyhow::Result<()> {
    for ((_, level), layout) in cases() {
        let db = TestDb::with_layout(layout).await?;
        let store = store_with_default(&db, level).await?;
        let category: Category = "ledger".parse()?;
        for round in 0..4 {
            let head = store
                .read_category(&category, ReadAllOptions::default().max_count(10_000))
                .await?
                .last()
                .map(|e| e.global_position);
            let barrier = Arc::new(Barrier::new(8));
            let mut tasks = Vec::new();
            for n in 0..8 {
                let (store, category, barrier) = (store.clone(), category.clone(), barrier.clone());
                tasks.push(tokio::spawn(async move {
                    barrier.wait().await;
                    let stream = StreamName::new("ledger", &format!("{round}x{n}"))?;
                    let position = store
                        .append(
                            append(&stream, ExpectedVersion::Any)
                                .with_expected_position(ExpectedPosition::category(category, head)),
                        )
                        .await;
                    // Version checks race on one shared stream.
                    let shared = StreamName::new("counter", &round.to_string())?;
                    let version = store
                        .append(append(&shared, ExpectedVersion::NoStream))
                        .await;
                    anyhow::Ok((position, version))
                }));
            }
            let (mut by_position, mut by_version) = (0, 0);
            for t in tasks {
                let (position, version) = t.await??;
                match position {
                    Ok(_) => by_position += 1,
                    Err(StoreError::PositionConflict { head: h, .. }) => assert!(Some(h) > head),
                    Err(other) => panic!(
                        "{level}, partitions {layout:?}: unexpected {}",
                        eventrail_core::error_chain(&other)
                    ),
                }
                match version {
                    Ok(_) => by_version += 1,
                    Err(StoreError::WrongExpectedVersion {
                        actual: Some(0), ..
                    }) => {}
                    Err(other) => panic!(
                        "{level}, partitions {layout:?}: unexpected {}",
                        eventrail_core::error_chain(&other)
                    ),
                }
            }
            assert_eq!(
                by_position, 1,
                "{level}, partitions {layout:?}, round {round}: one writer moves the category"
            );
            assert_eq!(
                by_version, 1,
                "{level}, partitions {layout:?}, round {round}: one writer creates the stream"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_complete_scope_read_includes_the_append_it_waited_for_whatever_the_default()
-> anyhow::Result<()> {
    for ((_, level), layout) in cases() {
        let db = TestDb::with_layout(layout).await?;
        let store = store_with_default(&db, level).await?;
        let first = store
            .append(append(&"orders-1".parse()?, ExpectedVersion::Any))
            .await?
            .last_position();
        // An append in flight in the scope, with a position above `first`.
        let mut writer = db.client().await?;
        let tx = writer
            .build_transaction()
            .isolation_level(IsolationLevel::ReadCommitted)
            .start()
            .await?;
        let in_flight = store
            .append_in(&tx, append(&"orders-2".parse()?, ExpectedVersion::Any))
            .await?
            .last_position();
        let reader = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .read_scope_complete(
                        &PositionScope::Category("orders".parse()?),
                        Some(first),
                        100,
                    )
                    .await
                    .map_err(anyhow::Error::from)
            })
        };
        // The reader waits for the scope's lock; give it time to take its snapshot, then commit.
        crate::harness::eventually(20, "the reader waits on the scope lock", || async {
            let waiting: i64 = db
                .client()
                .await?
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
                     AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                    &[],
                )
                .await?
                .get(0);
            anyhow::Ok(waiting > 0)
        })
        .await?;
        tx.commit().await?;
        let read = reader.await??;
        assert_eq!(
            read.iter().map(|e| e.global_position).collect::<Vec<_>>(),
            [in_flight],
            "{level}, partitions {layout:?}: the scope read misses the append it waited for"
        );
    }
    Ok(())
}
