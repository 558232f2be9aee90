//! Benchmarks of eventrail against raw tokio-postgres on the same database.
//!
//! `cargo run --release -p eventrail-bench -- append` measures, in one run:
//! - single-event appends with 1, 4 and 16 clients against a raw `INSERT` of the same row shape;
//! - 100-event batches with 1 and 4 clients against a raw binary `COPY` of the same rows;
//!
//! and prints events/s and the ratio eventrail / raw.
//!
//! `cargo run --release -p eventrail-bench -- table` prints all of those rows, the relay's and
//! the peers' in one table (issue 13's benchmark).
//!
//! `cargo run --release -p eventrail-bench -- outbox` measures the outbox relay (see the
//! `outbox_bench` module).
//!
//! `cargo run --release -p eventrail-bench -- faults` measures consumer lag under churn and the
//! recovery after each fault of the torture run (see the `faults_bench` module).
//!
//! `cargo run --release -p eventrail-bench -- message-db` measures the Message DB client (see
//! the `message_db` module). It works in a database of its own,
//! `eventrail_bench`, created afresh.

mod message_db;

use std::sync::Arc;
use std::time::{Duration, Instant};

mod cpu;
mod faults_bench;
mod outbox_bench;
mod peers_bench;
mod saga_bench;
mod scale_bench;
mod table_bench;
mod worker_bench;

use anyhow::Context;
use clap::{Parser, Subcommand};
use eventrail_core::{AppendRequest, EventStore, ExpectedVersion, NewEvent, StreamName};
use eventrail_store_postgres::{PgEventStore, PgStoreOptions};
use futures::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls};

