//! A log partitioned by position range (optional migration 10): the store's rules hold on it
//! (versions, event ids, concurrency, the three append paths, a consumer's gap proof), a plain log
//! converts without losing anything, and partitions are attached ahead without waiting for open
//! appends or readers.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use eventrail_core::{
    AppendRequest, EventData, EventStore, ExpectedVersion, NewEvent, ReadAllOptions,
    ReadStreamOptions, StoreError, StreamName,
};
use eventrail_store_postgres::{MigrationError, MigrationState, PgEventStore};
use eventrail_worker::{TableNames, Worker, WorkerAdmin, WorkerOptions};
use integration_tests::{HANDLED_DDL, Recorder};
use tokio::sync::Barrier;
use tokio_util::sync::CancellationToken;

use crate::harness::{TestDb, connect, eventually, one_event};
use crate::worker::append;

fn events(n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| NewEvent::json("Happened", serde_json::json!({ "i": i })))
        .collect()
}

/// The partitions of the log and the bound the bookkeeping records.
async fn partitions(db: &TestDb) -> anyhow::Result<(i64, i64)> {
    let row = db
        .client()
        .await?
        .query_one(
            "SELECT (SELECT count(*) FROM pg_inherits WHERE inhparent = 'eventrail.events'::regclass),
                    (SELECT upper_bound FROM eventrail.event_partitioning)",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

async fn read_everything(
    store: &PgEventStore,
) -> anyhow::Result<Vec<eventrail_core::RecordedEvent>> {
    Ok(store
        .read_all(ReadAllOptions::default().max_count(100_000))
        .await?)
}

#[tokio::test]
async fn the_conformance_suite_passes_on_a_log_partitioned_every_25_positions() -> anyhow::Result<()>
{
    // 25 positions a partition: many appends of the suite cross a boundary, and its
    // larger batches find no partition for their positions until the store attaches one.
    let db = TestDb::partitioned(25).await?;
    eventrail_core::conformance::run(&db.store()).await;
    let (count, bound) = partitions(&db).await?;
    let head = read_everything(&db.store()).await?.len();
    assert!(count > 3 && bound > 25, "{count} partitions up to {bound}");
    assert!(head > 20, "the suite appended {head} events");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_appenders_on_a_partitioned_log_each_get_their_own_versions() -> anyhow::Result<()> {
    let db = TestDb::partitioned(10).await?;
    let store = db.store();
    let stream: StreamName = "race-1".parse()?;
    crate::store::sixteen_tasks_race_on(stream.clone(), &store).await?;
    // Sixteen append three events each at any version (single statements and COPY batches):
    // every version once, every batch contiguous.
    let barrier = Arc::new(Barrier::new(16));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (store, stream, barrier) = (store.clone(), stream.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let n = if i % 4 == 0 { 40 } else { 3 };
            store
                .append(AppendRequest::new(stream, ExpectedVersion::Any, events(n)))
                .await
                .map(|o| (n, o))
        }));
    }
    let mut total = 81;
    for t in tasks {
        let (n, outcome) = t.await??;
        total += n;
        assert_eq!(outcome.positions.len(), n);
    }
    let read = store
        .read_stream(&stream, ReadStreamOptions::default().max_count(1000))
        .await?;
    let versions: Vec<u64> = read.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, (0..total as u64).collect::<Vec<_>>());
    assert_eq!(store.stream_version(&stream).await?, Some(total as u64 - 1));
    let positions: HashSet<u64> = read.iter().map(|e| e.global_position).collect();
    assert_eq!(positions.len(), total);
    Ok(())
}

