//! `eventrail-bench scale`: append and read latency as the log grows (by default 1M, 10M and
//! 50M events), each operation beside its raw twin at the same size.
//!
//! It runs on a throwaway cluster (the bench's own, fsync off, default settings otherwise), so
//! its figures compare sizes with each other, not with the shared server's. The log is grown by
//! a server-side `INSERT … SELECT` of 10-event streams (the store's indexes all in place, as if
//! appended), then vacuumed as autovacuum would; each size is measured with one client. With
//! `--partition-size` the log is partitioned by position range (raw twins write to the same
//! partitioned table, so its trigger runs for them too).

use std::time::{Duration, Instant};

use anyhow::Context;
use eventrail_core::{
    AppendRequest, EventStore, ExpectedVersion, NewEvent, ReadAllOptions, ReadStreamOptions,
    StreamName,
};
use eventrail_store_postgres::PgEventStore;
use tokio_postgres::types::ToSql;

use crate::{connect, payload, worker_bench};

/// Events of each bulk stream.
const STREAM_LENGTH: u64 = 10;
/// Events a range read asks for.
const RANGE: usize = 1000;
/// Rows written by one growth statement.
const GROWTH_CHUNK: u64 = 1_000_000;

/// The p50 and p99 of one operation at one size.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Latency {
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
}

impl Latency {
    fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        Self {
            p50: worker_bench::percentile(&samples, 0.50),
            p99: worker_bench::percentile(&samples, 0.99),
        }
    }
}

/// The operations measured, in the order of the table. Each raw twin works on a stream or
/// position of its own, picked at random like eventrail's, so that both meet a cold cache as
/// often (a twin reading what eventrail just read would always find it cached).
pub(crate) const OPERATIONS: [&str; 8] = [
    "append 1 event to a new stream",
    "  raw INSERT of 1 row",
    "append 1 event to an old stream",
    "  raw INSERT after its stream's max version",
    "read a 10-event stream",
    "  raw SELECT of a stream",
    "read 1000 events from a random position",
    "  raw SELECT of 1000 rows from a position",
];

/// Small, fast and good enough to pick streams and positions (xorshift64).
struct Pick(u64);

