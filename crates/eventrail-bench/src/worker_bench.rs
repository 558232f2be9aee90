//! `eventrail-bench worker`: end-to-end lag, catch-up throughput and failover time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use eventrail_core::{
    AppendRequest, BoxError, EventStore, ExpectedVersion, NewEvent, RecordedEvent, StreamName,
};
use eventrail_store_postgres::PgEventStore;
use eventrail_worker::{
    Consumer, DispatcherStrategy, TableNames, Worker, WorkerAdmin, WorkerOptions, wait_for,
    worker_migrator,
};
use futures::StreamExt;
use tokio_postgres::Transaction;
use tokio_util::sync::CancellationToken;

use crate::{connect, payload};

/// Records, per position, when the handler saw it.
#[derive(Clone, Default)]
struct LagProbe {
    seen: Arc<Mutex<HashMap<u64, Instant>>>,
}

impl Consumer for LagProbe {
    fn name(&self) -> &str {
        "lag-probe"
    }

    async fn handle(&self, _tx: &Transaction<'_>, event: &RecordedEvent) -> Result<(), BoxError> {
        self.seen
            .lock()
            .map_err(|_| "poisoned")?
            .insert(event.global_position, Instant::now());
        Ok(())
    }
}

#[derive(Clone)]
struct Noop(&'static str);

impl Consumer for Noop {
    fn name(&self) -> &str {
        self.0
    }

    async fn handle(&self, _tx: &Transaction<'_>, _event: &RecordedEvent) -> Result<(), BoxError> {
        Ok(())
    }
}

/// The benchmark's payload as a consumer's own type.
#[derive(serde::Deserialize)]
#[expect(dead_code, reason = "read by serde only: decoding is what is measured")]
struct Loaded {
    client: usize,
    n: u64,
    sku: String,
    qty: u32,
    note: String,
}

/// Decodes each payload into [`Loaded`], as a typical projection does, and does nothing else.
struct Decoding(&'static str);

impl Consumer for Decoding {
    fn name(&self) -> &str {
        self.0
    }

    async fn handle(&self, _tx: &Transaction<'_>, event: &RecordedEvent) -> Result<(), BoxError> {
        use eventrail_core::Codec as _;
        let _: Loaded = eventrail_core::JsonCodec.decode(&event.data)?;
        Ok(())
    }
}

pub(crate) async fn fresh(admin_url: &str, name: &str) -> anyhow::Result<(String, PgEventStore)> {
    let url = eventrail_devdb::recreate_database(admin_url, name).await?;
    let mut client = connect(&url).await?;
    worker_migrator("eventrail", &TableNames::default())?
        .run(&mut client)
        .await?;
    Ok((
        url.clone(),
        PgEventStore::new(eventrail_devdb::pool(&url, 16)?),
    ))
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Appends one event per millisecond for `seconds` and measures commit → handler latency.
async fn lag(
    admin_url: &str,
    dispatcher: DispatcherStrategy,
    seconds: u64,
) -> anyhow::Result<Vec<Duration>> {
    let (url, store) = fresh(admin_url, "eventrail_bench_lag").await?;
    let probe = LagProbe::default();
    // The worker has a pool of its own, as in a separate service: the appenders cannot starve it.
    let worker = Worker::builder(
        PgEventStore::new(eventrail_devdb::pool(&url, 8)?),
        url.parse::<eventrail_store_postgres::PgConnectOptions>()?,
    )
    .options(WorkerOptions::new().dispatcher(dispatcher))
    .consumer(probe.clone())
    .build()?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker.run(stop.clone()));
    // Wait until the consumer runs: one event through.
    let warm = store
        .append(AppendRequest::new(
            "lag-0".parse()?,
            ExpectedVersion::Any,
            vec![NewEvent::json("Warm", serde_json::json!({}))],
        ))
        .await?
        .last_position();
    wait_for(
        &url.parse::<eventrail_store_postgres::PgConnectOptions>()?,
        "eventrail",
        &TableNames::default(),
        "lag-probe",
        warm,
        Duration::from_secs(30),
    )
    .await?;

    let committed: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    let end = Instant::now() + Duration::from_secs(seconds);
    let stream: StreamName = "lag-1".parse()?;
    let mut last = warm;
    let mut inflight = futures::stream::FuturesUnordered::new();
    while Instant::now() < end {
        ticker.tick().await;
        let (store, stream, committed) = (store.clone(), stream.clone(), committed.clone());
        inflight.push(async move {
            let out = store
                .append(AppendRequest::new(
                    stream,
                    ExpectedVersion::Any,
                    vec![NewEvent::json("Tick", payload(0, 0))],
                ))
                .await?;
            committed
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .insert(out.last_position(), Instant::now());
            anyhow::Ok(out.last_position())
        });
        while let Some(Some(done)) = futures::FutureExt::now_or_never(inflight.next()) {
            last = last.max(done?);
        }
    }
    while let Some(done) = inflight.next().await {
        last = last.max(done?);
    }
    wait_for(
        &url.parse::<eventrail_store_postgres::PgConnectOptions>()?,
        "eventrail",
        &TableNames::default(),
        "lag-probe",
        last,
        Duration::from_secs(60),
    )
    .await?;
    stop.cancel();
    task.await??;
    let committed = committed.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let seen = probe.seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let mut lags: Vec<Duration> = committed
        .iter()
        .filter_map(|(p, at)| seen.get(p).map(|s| s.saturating_duration_since(*at)))
        .collect();
    lags.sort();
    Ok(lags)
}

/// Appends `events` events in 1000-event batches from 4 writers.
async fn load(store: &PgEventStore, events: usize) -> anyhow::Result<()> {
    let batch = 1000;
    let mut appends = futures::stream::iter((0..events.div_ceil(batch)).map(|i| {
        let store = store.clone();
        async move {
            let stream = StreamName::new("load", &i.to_string())?;
            let events = (0..batch as u64)
                .map(|n| NewEvent::json("Loaded", payload(i, n)))
                .collect();
            store
                .append(AppendRequest::new(
                    stream,
                    ExpectedVersion::NoStream,
                    events,
                ))
                .await?;
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(4);
    while let Some(r) = appends.next().await {
        r?;
    }
    Ok(())
}

/// The rate of `COPY (SELECT …) TO STDOUT` of every event on `client`, the physical limit of
/// reading the log.
async fn copy_rate(client: &tokio_postgres::Client, total: i64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let copy = client
        .copy_out("COPY (SELECT global_position, stream_name, stream_version, event_id, event_type, schema_version, data, metadata, recorded_at FROM eventrail.events ORDER BY global_position) TO STDOUT")
        .await?;
    futures::pin_mut!(copy);
    let mut bytes = 0usize;
    while let Some(chunk) = copy.next().await {
        bytes += chunk?.len();
    }
    anyhow::ensure!(bytes > 0, "COPY returned nothing");
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Runs one no-op consumer named `name` (decoding each payload when `decode`; with `options`,
/// reading on `standby` if given) from 0 until it has checkpointed `head`; its events/s over
/// `total` events.
async fn time_consumer(
    url: &str,
    store: &PgEventStore,
    name: &'static str,
    decode: bool,
    options: WorkerOptions,
    standby: Option<eventrail_store_postgres::Standby>,
    (head, total): (u64, i64),
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut builder = Worker::builder(
        store.clone(),
        url.parse::<eventrail_store_postgres::PgConnectOptions>()?,
    )
    .options(options);
    builder = if decode {
        builder.consumer(Decoding(name))
    } else {
        builder.consumer(Noop(name))
    };
    if let Some(standby) = standby {
        builder = builder.standby(standby);
    }
    let worker = builder.build()?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker.run(stop.clone()));
    wait_for(
        &url.parse::<eventrail_store_postgres::PgConnectOptions>()?,
        "eventrail",
        &TableNames::default(),
        name,
        head,
        Duration::from_secs(600),
    )
    .await?;
    let rate = total as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    task.await??;
    Ok(rate)
}

/// Head position and event count of the log behind `client`.
async fn head_and_total(client: &tokio_postgres::Client) -> anyhow::Result<(u64, i64)> {
    let row = client
        .query_one(
            "SELECT max(global_position), count(*) FROM eventrail.events",
            &[],
        )
        .await?;
    Ok((u64::try_from(row.get::<_, i64>(0))?, row.get(1)))
}

/// On a throwaway primary with a hot standby: appends `events` events, then times a COPY TO on
/// the standby and one consumer reading its events there (frontier from the primary), three
/// times alternately: their mean rates.
pub(crate) async fn catch_up_on_standby(events: usize) -> anyhow::Result<(f64, f64)> {
    let cluster = integration_tests::servers::Cluster::start(None).await?;
    let (url, store) = fresh(&cluster.admin_url, "eventrail_bench_standby").await?;
    let standby = cluster.start_standby().await?;
    load(&store, events).await?;
    let primary = connect(&url).await?;
    primary
        .batch_execute("VACUUM ANALYZE eventrail.events")
        .await?;
    let lsn: String = primary
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await?
        .get(0);
    let replica = connect(&standby.url("eventrail_bench_standby")).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !replica
        .query_one(
            "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
            &[&lsn],
        )
        .await?
        .get::<_, bool>(0)
    {
        anyhow::ensure!(Instant::now() < deadline, "the standby did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (head, total) = head_and_total(&primary).await?;
    // Alternated, a consumer of its own each round: one-shot rates drifted with the machine.
    let names = [
        "standby-catch-up-0",
        "standby-catch-up-1",
        "standby-catch-up-2",
    ];
    let (mut raw, mut rate) = (0.0, 0.0);
    for name in names {
        raw += copy_rate(&replica, total).await?;
        let on_standby = eventrail_store_postgres::Standby::new(eventrail_devdb::pool(
            &standby.url("eventrail_bench_standby"),
            8,
        )?);
        let options = WorkerOptions::new();
        rate += time_consumer(
            &url,
            &store,
            name,
            false,
            options,
            Some(on_standby),
            (head, total),
        )
        .await?;
    }
    let rounds = names.len() as f64;
    Ok((raw / rounds, rate / rounds))
}

/// Appends `events` events, then times one no-op consumer from 0 to the head per batch size
/// (`None`: the default options), each right after a raw COPY TO of the same rows; with
/// `decoding`, last, one more consumer with the default options that decodes every payload into
/// a struct. Returns the mean of the COPY TOs (one per consumer: the server's speed drifts
/// between runs on a shared machine, so each consumer has its raw twin beside it) and each
/// consumer's rate.
pub(crate) async fn catch_up(
    admin_url: &str,
    events: usize,
    batch_sizes: &[Option<usize>],
    decoding: bool,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let (url, store) = fresh(admin_url, "eventrail_bench_catchup").await?;
    load(&store, events).await?;
    let client = connect(&url).await?;
    client
        .batch_execute("VACUUM ANALYZE eventrail.events")
        .await?;
    let (head, total) = head_and_total(&client).await?;

    // The read path alone (no worker, no transaction): where the consumer's time goes.
    let started = Instant::now();
    let (mut watch, mut position, mut read) =
        (eventrail_store_postgres::GapWatch::new(), 0u64, 0usize);
    while position < head {
        let batch = store
            .read_safe(&mut watch, position, 2000, None, None)
            .await?;
        read += batch.events.len();
        position = batch.frontier.safe;
    }
    anyhow::ensure!(read as i64 == total, "read {read} of {total}");
    println!(
        "(read_safe alone, 2000 positions a read: {:.0} events/s)",
        total as f64 / started.elapsed().as_secs_f64()
    );

    const NAMES: [&str; 4] = ["catch-up-0", "catch-up-1", "catch-up-2", "catch-up-3"];
    anyhow::ensure!(batch_sizes.len() <= NAMES.len(), "at most four consumers");
    let (mut raw, mut rates) = (0.0, Vec::new());
    for (name, batch_size) in NAMES.into_iter().zip(batch_sizes) {
        // A given size is fixed: batches of exactly that many positions, never grown.
        let options = batch_size.map_or_else(WorkerOptions::new, |n| {
            WorkerOptions::new().batch_size(n).catch_up_batch_size(n)
        });
        raw += copy_rate(&client, total).await?;
        rates.push(time_consumer(&url, &store, name, false, options, None, (head, total)).await?);
    }
    if decoding {
        let options = WorkerOptions::new();
        let name = "catch-up-decoding";
        raw += copy_rate(&client, total).await?;
        rates.push(time_consumer(&url, &store, name, true, options, None, (head, total)).await?);
    }
    Ok((raw / rates.len().max(1) as f64, rates))
}

/// A worker of the failover measurement: id, stop token, task.
type BenchWorker = (
    uuid::Uuid,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), eventrail_worker::WorkerError>>,
);

/// Two workers with default options; the leader's connections are cut (as when its process
/// dies) and its task dropped; time until the survivor leads and runs every consumer.
async fn failover(admin_url: &str) -> anyhow::Result<Duration> {
    let (url, store) = fresh(admin_url, "eventrail_bench_failover").await?;
    let admin = WorkerAdmin::new(store.pool().clone(), "eventrail", &TableNames::default())?;
    let start = |name: &'static str| -> anyhow::Result<BenchWorker> {
        let mut config: tokio_postgres::Config = url.parse()?;
        config.application_name(name);
        let pool = eventrail_devdb::pool(&url, 8)?;
        let worker = Worker::builder(PgEventStore::new(pool), config)
            .options(WorkerOptions::new().name(name))
            .consumer(Noop("a"))
            .consumer(Noop("b"))
            .consumer(Noop("c"))
            .consumer(Noop("d"))
            .build()?;
        let id = worker.id();
        let stop = CancellationToken::new();
        Ok((id, stop.clone(), tokio::spawn(worker.run(stop))))
    };
    let first = start("bench-first")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !admin
        .status()
        .await?
        .workers
        .iter()
        .any(|w| w.id == first.0 && w.leader)
    {
        anyhow::ensure!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = start("bench-second")?;
    while admin
        .status()
        .await?
        .consumers
        .iter()
        .filter(|c| c.worker_id == Some(second.0))
        .count()
        != 2
    {
        anyhow::ensure!(Instant::now() < deadline, "no spread");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Crash the leader: drop its task and terminate every connection it had.
    first.2.abort();
    let client = connect(&url).await?;
    let killed = Instant::now();
    client
        .execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'bench-first'", &[])
        .await?;
    // Its pooled connections carry no application name: find the sessions by its locks instead.
    client
        .execute(
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l WHERE l.locktype = 'advisory' AND l.classid = 1701147140::oid AND l.objid = hashtext($1)::oid",
            &[&first.0.to_string()],
        )
        .await?;
    loop {
        let status = admin.status().await?;
        let leads = status.workers.iter().any(|w| w.id == second.0 && w.leader);
        if leads
            && status
                .consumers
                .iter()
                .all(|c| c.worker_id == Some(second.0))
        {
            break;
        }
        anyhow::ensure!(
            killed.elapsed() < Duration::from_secs(60),
            "no failover within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = killed.elapsed();
    second.1.cancel();
    second.2.await??;
    Ok(took)
}

pub(crate) async fn run(
    events: usize,
    seconds: u64,
    batch_size: Option<usize>,
) -> anyhow::Result<()> {
    let admin_url = eventrail_devdb::database_url().await?;
    println!(
        "worker benchmark: lag at 1,000 events/s for {seconds} s per dispatcher, catch-up over {events} events\n"
    );
    let notify = lag(&admin_url, DispatcherStrategy::Notify, seconds)
        .await
        .context("notify lag")?;
    let poll = lag(&admin_url, DispatcherStrategy::Poll, seconds)
        .await
        .context("poll lag")?;
    println!("| lag, append commit → handler | events | p50 | p99 | max | target |");
    println!("|------------------------------|-------:|----:|----:|----:|-------:|");
    for (name, lags, target) in [
        ("notify dispatcher", &notify, "p99 ≤ 10 ms"),
        ("poll dispatcher", &poll, "-"),
    ] {
        println!(
            "| {name:<28} | {:>6} | {:.1} ms | {:.1} ms | {:.1} ms | {target} |",
            lags.len(),
            percentile(lags, 0.5).as_secs_f64() * 1e3,
            percentile(lags, 0.99).as_secs_f64() * 1e3,
            lags.last().copied().unwrap_or_default().as_secs_f64() * 1e3
        );
    }
    let mut sizes = vec![None];
    if batch_size.is_some() {
        sizes.push(batch_size);
    }
    let (raw, rates) = catch_up(&admin_url, events, &sizes, true)
        .await
        .context("catch-up")?;
    println!("\n| catch-up of one consumer (no-op handler) | events/s | ratio | target |");
    println!("|------------------------------------------|---------:|------:|-------:|");
    println!("| raw COPY (SELECT …) TO                   | {raw:>8.0} |       |        |");
    let labels = sizes.iter().map(|size| {
        size.map_or_else(
            || "eventrail consumer, default options".to_owned(),
            |n| format!("eventrail consumer, fixed batches of {n}"),
        )
    });
    let labels = labels.chain(["the same, decoding each payload (struct)".to_owned()]);
    for (label, rate) in labels.zip(&rates) {
        println!(
            "| {label:<40} | {rate:>8.0} | {:>5.2} | ≥ 0.5 |",
            rate / raw
        );
    }
    let took = failover(&admin_url).await.context("failover")?;
    println!(
        "\n| failover after the leader is killed (default options) | {:.2} s | target ≤ 2 s |",
        took.as_secs_f64()
    );
    Ok(())
}