#[tokio::test]
async fn a_plain_log_converted_to_partitions_keeps_every_event_and_every_rule() -> anyhow::Result<()>
{
    let db = TestDb::new().await?;
    let store = db.store();
    append(&store, "order-1", 5).await?;
    append(&store, "order-2", 40).await?; // the COPY path
    let binary = NewEvent::new("Blob", EventData::Binary(vec![0, 159, 146, 150]));
    let binary_id = binary.id;
    store
        .append(AppendRequest::new(
            "blob-1".parse()?,
            ExpectedVersion::NoStream,
            vec![binary],
        ))
        .await?;
    let before = read_everything(&store).await?;

    assert!(db.partition(16).await?, "converted");
    let converted = db.store();
    assert_eq!(
        read_everything(&converted).await?,
        before,
        "every event as it was"
    );
    // The rewritten `append_events` reads the version from `streams` and the category's last
    // position by index descent (migration 14, run again after the conversion).
    let body: String = db
        .client()
        .await?
        .query_one(
            "SELECT prosrc FROM pg_proc
              WHERE proname = 'append_events' AND pronamespace = 'eventrail'::regnamespace",
            &[],
        )
        .await?
        .get(0);
    assert!(
        body.contains("FROM \"eventrail\".streams s WHERE s.stream_name = p_stream")
            && body.contains("ORDER BY e.global_position DESC LIMIT 1")
            && !body.contains("WHERE e.category = p_scope;"),
        "append_events after the conversion: {body}"
    );

    // Versions go on from the stream's last one, by every path.
    let order: StreamName = "order-1".parse()?;
    assert_eq!(converted.stream_version(&order).await?, Some(4));
    let wrong = converted
        .append(AppendRequest::new(
            order.clone(),
            ExpectedVersion::Exact(3),
            events(1),
        ))
        .await;
    assert!(
        matches!(
            wrong,
            Err(StoreError::WrongExpectedVersion {
                actual: Some(4),
                ..
            })
        ),
        "{wrong:?}"
    );
    let next = converted
        .append(AppendRequest::new(
            order.clone(),
            ExpectedVersion::Exact(4),
            events(2),
        ))
        .await?;
    assert_eq!(next.stream_version, 6);
    let copied = converted
        .append(AppendRequest::new(
            order.clone(),
            ExpectedVersion::Exact(6),
            events(40),
        ))
        .await?;
    assert_eq!(copied.stream_version, 46);
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    let inside = converted
        .append_in(
            &tx,
            AppendRequest::new(order.clone(), ExpectedVersion::Exact(46), events(1)),
        )
        .await?;
    tx.commit().await?;
    assert_eq!(inside.stream_version, 47);
    // Each stream's row knows its newest event: found for the converted streams (`blob-1` has
    // had none since), kept by every append path since; reads see every event.
    let bounds = db
        .client()
        .await?
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.last_position = (SELECT max(e.global_position)
                                   FROM eventrail.events e WHERE e.stream_name = s.stream_name))
               FROM eventrail.streams s",
            &[],
        )
        .await?;
    assert_eq!(
        (bounds.get::<_, i64>(0), bounds.get::<_, i64>(1)),
        (3, 3),
        "streams whose last position is their newest event's"
    );
    let whole = converted
        .read_stream(&order, ReadStreamOptions::default())
        .await?;
    assert_eq!(whole.len(), 48);
    assert_eq!(
        whole.last().map(|e| e.global_position),
        Some(inside.last_position())
    );

    // An event id from before the conversion is still refused, by name.
    let again = NewEvent::new("Blob", EventData::Binary(vec![1])).with_id(binary_id);
    let duplicate = converted
        .append(AppendRequest::new(
            "blob-2".parse()?,
            ExpectedVersion::Any,
            vec![again],
        ))
        .await;
    assert!(
        matches!(duplicate, Err(StoreError::DuplicateEventId { event_id: Some(id) }) if id == binary_id),
        "{duplicate:?}"
    );
    // Nothing of the refused append was written.
    assert_eq!(converted.stream_version(&"blob-2".parse()?).await?, None);

    // Converting again is a no-op; another size is refused; the bookkeeping knows it.
    assert!(!db.partition(16).await?);
    match db.partition(32).await {
        Err(e) => assert!(
            matches!(
                e.downcast_ref::<MigrationError>(),
                Some(MigrationError::PartitionedDifferently { partition_size: 16 })
            ),
            "{e:#}"
        ),
        Ok(done) => anyhow::bail!("a second size was accepted ({done})"),
    }
    let client = connect(&db.url).await?;
    let info = eventrail_store_postgres::Migrator::new("eventrail")?
        .info(&client)
        .await?;
    let ten = info
        .iter()
        .find(|m| m.version == 10)
        .expect("migration 10 listed");
    assert_eq!(
        (ten.name.as_str(), ten.state),
        ("partition_by_position", MigrationState::Applied)
    );
    // Events stay immutable on the partitioned table.
    let refused = client
        .execute("UPDATE eventrail.events SET event_type = 'x'", &[])
        .await;
    assert_eq!(
        refused
            .err()
            .and_then(|e| e.code().cloned())
            .map(|c| c.code().to_owned()),
        Some("ER001".to_owned())
    );
    Ok(())
}