impl Pick {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Grows the log to each of `sizes` in turn and measures every operation `samples` times
/// there; returns, per size, the latencies in the order of [`OPERATIONS`].
/// With `partition_size`, the log is partitioned by position range first (migration 10), and
/// partitions are attached ahead of each growth step.
pub(crate) async fn measure(
    sizes: &[u64],
    samples: usize,
    partition_size: Option<u64>,
) -> anyhow::Result<Vec<(u64, Vec<Latency>)>> {
    let cluster = integration_tests::servers::Cluster::start(None).await?;
    let (url, store) = worker_bench::fresh(&cluster.admin_url, "eventrail_bench_scale").await?;
    let mut client = connect(&url).await?;
    if let Some(size) = partition_size {
        eventrail_store_postgres::Migrator::new("eventrail")?
            .partition_by_position(&mut client, size)
            .await?;
    }
    // Fewer checkpoints (and full-page writes) while growing; this cluster is the bench's own.
    for setting in [
        "ALTER SYSTEM SET max_wal_size = '16GB'",
        "ALTER SYSTEM SET checkpoint_timeout = '30min'",
        "SELECT pg_reload_conf()",
    ] {
        client.batch_execute(setting).await?;
    }
    let second = connect(&url).await?;
    let mut sorted = sizes.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut grown = 0;
    let mut results = Vec::new();
    for size in sorted {
        let started = Instant::now();
        store.add_partitions(size - grown).await?;
        grow([&client, &second], grown, size)
            .await
            .context("growing the log")?;
        grown = size;
        eprintln!(
            "scale: {size} events ({:.0} s to grow); measuring",
            started.elapsed().as_secs_f64()
        );
        results.push((size, at_size(&store, &client, size, samples).await?));
    }
    Ok(results)
}

/// Writes bulk events `from..to` (streams `bulk-<n>` of [`STREAM_LENGTH`] events, time-ordered
/// ids like the store's v7 ids) on two connections at once (the two halves of each chunk), then
/// vacuums.
async fn grow(clients: [&tokio_postgres::Client; 2], from: u64, to: u64) -> anyhow::Result<()> {
    let sql =
        "INSERT INTO eventrail.events (stream_name, stream_version, event_id, event_type, data)
               SELECT 'bulk-' || (i / $3), i % $3,
                      encode(int8send(i) || substr(uuid_send(gen_random_uuid()), 9), 'hex')::uuid,
                      'Loaded',
                      jsonb_build_object('client', 0, 'n', i, 'sku', 'tea-earl-grey', 'qty', 2,
                                         'note', 'a small event of typical size')
               FROM generate_series($1::int8, $2::int8 - 1) AS i";
    let length = as_i64(STREAM_LENGTH)?;
    let mut at = from;
    while at < to {
        let end = (at + GROWTH_CHUNK).min(to);
        let middle = at + (end - at) / 2;
        let (a, m, e) = (as_i64(at)?, as_i64(middle)?, as_i64(end)?);
        let (low, high): (&[&(dyn ToSql + Sync)], &[&(dyn ToSql + Sync)]) =
            (&[&a, &m, &length], &[&m, &e, &length]);
        futures::try_join!(clients[0].execute(sql, low), clients[1].execute(sql, high))?;
        at = end;
    }
    // VACUUM cannot run in the implicit transaction of a multi-statement string.
    clients[0]
        .batch_execute("VACUUM ANALYZE eventrail.events")
        .await?;
    clients[0].batch_execute("CHECKPOINT").await?;
    Ok(())
}

fn as_i64(n: u64) -> anyhow::Result<i64> {
    Ok(i64::try_from(n)?)
}

/// Times each operation `samples` times with the log at `size` events.
async fn at_size(
    store: &PgEventStore,
    client: &tokio_postgres::Client,
    size: u64,
    samples: usize,
) -> anyhow::Result<Vec<Latency>> {
    let streams = size / STREAM_LENGTH;
    let mut pick = Pick(0x9E37_79B9_7F4A_7C15 ^ size);
    let raw_insert = client
        .prepare(
            "INSERT INTO eventrail.events (stream_name, stream_version, event_id, event_type, data)
             VALUES ($1, 0, $2, 'Appended', $3)",
        )
        .await?;
    let raw_read = client
        .prepare(
            "SELECT global_position, stream_name, stream_version, event_id, event_type, data, metadata, recorded_at
             FROM eventrail.events WHERE stream_name = $1 ORDER BY stream_version",
        )
        .await?;
    let raw_old = client
        .prepare(
            "INSERT INTO eventrail.events (stream_name, stream_version, event_id, event_type, data)
             SELECT $1, coalesce(max(stream_version) + 1, 0), $2, 'Appended', $3
             FROM eventrail.events WHERE stream_name = $1",
        )
        .await?;
    let raw_range = client
        .prepare(
            "SELECT global_position, stream_name, stream_version, event_id, event_type, data, metadata, recorded_at
             FROM eventrail.events WHERE global_position >= $1 ORDER BY global_position LIMIT $2",
        )
        .await?;
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(samples); OPERATIONS.len()];
    for k in 0..samples {
        let n = k as u64;
        // New streams: eventrail's and the raw twin's.
        let stream = StreamName::new("new", &format!("{size}x{k}"))?;
        let event = NewEvent::json("Appended", payload(0, n));
        let t = Instant::now();
        store
            .append(AppendRequest::new(
                stream,
                ExpectedVersion::NoStream,
                vec![event],
            ))
            .await?;
        times[0].push(t.elapsed());
        let t = Instant::now();
        client
            .execute(
                &raw_insert,
                &[
                    &format!("raw-{size}x{k}"),
                    &uuid::Uuid::now_v7(),
                    &payload(0, n),
                ],
            )
            .await?;
        times[1].push(t.elapsed());
        // An old stream anywhere in the log: its version is looked up in the big index.
        let old = StreamName::new("bulk", &pick.below(streams).to_string())?;
        let t = Instant::now();
        store
            .append(AppendRequest::new(
                old,
                ExpectedVersion::Any,
                vec![NewEvent::json("Appended", payload(0, n))],
            ))
            .await?;
        times[2].push(t.elapsed());
        let t = Instant::now();
        client
            .execute(
                &raw_old,
                &[
                    &format!("bulk-{}", pick.below(streams)),
                    &uuid::Uuid::now_v7(),
                    &payload(0, n),
                ],
            )
            .await?;
        times[3].push(t.elapsed());
        let bulk = StreamName::new("bulk", &pick.below(streams).to_string())?;
        let t = Instant::now();
        let read = store
            .read_stream(&bulk, ReadStreamOptions::default())
            .await?;
        times[4].push(t.elapsed());
        anyhow::ensure!(!read.is_empty(), "{bulk} is empty");
        let name = format!("bulk-{}", pick.below(streams));
        let t = Instant::now();
        let rows = client.query(&raw_read, &[&name]).await?;
        times[5].push(t.elapsed());
        anyhow::ensure!(!rows.is_empty(), "{name} is empty");
        let from = pick.below(size.saturating_sub(RANGE as u64)) + 1;
        let t = Instant::now();
        let range = store
            .read_all(
                ReadAllOptions::default()
                    .from_position(from)
                    .max_count(RANGE),
            )
            .await?;
        times[6].push(t.elapsed());
        anyhow::ensure!(range.len() == RANGE, "a range read came back short");
        let from = as_i64(pick.below(size.saturating_sub(RANGE as u64)) + 1)?;
        let t = Instant::now();
        let rows = client
            .query(&raw_range, &[&from, &as_i64(RANGE as u64)?])
            .await?;
        times[7].push(t.elapsed());
        anyhow::ensure!(rows.len() == RANGE, "a raw range read came back short");
    }
    Ok(times.into_iter().map(Latency::of).collect())
}

