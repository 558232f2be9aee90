//! Reads on a hot standby (a streaming replica of a throwaway cluster, started from the same
//! binaries): the frontier comes from the primary, the events from the standby once it has
//! replayed that far, so a lagging standby delays reads and never shortens them.

use std::time::Duration;

use eventrail_core::{AppendRequest, EventStore, ExpectedVersion, NewEvent, StreamName};
use eventrail_store_postgres::{GapWatch, PgConnectOptions, PgEventStore, Standby};
use eventrail_worker::{TableNames, Worker, WorkerAdmin, WorkerOptions};
use integration_tests::Recorder;
use integration_tests::checks::{assert_exactly_once_in_order, create_handled};
use integration_tests::servers::Cluster;
use tokio_util::sync::CancellationToken;

use crate::harness::{connect, eventually};

fn request(stream: &str, n: usize) -> anyhow::Result<AppendRequest> {
    Ok(AppendRequest::new(
        stream.parse::<StreamName>()?,
        ExpectedVersion::Any,
        (0..n)
            .map(|i| NewEvent::json("Tick", serde_json::json!({ "i": i })))
            .collect(),
    ))
}

/// A primary with the worker's tables in database `name` (its log partitioned every
/// `partition_size` positions, if given), and a standby of it.
async fn primary_and_standby(
    name: &str,
    partition_size: Option<u64>,
) -> anyhow::Result<(Cluster, integration_tests::servers::Standby, String)> {
    let cluster = Cluster::start(None).await?;
    let url = eventrail_devdb::recreate_database(&cluster.admin_url, name).await?;
    let mut client = connect(&url).await?;
    let migrator = eventrail_worker::worker_migrator("eventrail", &TableNames::default())?;
    migrator.run(&mut client).await?;
    if let Some(size) = partition_size {
        migrator.partition_by_position(&mut client, size).await?;
    }
    create_handled(&client).await?;
    let standby = cluster.start_standby().await?;
    Ok((cluster, standby, url))
}

async fn set_replay(standby_url: &str, paused: bool) -> anyhow::Result<()> {
    let sql = if paused {
        "SELECT pg_wal_replay_pause()"
    } else {
        "SELECT pg_wal_replay_resume()"
    };
    connect(standby_url).await?.batch_execute(sql).await?;
    Ok(())
}