#[tokio::test]
async fn partitions_are_attached_ahead_of_appends_without_waiting_for_open_appends_or_readers()
-> anyhow::Result<()> {
    let db = TestDb::partitioned(50).await?;
    let store = db.store();
    let (_, first_bound) = partitions(&db).await?;

    // An append and a reader keep their transactions open.
    let mut appender = db.client().await?;
    let open_append = appender.transaction().await?;
    store.append_in(&open_append, one_event("open-1")?).await?;
    let mut reader = db.client().await?;
    let open_read = reader
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await?;
    open_read
        .query("SELECT count(*) FROM eventrail.events", &[])
        .await?;

    // Attaching does not wait for them (a lock wait would fail after 2 s).
    let maintainer = db.client().await?;
    maintainer.batch_execute("SET lock_timeout = '2s'").await?;
    let bound: i64 = maintainer
        .query_one("SELECT eventrail.add_event_partitions(500)", &[])
        .await?
        .get(0);
    assert!(bound > 500 && bound > first_bound, "attached up to {bound}");
    open_append.commit().await?;
    open_read.commit().await?;

    // The store's own appends attach partitions as the sequence nears the newest one, and a
    // batch larger than a partition finds room too.
    let mut last = 0;
    for i in 0..300 {
        last = append(&store, &format!("s-{}", i % 7), 1 + i % 3).await?;
    }
    last = last.max(append(&store, "big-1", 130).await?);
    eventually(10, "a partition ahead of the last position", || async {
        let (_, bound) = partitions(&db).await?;
        Ok(u64::try_from(bound)? > last + 25)
    })
    .await?;
    let everything = read_everything(&store).await?;
    let positions: Vec<u64> = everything.iter().map(|e| e.global_position).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        everything.len(),
        1 + (0..300).map(|i| 1 + i % 3).sum::<usize>() + 130
    );
    Ok(())
}