fn micros(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

/// Prints p50 / p99 in µs per size, and the p50 and p99 of the largest size against the
/// smallest's.
pub(crate) fn print(results: &[(u64, Vec<Latency>)]) {
    let (Some(first), Some(last)) = (results.first(), results.last()) else {
        return;
    };
    let sizes: Vec<String> = results.iter().map(|(s, _)| millions(*s)).collect();
    println!(
        "| latency, p50 / p99 µs, 1 client | {} | {} vs {} |",
        sizes.join(" | "),
        millions(last.0),
        millions(first.0)
    );
    println!("|---|{}--:|", "--:|".repeat(sizes.len()));
    for (i, operation) in OPERATIONS.iter().enumerate() {
        let cells: Vec<String> = results
            .iter()
            .map(|(_, l)| format!("{} / {}", micros(l[i].p50), micros(l[i].p99)))
            .collect();
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
        println!(
            "| {operation} | {} | {:.2} / {:.2} |",
            cells.join(" | "),
            ratio(last.1[i].p50, first.1[i].p50),
            ratio(last.1[i].p99, first.1[i].p99)
        );
    }
}

fn millions(n: u64) -> String {
    if n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else {
        n.to_string()
    }
}

/// `eventrail-bench scale`.
pub(crate) async fn run(
    sizes: &[u64],
    samples: usize,
    partition_size: Option<u64>,
) -> anyhow::Result<()> {
    let layout = partition_size.map_or_else(
        || "one table".to_owned(),
        |n| format!("partitioned every {n} positions"),
    );
    println!("append and read latency as the log grows ({layout}, {samples} samples a cell)");
    let results = measure(sizes, samples, partition_size).await?;
    print(&results);
    Ok(())
}