#[derive(Debug, Parser)]
#[command(about = "eventrail benchmarks")]
struct Args {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Append throughput against raw INSERT and COPY.
    Append {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Configure the store without the pg_notify hint.
        #[arg(long)]
        without_notify: bool,
    },
    /// Worker lag, catch-up throughput against raw COPY TO, and failover time.
    Worker {
        /// Events for the catch-up measurement.
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Seconds of the lag measurement, per dispatcher.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Also measure catch-up with fixed batches of this size (never grown), besides the
        /// default options.
        #[arg(long)]
        batch_size: Option<usize>,
    },
    /// The Message DB client against the same SQL issued directly with tokio-postgres.
    MessageDb {
        /// Seconds per write measurement (taken in alternating 1 s slices).
        #[arg(long, default_value_t = 6)]
        seconds: u64,
        /// Run with `synchronous_commit = off`, so commit latency does not hide the client's cost.
        #[arg(long)]
        async_commit: bool,
    },
    /// Outbox relay throughput to NATS JetStream, RabbitMQ, Kafka and memory against bare publish
    /// loops.
    Outbox {
        /// Messages per measurement.
        #[arg(long, default_value_t = 50_000)]
        messages: usize,
        /// Partition keys they are spread over.
        #[arg(long, default_value_t = 2_000)]
        keys: usize,
        /// Relays running at once.
        #[arg(long, default_value_t = 2)]
        relays: usize,
        /// Most messages one claim takes.
        #[arg(long, default_value_t = 10_000)]
        batch: usize,
        /// Keys parked by a dead message beside them (a walk that meets them looks up their heads).
        #[arg(long, default_value_t = 0)]
        parked_keys: usize,
    },
    /// Consumer lag under churn (with and without a long transaction in another database) and
    /// recovery time after each fault of the torture run, with the default worker options.
    Faults {
        /// Seconds of each lag measurement.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Rounds of the six faults.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Three-step sagas started and completed per second with 1 and 4 runners, and p50/p99
    /// from start to completion, beside DBOS Transact running the same workflow.
    Saga {
        /// Sagas per run.
        #[arg(long, default_value_t = 2000)]
        sagas: u64,
        /// Runner counts to measure.
        #[arg(long, value_delimiter = ',', default_values_t = [1, 4])]
        workers: Vec<usize>,
        /// Skip DBOS (which needs python3 and the `dbos` package, installed when missing).
        #[arg(long)]
        no_peer: bool,
    },
    /// Message DB's `write_message`, Emmett and Python `eventsourcing` appending the append
    /// benchmark's payload with 1, 4 and 16 writers (installed from PyPI and npm when missing).
    Peers {
        /// Seconds per row.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Writer counts.
        #[arg(long, value_delimiter = ',', default_values_t = [1, 4, 16])]
        writers: Vec<usize>,
    },
    /// Every row of issue 13's table in one run on the same server: appends against INSERT and
    /// COPY, catch-up against COPY TO (on the server and on a hot standby), the relay against
    /// bare NATS and RabbitMQ loops, append/read latency as the log grows (see `scale`), and
    /// the peers (Message DB, Emmett, Python eventsourcing) with 1, 4 and 16 writers.
    Table {
        /// Seconds per append and peer measurement.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Events for the catch-up measurement.
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Messages per relay measurement.
        #[arg(long, default_value_t = 50_000)]
        messages: usize,
        /// Skip the peers (which need python3 and node).
        #[arg(long)]
        no_peers: bool,
        /// Log sizes of the latency rows, in events (`0` skips them).
        #[arg(long, value_delimiter = ',', default_values_t = [1_000_000, 10_000_000, 50_000_000])]
        scale_sizes: Vec<u64>,
    },
    /// Append and read latency (p50/p99) as the log grows, beside raw INSERT and SELECT, on a
    /// throwaway cluster.
    Scale {
        /// Log sizes to measure at, in events.
        #[arg(long, value_delimiter = ',', default_values_t = [1_000_000, 10_000_000, 50_000_000])]
        sizes: Vec<u64>,
        /// Samples of each operation at each size.
        #[arg(long, default_value_t = 2000)]
        samples: usize,
        /// Partition the log by position range first, N positions per partition.
        #[arg(long, value_name = "N")]
        partition_size: Option<u64>,
    },
    /// A worker process of the `faults` benchmark (started by it).
    #[command(hide = true)]
    WorkerProcess {
        /// `<database-url> <name> <consumers>`.
        args: Vec<String>,
    },
}

const RAW_COLUMNS: &str =
    "stream_name, stream_version, event_id, event_type, schema_version, data, metadata";

pub(crate) fn payload(client: usize, n: u64) -> serde_json::Value {
    serde_json::json!({ "client": client, "n": n, "sku": "tea-earl-grey", "qty": 2, "note": "a small event of typical size" })
}

pub(crate) async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Runs `clients` loops (each returns the events it wrote) and gives events per second.
async fn measure<F, Fut>(clients: usize, work: F) -> anyhow::Result<f64>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<u64>> + Send + 'static,
{
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        tasks.push(tokio::spawn(work(c)));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// What one client's loop wrote, in how long (its connection's set-up not counted).
struct Loop {
    events: u64,
    elapsed: Duration,
}

/// Runs `clients` loops and gives the sum of their rates (events per second).
async fn measure_loops<F, Fut>(clients: usize, work: F) -> anyhow::Result<f64>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<Loop>> + Send + 'static,
{
    let tasks: Vec<_> = (0..clients).map(|c| tokio::spawn(work(c))).collect();
    let mut rate = 0.0;
    for t in tasks {
        let done = t.await??;
        rate += done.events as f64 / done.elapsed.as_secs_f64();
    }
    Ok(rate)
}

/// How many times each append row alternates between its raw twin and eventrail: the server's
/// commit latency drifts (a virtual machine's disk), and alternating spreads the drift over both.
const ROUNDS: u64 = 3;

/// `raw` and `eventrail` measured alternately, `ROUNDS` times `seconds / ROUNDS` (at least one
/// second) each: their mean rates.
async fn alternately<R, RF, E, EF>(seconds: u64, raw: R, eventrail: E) -> anyhow::Result<(f64, f64)>
where
    R: Fn(u64) -> RF,
    RF: Future<Output = anyhow::Result<f64>>,
    E: Fn(u64) -> EF,
    EF: Future<Output = anyhow::Result<f64>>,
{
    let slice = seconds.div_ceil(ROUNDS).max(1);
    let (mut raw_rate, mut eventrail_rate) = (0.0, 0.0);
    for _ in 0..ROUNDS {
        raw_rate += raw(slice).await?;
        eventrail_rate += eventrail(slice).await?;
    }
    Ok((raw_rate / ROUNDS as f64, eventrail_rate / ROUNDS as f64))
}

async fn raw_inserts(url: Arc<String>, client_no: usize, seconds: u64) -> anyhow::Result<Loop> {
    let client = connect(&url).await?;
    let insert = client
        .prepare(&format!(
            "INSERT INTO raw_events ({RAW_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .await?;
    let stream = format!("raw{client_no}-{}", uuid::Uuid::now_v7().simple());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut n = 0u64;
    while Instant::now() < deadline {
        let version = i64::try_from(n)?;
        client
            .execute(
                &insert,
                &[
                    &stream,
                    &version,
                    &uuid::Uuid::now_v7(),
                    &"BenchEvent",
                    &1i32,
                    &payload(client_no, n),
                    &serde_json::json!({}),
                ],
            )
            .await?;
        n += 1;
    }
    Ok(Loop {
        events: n,
        elapsed: started.elapsed(),
    })
}

async fn eventrail_appends(
    store: PgEventStore,
    client_no: usize,
    seconds: u64,
    batch: usize,
) -> anyhow::Result<Loop> {
    let stream: StreamName = StreamName::new(
        &format!("er{client_no}"),
        &uuid::Uuid::now_v7().simple().to_string(),
    )?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let (mut n, mut expected) = (0u64, ExpectedVersion::NoStream);
    while Instant::now() < deadline {
        let events = (0..batch as u64)
            .map(|i| NewEvent::json("BenchEvent", payload(client_no, n + i)))
            .collect();
        let out = store
            .append(AppendRequest::new(stream.clone(), expected, events))
            .await?;
        expected = ExpectedVersion::Exact(out.stream_version);
        n += batch as u64;
    }
    Ok(Loop {
        events: n,
        elapsed: started.elapsed(),
    })
}

async fn raw_copies(
    url: Arc<String>,
    client_no: usize,
    seconds: u64,
    batch: usize,
) -> anyhow::Result<Loop> {
    let client = connect(&url).await?;
    let stream = format!("copy{client_no}-{}", uuid::Uuid::now_v7().simple());
    let types = [
        Type::TEXT,
        Type::INT8,
        Type::UUID,
        Type::TEXT,
        Type::INT4,
        Type::JSONB,
        Type::JSONB,
    ];
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut n = 0u64;
    let empty = serde_json::json!({});
    while Instant::now() < deadline {
        let sink = client
            .copy_in(&format!(
                "COPY raw_events ({RAW_COLUMNS}) FROM STDIN (FORMAT binary)"
            ))
            .await?;
        let writer = BinaryCopyInWriter::new(sink, &types);
        pin_mut!(writer);
        for _ in 0..batch {
            let version = i64::try_from(n)?;
            writer
                .as_mut()
                .write(&[
                    &stream,
                    &version,
                    &uuid::Uuid::now_v7(),
                    &"BenchEvent",
                    &1i32,
                    &payload(client_no, n),
                    &empty,
                ])
                .await?;
            n += 1;
        }
        writer.finish().await?;
    }
    Ok(Loop {
        events: n,
        elapsed: started.elapsed(),
    })
}

/// One row of a table: eventrail beside its raw twin, and the target ratio.
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) raw: f64,
    pub(crate) eventrail: f64,
    pub(crate) target: f64,
}

/// Prints `rows` as a markdown table; `unit` names the rates.
pub(crate) fn print_rows(unit: &str, rows: &[Row]) {
    println!(
        "| {:<44} | {:>12} | {:>12} | {:>5} | {:>9} |",
        "workload", "raw", "eventrail", "ratio", "target"
    );
    println!(
        "|{:-<46}|{:->14}|{:->14}|{:->7}|{:->11}|",
        "", ":", ":", ":", ":"
    );
    for r in rows {
        let ratio = r.eventrail / r.raw;
        println!(
            "| {:<44} | {:>12.0} | {:>12.0} | {:>5.2} | ≥ {:.1} {:<4} |",
            r.scenario,
            r.raw,
            r.eventrail,
            ratio,
            r.target,
            if ratio >= r.target { "ok" } else { "MISS" }
        );
    }
    println!("(rates in {unit})");
}

/// The server settings that decide commit cost, for the table's heading: `name=value, …`.
pub(crate) async fn server_settings(client: &tokio_postgres::Client) -> anyhow::Result<String> {
    let settings: Vec<String> = client
        .query("SELECT name || '=' || setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'server_version') ORDER BY name", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(settings.join(", "))
}

/// The append rows (single events with 1, 4 and 16 clients against INSERT, 100-event batches with
/// 1 and 4 clients against COPY), measured in one run on a fresh database.
async fn append_rows(seconds: u64, without_notify: bool) -> anyhow::Result<Vec<Row>> {
    let admin_url = eventrail_devdb::database_url().await?;
    let url = Arc::new(eventrail_devdb::recreate_database(&admin_url, "eventrail_bench").await?);
    let pool = eventrail_devdb::pool(&url, 32)?;
    let options = if without_notify {
        PgStoreOptions::new().without_notify()
    } else {
        PgStoreOptions::new()
    };
    let store = PgEventStore::with_options(pool, options)?;
    store
        .migrate()
        .await
        .context("migrating the bench database")?;
    let setup = connect(&url).await?;
    // Same row shape, same defaults, constraints and indexes; no eventrail function or trigger.
    setup
        .batch_execute("CREATE TABLE raw_events (LIKE eventrail.events INCLUDING ALL)")
        .await?;
    let settings = server_settings(&setup).await?;
    println!(
        "PostgreSQL: {settings}; {seconds} s per measurement, in {ROUNDS} rounds alternating with its raw twin\n"
    );

    let mut rows = Vec::new();
    for (clients, target) in [(1, 0.9), (4, 0.8), (16, 0.8)] {
        let (raw, er) = alternately(
            seconds,
            |s| {
                let url = url.clone();
                measure_loops(clients, move |c| raw_inserts(url.clone(), c, s))
            },
            |s| {
                let store = store.clone();
                measure_loops(clients, move |c| eventrail_appends(store.clone(), c, s, 1))
            },
        )
        .await?;
        rows.push(Row {
            scenario: format!("1 event / tx, {clients} client(s) vs INSERT"),
            raw,
            eventrail: er,
            target,
        });
    }
    for clients in [1, 4] {
        let (raw, er) = alternately(
            seconds,
            |s| {
                let url = url.clone();
                measure_loops(clients, move |c| raw_copies(url.clone(), c, s, 100))
            },
            |s| {
                let store = store.clone();
                measure_loops(clients, move |c| {
                    eventrail_appends(store.clone(), c, s, 100)
                })
            },
        )
        .await?;
        rows.push(Row {
            scenario: format!("100 events / tx, {clients} client(s) vs COPY"),
            raw,
            eventrail: er,
            target: 0.8,
        });
    }
    Ok(rows)
}

async fn append_bench(seconds: u64, without_notify: bool) -> anyhow::Result<()> {
    print_rows("events/s", &append_rows(seconds, without_notify).await?);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().bench {
        Bench::Append {
            seconds,
            without_notify,
        } => append_bench(seconds, without_notify).await,
        Bench::Worker {
            events,
            seconds,
            batch_size,
        } => worker_bench::run(events, seconds, batch_size).await,
        Bench::MessageDb {
            seconds,
            async_commit,
        } => message_db::message_db_bench(seconds, async_commit).await,
        Bench::Outbox {
            messages,
            keys,
            relays,
            batch,
            parked_keys,
        } => {
            outbox_bench::run(outbox_bench::Load {
                messages,
                keys,
                relays,
                batch,
                parked_keys,
            })
            .await
        }
        Bench::Faults { seconds, rounds } => faults_bench::run(seconds, rounds).await,
        Bench::Peers { seconds, writers } => peers_bench::run(seconds, &writers).await,
        Bench::Saga {
            sagas,
            workers,
            no_peer,
        } => saga_bench::run(sagas, &workers, !no_peer).await,
        Bench::Table {
            seconds,
            events,
            messages,
            no_peers,
            scale_sizes,
        } => table_bench::run(seconds, events, messages, !no_peers, &scale_sizes).await,
        Bench::Scale {
            sizes,
            samples,
            partition_size,
        } => scale_bench::run(&sizes, samples, partition_size).await,
        Bench::WorkerProcess { args } => {
            integration_tests::worker_process::run(args.into_iter()).await
        }
    }
}