#[tokio::test]
async fn an_append_in_a_caller_transaction_past_the_last_partition_is_retryable_and_then_succeeds()
-> anyhow::Result<()> {
    let db = TestDb::partitioned(10).await?;
    let store = db.store();
    let (_, bound) = partitions(&db).await?;
    // More events than there are positions left in the attached partitions.
    let n = usize::try_from(bound)? + 5;
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    let request = AppendRequest::new("bulk-1".parse()?, ExpectedVersion::NoStream, events(n));
    let failed = store.append_in(&tx, request.clone()).await;
    match &failed {
        Err(e) => assert!(e.is_retryable(), "{e:#}"),
        Ok(o) => anyhow::bail!("appended past the partitions: {o:?}"),
    }
    tx.rollback().await?;
    // The store attached the room the batch needs: the retry goes through.
    let tx = client.transaction().await?;
    let outcome = store.append_in(&tx, request).await?;
    tx.commit().await?;
    assert_eq!(outcome.stream_version, n as u64 - 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumers_handle_every_event_of_a_partitioned_log_once_in_order_across_holes()
-> anyhow::Result<()> {
    let db = TestDb::partitioned(20).await?;
    db.client().await?.batch_execute(HANDLED_DDL).await?;
    let retried = Arc::new(AtomicUsize::new(0));
    let store = db.store();
    let options = WorkerOptions::new()
        .heartbeat_interval(Duration::from_millis(100))
        .rebalance_interval(Duration::from_millis(100))
        .base_poll_interval(Duration::from_millis(10))
        .max_poll_interval(Duration::from_millis(200));
    let mut builder = Worker::builder(
        PgEventStore::new(eventrail_devdb::pool(&db.url, 8)?),
        db.config(),
    )
    .options(options);
    for i in 0..2 {
        builder = builder.consumer(Recorder::new(format!("c{i}"), "w"));
    }
    let stop = CancellationToken::new();
    let worker = tokio::spawn(builder.build()?.run(stop.clone()));

    // Four writers across partition boundaries; every third of their transactions rolls back,
    // leaving holes the consumers must prove and pass.
    let mut writers = Vec::new();
    for w in 0..4 {
        let (store, pool, retried) = (store.clone(), db.pool.clone(), retried.clone());
        writers.push(tokio::spawn(async move {
            let mut last = 0;
            for i in 0..40 {
                let mut client = pool.get().await?;
                let tx = client.transaction().await?;
                let request = AppendRequest::new(
                    format!("w{w}-{}", i % 3).parse()?,
                    ExpectedVersion::Any,
                    events(1 + i % 4),
                );
                // A writer retries what the store calls retryable (here: an append that
                // found no partition for its positions, which the store then attached).
                let outcome = match store.append_in(&tx, request.clone()).await {
                    Err(e) if e.is_retryable() => {
                        drop(tx);
                        retried.fetch_add(1, Ordering::Relaxed);
                        let tx = client.transaction().await?;
                        let outcome = store.append_in(&tx, request).await?;
                        tx.commit().await?;
                        last = outcome.last_position();
                        continue;
                    }
                    other => other?,
                };
                if i % 3 == 2 {
                    tx.rollback().await?;
                } else {
                    tx.commit().await?;
                    last = outcome.last_position();
                }
            }
            anyhow::Ok(last)
        }));
    }
    let mut head = 0;
    for w in writers {
        head = head.max(w.await??);
    }
    let admin = WorkerAdmin::new(db.pool.clone(), "eventrail", &TableNames::default())?;
    eventually(20, "both consumers at the head", || async {
        let consumers = admin.status().await?.consumers;
        Ok(consumers.len() == 2 && consumers.iter().all(|c| c.position >= head))
    })
    .await?;
    stop.cancel();
    worker.await??;
    let (count, _) = partitions(&db).await?;
    assert!(count > 5, "the log spans {count} partitions");
    eprintln!("{} appends were retried", retried.load(Ordering::Relaxed));
    integration_tests::checks::assert_exactly_once_in_order(&db.client().await?, 2).await
}

/// Index scans of the stream index of the partition holding `position`.
async fn stream_index_scans(db: &TestDb, position: u64) -> anyhow::Result<i64> {
    let position = i64::try_from(position)?;
    Ok(db
        .client()
        .await?
        .query_one(
            "SELECT coalesce(sum(s.idx_scan), 0)::int8
               FROM pg_stat_user_indexes s
               JOIN pg_index i ON i.indexrelid = s.indexrelid
              WHERE s.relid = (SELECT tableoid FROM eventrail.events WHERE global_position = $1)
                AND i.indkey[0] = (SELECT attnum FROM pg_attribute
                                    WHERE attrelid = 'eventrail.events'::regclass AND attname = 'stream_name')",
            &[&position],
        )
        .await?
        .get(0))
}

#[tokio::test]
async fn a_stream_read_never_opens_the_partitions_before_the_stream_began() -> anyhow::Result<()> {
    let db = TestDb::partitioned(20).await?;
    let store = db.store();
    let old = append(&store, "old-1", 30).await?; // positions 1..=30: two partitions
    for i in 0..5 {
        append(&store, &format!("filler-{i}"), 10).await?;
    }
    let young: StreamName = "young-1".parse()?;
    let first = store
        .append(AppendRequest::new(
            young.clone(),
            ExpectedVersion::NoStream,
            events(3),
        ))
        .await?
        .positions[0];
    let (before_old, before_young) = (
        stream_index_scans(&db, 1).await?,
        stream_index_scans(&db, first).await?,
    );
    for _ in 0..10 {
        let forward = store
            .read_stream(&young, ReadStreamOptions::default())
            .await?;
        assert_eq!(forward.len(), 3);
        let backward = store
            .read_stream(&young, ReadStreamOptions::default().backward())
            .await?;
        assert_eq!(backward.first().map(|e| e.stream_version), Some(2));
    }
    // Statistics reach the views when each session flushes them: wait for the young partition's.
    eventually(10, "the reads' index scans in the statistics", || async {
        Ok(stream_index_scans(&db, first).await? >= before_young + 20)
    })
    .await?;
    assert_eq!(
        stream_index_scans(&db, 1).await?,
        before_old,
        "the oldest partition was opened"
    );
    // The old stream still reads whole, across its partitions.
    let old_stream = store
        .read_stream(&"old-1".parse()?, ReadStreamOptions::default())
        .await?;
    assert_eq!(old_stream.len(), 30);
    assert_eq!(old_stream.last().map(|e| e.global_position), Some(old));
    Ok(())
}

#[tokio::test]
async fn a_stream_read_never_opens_the_partitions_after_the_stream_s_last_event()
-> anyhow::Result<()> {
    let db = TestDb::partitioned(20).await?;
    let store = db.store();
    let old: StreamName = "old-1".parse()?;
    let last = append(&store, "old-1", 5).await?; // positions 1..=5
    let mut filler = 0;
    for i in 0..8 {
        filler = append(&store, &format!("filler-{i}"), 10).await?;
    }
    let later = [last + 30, filler];
    let scans = |positions: [u64; 2]| {
        let db = &db;
        async move {
            let mut counts = Vec::new();
            for p in positions {
                counts.push(stream_index_scans(db, p).await?);
            }
            anyhow::Ok(counts)
        }
    };
    let (before_own, before_later) = (stream_index_scans(&db, last).await?, scans(later).await?);
    for _ in 0..10 {
        let forward = store
            .read_stream(&old, ReadStreamOptions::default())
            .await?;
        assert_eq!(forward.len(), 5);
        let backward = store
            .read_stream(&old, ReadStreamOptions::default().backward())
            .await?;
        assert_eq!(backward.first().map(|e| e.global_position), Some(last));
    }
    eventually(10, "the reads' index scans in the statistics", || async {
        Ok(stream_index_scans(&db, last).await? >= before_own + 20)
    })
    .await?;
    assert_eq!(
        scans(later).await?,
        before_later,
        "partitions after the stream's last event were opened"
    );
    // The stream goes on, far from where it stopped: its reads find the new events, by every
    // append path (one statement, COPY, `append_events` with a precondition).
    let one = append(&store, "old-1", 1).await?;
    let copied = append(&store, "old-1", 40).await?;
    let checked = store
        .append(
            AppendRequest::new(old.clone(), ExpectedVersion::Exact(45), events(1))
                .with_expected_position(eventrail_core::ExpectedPosition::category(
                    eventrail_core::Category::from(&old),
                    Some(copied),
                )),
        )
        .await?
        .positions[0];
    let whole = store
        .read_stream(&old, ReadStreamOptions::default())
        .await?;
    assert_eq!(whole.len(), 47);
    assert!(whole.iter().any(|e| e.global_position == one));
    assert!(whole.iter().any(|e| e.global_position == copied));
    assert_eq!(whole.last().map(|e| e.global_position), Some(checked));
    let newest = store
        .read_stream(&old, ReadStreamOptions::default().backward().max_count(1))
        .await?;
    assert_eq!(newest.first().map(|e| e.global_position), Some(checked));
    Ok(())
}

#[tokio::test]
async fn a_log_partitioned_by_the_previous_release_gets_its_stream_bounds_when_migrated()
-> anyhow::Result<()> {
    let db = TestDb::partitioned(20).await?;
    let store = db.store();
    append(&store, "early-1", 5).await?;
    // The log as the previous release partitioned it: migration 10's trigger, no last positions,
    // migration 13 not applied.
    let migration_10 = include_str!("../../../migrations/optional/0010_partition_by_position.sql");
    let start = migration_10
        .find("CREATE FUNCTION {schema}.record_event_heads()")
        .expect("migration 10 creates the trigger function");
    let end = migration_10[start..]
        .find("CREATE TRIGGER")
        .map(|n| start + n)
        .expect("then the trigger");
    let old_trigger = migration_10[start..end]
        .replace("{schema}", "eventrail")
        .replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION");
    let client = db.client().await?;
    client
        .batch_execute(&format!(
            "{old_trigger}
             ALTER TABLE eventrail.streams DROP COLUMN last_position;
             DELETE FROM eventrail.eventrail_migrations WHERE version = 13;"
        ))
        .await?;
    for i in 0..4 {
        append(&store, &format!("filler-{i}"), 10).await?;
    }
    let early_last = append(&store, "early-1", 3).await?;
    let late_last = append(&store, "late-1", 40).await?;

    let mut migrating = connect(&db.url).await?;
    let applied = crate::harness::migrator()?.run(&mut migrating).await?;
    assert_eq!(applied, [13]);
    let bounds: Vec<(String, i64)> = client
        .query(
            "SELECT stream_name, last_position FROM eventrail.streams
              WHERE stream_name IN ('early-1', 'late-1') ORDER BY stream_name",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected = [
        ("early-1".to_owned(), i64::try_from(early_last)?),
        ("late-1".to_owned(), i64::try_from(late_last)?),
    ];
    assert_eq!(bounds, expected, "each stream's newest event, found once");

    // Reads see every event, and the new trigger keeps the bounds from here on.
    let early: StreamName = "early-1".parse()?;
    let store = db.store();
    let next = append(&store, "early-1", 2).await?;
    let whole = store
        .read_stream(&early, ReadStreamOptions::default())
        .await?;
    assert_eq!(whole.len(), 10);
    assert_eq!(whole.last().map(|e| e.global_position), Some(next));
    Ok(())
}

/// Tables in the log's schema named like a partition that are not attached to the log.
async fn detached_partitions(db: &TestDb) -> anyhow::Result<i64> {
    Ok(db
        .client()
        .await?
        .query_one(
            "SELECT count(*) FROM pg_class AS c
             WHERE c.relnamespace = 'eventrail'::regnamespace AND c.relkind = 'r'
               AND c.relname LIKE 'events\\_p%'
               AND NOT EXISTS (SELECT 1 FROM pg_inherits AS i WHERE i.inhrelid = c.oid)",
            &[],
        )
        .await?
        .get(0))
}

/// Starts `add_event_partitions` on a session of its own and waits until it stops at the
/// ATTACH (another session holds the log's SHARE UPDATE EXCLUSIVE lock); returns the session's
/// process id and the call.
async fn attach_held_at_the_lock(
    db: &TestDb,
) -> anyhow::Result<(
    i32,
    tokio::task::JoinHandle<Result<u64, tokio_postgres::Error>>,
)> {
    let attacher = db.client().await?;
    let pid: i32 = attacher
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    let call = tokio::spawn(async move {
        attacher
            .execute("SELECT eventrail.add_event_partitions(100)", &[])
            .await
    });
    let watcher = db.client().await?;
    eventually(20, "the attach to wait for the log's lock", || async {
        let waiting: bool = watcher
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND NOT granted)",
                &[&pid],
            )
            .await?
            .get(0);
        anyhow::Ok(waiting)
    })
    .await?;
    Ok((pid, call))
}