#[tokio::test]
async fn a_standby_read_waits_for_the_primarys_open_appends_and_for_replay() -> anyhow::Result<()> {
    let (_cluster, standby, url) = primary_and_standby("eventrail_standby_reads", None).await?;
    let store = PgEventStore::new(eventrail_devdb::pool(&url, 4)?);
    let replica = Standby::new(eventrail_devdb::pool(
        &standby.url("eventrail_standby_reads"),
        4,
    )?)
    .max_wait(Duration::from_secs(2));
    let first = store.append(request("a-1", 1)?).await?.last_position();

    // An append left open on the primary: the standby read stops below it.
    let mut holder = connect(&url).await?;
    let tx = holder.transaction().await?;
    let held = store
        .append_in(&tx, request("a-2", 1)?)
        .await?
        .last_position();
    let later = store.append(request("a-3", 2)?).await?.positions;
    let mut watch = GapWatch::new();
    for _ in 0..3 {
        let read = store
            .read_safe_on(&replica, &mut watch, 0, 100, None, None)
            .await?;
        assert_eq!(read.frontier.safe, first, "{:?}", read.frontier);
        let positions: Vec<u64> = read.events.iter().map(|e| e.global_position).collect();
        assert_eq!(positions, [first], "read on the standby up to the frontier");
    }
    tx.commit().await?;
    let read = store
        .read_safe_on(&replica, &mut watch, first, 100, None, None)
        .await?;
    let positions: Vec<u64> = read.events.iter().map(|e| e.global_position).collect();
    assert_eq!(positions, [held, later[0], later[1]]);

    // Replay paused: the primary's frontier moves on, the standby has not seen it. The read
    // fails (retryable) rather than come back short, and succeeds once replay resumes.
    set_replay(&standby.admin_url, true).await?;
    let paused_at = read.frontier.safe;
    let appended = store.append(request("b-1", 3)?).await?.positions;
    let lagging = store
        .read_safe_on(&replica, &mut watch, paused_at, 100, None, None)
        .await;
    match lagging {
        Err(e) => assert!(
            e.to_string().contains("has not replayed")
                || eventrail_core::error_chain(&e).contains("has not replayed"),
            "{e:?}"
        ),
        Ok(read) => panic!(
            "a read on a standby that has not replayed {appended:?} returned {} events up to {}",
            read.events.len(),
            read.frontier.safe
        ),
    }
    set_replay(&standby.admin_url, false).await?;
    let read = store
        .read_safe_on(&replica, &mut watch, paused_at, 100, None, None)
        .await?;
    let positions: Vec<u64> = read.events.iter().map(|e| e.global_position).collect();
    assert_eq!(positions, appended, "everything once replay resumed");
    // The reads waited for the WAL position the probe itself read on the primary; a probe on a
    // server in recovery has none (a read then asks the primary).
    assert!(read.frontier.wal_insert.is_some(), "{:?}", read.frontier);
    let on_standby = PgEventStore::new(eventrail_devdb::pool(
        &standby.url("eventrail_standby_reads"),
        2,
    )?);
    let probed_there = on_standby
        .probe_frontier(&mut GapWatch::new(), 0, 100)
        .await?;
    assert_eq!(probed_there.wal_insert, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_reading_on_a_standby_handles_everything_once_in_order_across_replay_pauses()
-> anyhow::Result<()> {
    worker_on_a_standby("eventrail_standby_worker", None).await
}

/// The same on a log partitioned every 50 positions: the primary attaches partitions while the
/// standby replays them and the worker reads there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_reading_a_partitioned_log_on_a_standby_handles_everything_once_in_order()
-> anyhow::Result<()> {
    worker_on_a_standby("eventrail_standby_partitioned", Some(50)).await
}

async fn worker_on_a_standby(name: &str, partition_size: Option<u64>) -> anyhow::Result<()> {
    let (_cluster, standby, url) = primary_and_standby(name, partition_size).await?;
    let store = PgEventStore::new(eventrail_devdb::pool(&url, 8)?);
    let standby_client = connect(&standby.url(name)).await?;
    let rows_read = || async {
        let row = standby_client
            .query_one(
                "SELECT tup_returned + tup_fetched FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .await?;
        anyhow::Ok(row.get::<_, i64>(0))
    };
    let read_before = rows_read().await?;
    let mut last = 0;
    for i in 0..20 {
        last = store
            .append(request(&format!("backlog-{i}"), 20)?)
            .await?
            .last_position();
    }
    let options = WorkerOptions::new()
        .batch_size(50)
        .heartbeat_interval(Duration::from_millis(100))
        .rebalance_interval(Duration::from_millis(100))
        .base_poll_interval(Duration::from_millis(10))
        .max_poll_interval(Duration::from_millis(200));
    let worker = Worker::builder(
        PgEventStore::new(eventrail_devdb::pool(&url, 8)?),
        url.parse::<PgConnectOptions>()?,
    )
    .options(options)
    .standby(Standby::new(eventrail_devdb::pool(&standby.url(name), 4)?))
    .consumer(Recorder::new("c0", "w"))
    .consumer(Recorder::new("c1", "w"))
    .build()?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker.run(stop.clone()));
    let admin = WorkerAdmin::new(
        eventrail_devdb::pool(&url, 2)?,
        "eventrail",
        &TableNames::default(),
    )?;
    let at = |position: u64| {
        let admin = &admin;
        async move {
            let consumers = admin.status().await?.consumers;
            anyhow::Ok(consumers.len() == 2 && consumers.iter().all(|c| c.position >= position))
        }
    };
    eventually(30, "the consumers to catch up through the standby", || {
        at(last)
    })
    .await?;
    for round in 0..3 {
        set_replay(&standby.admin_url, true).await?;
        for i in 0..5 {
            last = store
                .append(request(&format!("live{round}-{i}"), 3)?)
                .await?
                .last_position();
        }
        set_replay(&standby.admin_url, false).await?;
    }
    eventually(
        30,
        "the consumers to handle what was appended while replay paused",
        || at(last),
    )
    .await?;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), task).await???;
    let committed: i64 = connect(&url)
        .await?
        .query_one("SELECT count(*) FROM eventrail.events", &[])
        .await?
        .get(0);
    // The events were read on the standby (its own statistics, flushed within a second or so).
    eventually(10, "the standby to count the rows it returned", || async {
        Ok(rows_read().await? - read_before >= 2 * committed)
    })
    .await?;
    assert_exactly_once_in_order(&connect(&url).await?, 2).await
}