/// An attach cut short, by its session being killed or by the server restarting under it,
/// leaves the log as it was: the new partition's table is gone with the attach's transaction,
/// the recorded bound did not move, and the store's next append past the last partition
/// attaches what it needs and goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_attach_cut_short_by_a_kill_or_a_restart_leaves_the_log_whole() -> anyhow::Result<()> {
    let cluster = integration_tests::servers::Cluster::start(None).await?;
    let db = TestDb::on(&cluster.admin_url).await?;
    db.partition(10).await?;
    let store = db.store();
    let mut written = store
        .append(AppendRequest::new(
            "kept-1".parse()?,
            ExpectedVersion::NoStream,
            events(5),
        ))
        .await?
        .positions;

    for fault in ["session killed", "server restarted"] {
        let before = partitions(&db).await?;
        let mut holder = db.client().await?;
        let lock = holder.transaction().await?;
        lock.batch_execute("LOCK TABLE eventrail.events IN SHARE UPDATE EXCLUSIVE MODE")
            .await?;
        let (pid, call) = attach_held_at_the_lock(&db).await?;
        if fault == "session killed" {
            db.client()
                .await?
                .execute("SELECT pg_terminate_backend($1)", &[&pid])
                .await?;
            assert!(call.await?.is_err(), "{fault}: the attach was cut");
            lock.rollback().await?;
        } else {
            cluster.restart().await?;
            assert!(call.await?.is_err(), "{fault}: the attach was cut");
            drop(lock);
        }
        assert_eq!(partitions(&db).await?, before, "{fault}: the log as it was");
        assert_eq!(detached_partitions(&db).await?, 0, "{fault}: no table left");

        // Past every attached partition: the store attaches room and the append goes through.
        let n = usize::try_from(before.1)? + 5 - written.len();
        let outcome = store
            .append(AppendRequest::new(
                "kept-1".parse()?,
                ExpectedVersion::Exact(written.len() as u64 - 1),
                events(n),
            ))
            .await?;
        written.extend(outcome.positions);
        let read: Vec<u64> = read_everything(&store)
            .await?
            .iter()
            .map(|e| e.global_position)
            .collect();
        assert_eq!(read, written, "{fault}: every event once, in order");
    }
    Ok(())
}

/// With the database's default isolation at SERIALIZABLE, the store's attach that waited for
/// another attach's lock on the bookkeeping row goes on from the bound that one committed,
/// instead of failing with a serialization error (found by the isolation tests on this layout
/// under load).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_attach_that_waited_for_another_goes_on_at_any_default_isolation() -> anyhow::Result<()>
{
    let db = TestDb::partitioned(10).await?;
    let store = crate::isolation::store_with_default(&db, "serializable").await?;
    let (_, before) = partitions(&db).await?;
    // Another attach holds the bookkeeping row.
    let mut other = db.client().await?;
    let held = other.transaction().await?;
    held.execute("SELECT eventrail.add_event_partitions(30)", &[])
        .await?;
    let attach = {
        let store = store.clone();
        tokio::spawn(async move { store.add_partitions(50).await })
    };
    let watcher = db.client().await?;
    eventually(20, "the store's attach to wait for the other", || async {
        anyhow::ensure!(!attach.is_finished(), "the attach did not wait");
        let waiting: bool = watcher
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_locks AS l JOIN pg_stat_activity AS a USING (pid)
                 WHERE NOT l.granted AND a.datname = current_database())",
                &[],
            )
            .await?
            .get(0);
        anyhow::Ok(waiting)
    })
    .await?;
    held.commit().await?;
    let bound = attach.await??.map(|b| b as i64);
    let (_, after) = partitions(&db).await?;
    assert_eq!(bound, Some(after));
    assert!(after > before, "{before} → {after}");
    Ok(())
}
