//! `eventrail-bench message-db`: the Message DB client against the same SQL issued directly with
//! tokio-postgres, on a database of its own (`eventrail_bench_message_db`, created afresh with
//! Message DB installed from its npm package).
//!
//! - `write_message` with an expected version, 1, 4 and 16 concurrent writers (each on a stream
//!   of its own): the client, on its own pool (`MessageDb::connect`) and on a shared pool,
//!   against one prepared `SELECT write_message(..)` per writer connection, search path set once
//!   at connect;
//! - reading a whole category: a subscription (`into_stream`) against a raw
//!   `get_category_messages` paging loop, both in batches of 1,000 and both decoding every column.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use eventrail_message_db::{
    CancellationToken, ConstantPolling, ExpectedVersion, MessageDb, NewMessage,
};
use futures::StreamExt;

use super::{connect, measure, payload};

const READ_MESSAGES: i64 = 100_000;
const BATCH: i64 = 1000;
/// Alternating rounds of the category read, averaged.
const READ_ROUNDS: u32 = 3;

/// One raw writer: its own connection, search path set once, the call prepared once.
struct RawWriter {
    client: tokio_postgres::Client,
    write: tokio_postgres::Statement,
}

async fn raw_writer(url: &str) -> anyhow::Result<Arc<RawWriter>> {
    let client = connect(url).await?;
    client
        .batch_execute("SET search_path = message_store, public")
        .await?;
    let write = client
        .prepare("SELECT write_message($1::varchar, $2::varchar, $3::varchar, $4::jsonb, $5::jsonb, $6::bigint)")
        .await?;
    Ok(Arc::new(RawWriter { client, write }))
}

async fn raw_writes(raw: Arc<RawWriter>, writer: usize, seconds: u64) -> anyhow::Result<u64> {
    let stream = format!("raw-{writer}x{}", uuid::Uuid::now_v7().simple());
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut n = 0u64;
    let no_metadata: Option<serde_json::Value> = None;
    while Instant::now() < deadline {
        let expected = i64::try_from(n)? - 1;
        raw.client
            .query_one(
                &raw.write,
                &[
                    &uuid::Uuid::new_v4().to_string(),
                    &stream,
                    &"BenchEvent",
                    &payload(writer, n),
                    &no_metadata,
                    &expected,
                ],
            )
            .await?;
        n += 1;
    }
    Ok(n)
}

async fn client_writes(db: MessageDb, writer: usize, seconds: u64) -> anyhow::Result<u64> {
    let stream = format!("client-{writer}x{}", uuid::Uuid::now_v7().simple());
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut n = 0u64;
    while Instant::now() < deadline {
        let expected = n
            .checked_sub(1)
            .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
        db.write_message(
            &stream,
            &NewMessage::new("BenchEvent", payload(writer, n)).expected_version(expected),
        )
        .await?;
        n += 1;
    }
    Ok(n)
}

/// Reads the whole category with a raw paging loop; returns messages per second.
#[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
async fn raw_category_read(url: &str) -> anyhow::Result<f64> {
    let client = connect(url).await?;
    client
        .batch_execute("SET search_path = message_store, public")
        .await?;
    let read = client
        .prepare("SELECT id, stream_name, type, position, global_position, data, metadata, time FROM get_category_messages($1::varchar, $2::bigint, $3::bigint)")
        .await?;
    let started = Instant::now();
    let (mut position, mut total) = (1i64, 0i64);
    loop {
        let rows = client
            .query(&read, &[&"readbench", &position, &BATCH])
            .await?;
        let Some(last) = rows.last() else { break };
        position = last.get::<_, i64>(4) + 1;
        for row in &rows {
            // Decode every column, as the client does.
            let id: String = row.get(0);
            std::hint::black_box((
                uuid::Uuid::parse_str(&id)?,
                row.get::<_, String>(1),
                row.get::<_, String>(2),
                row.get::<_, i64>(3),
                row.get::<_, Option<String>>(5),
                row.get::<_, Option<String>>(6),
                row.get::<_, SystemTime>(7),
            ));
        }
        total += i64::try_from(rows.len())?;
    }
    anyhow::ensure!(total == READ_MESSAGES, "raw loop read {total}");
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Reads the whole category through a subscription; returns messages per second.
#[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
async fn subscription_read(db: &MessageDb) -> anyhow::Result<f64> {
    let cancel = CancellationToken::new();
    let mut stream = Box::pin(
        db.subscribe_category("readbench")
            .batch_size(BATCH.unsigned_abs())
            .polling(ConstantPolling::new(Duration::from_millis(1)))
            .cancellation(cancel.clone())
            .into_stream(),
    );
    let started = Instant::now();
    let mut total = 0i64;
    while total < READ_MESSAGES {
        stream.next().await.context("subscription ended")??;
        total += 1;
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    cancel.cancel();
    Ok(rate)
}

pub(crate) async fn message_db_bench(seconds: u64, async_commit: bool) -> anyhow::Result<()> {
    let admin_url = eventrail_devdb::database_url().await?;
    let url = Arc::new(
        eventrail_devdb::recreate_database(&admin_url, "eventrail_bench_message_db").await?,
    );
    let install_url = admin_url.clone();
    tokio::task::spawn_blocking(move || {
        eventrail_devdb::install_message_db(&install_url, "eventrail_bench_message_db")
    })
    .await??;
    if async_commit {
        // Commits stop waiting for the disk, so the per-call cost of the client shows.
        connect(&admin_url)
            .await?
            .batch_execute("ALTER DATABASE eventrail_bench_message_db SET synchronous_commit = off")
            .await?;
    }
    let db = MessageDb::connect(&url)?;
    let setup = connect(&url).await?;
    let settings = crate::server_settings(&setup).await?;
    println!(
        "Message DB {}; PostgreSQL: {}; writes: {seconds} alternating 1 s slices per side, averaged; reads: 3 alternating rounds, averaged\n",
        db.message_store_version().await?,
        settings
    );

    println!(
        "| scenario                           | writers | raw msg/s | client msg/s | overhead | target |"
    );
    println!(
        "|------------------------------------|--------:|----------:|-------------:|---------:|-------:|"
    );
    // Two clients: one with its own pool (`MessageDb::connect`, whose connections start on
    // Message DB's search path) and one on a pool shared with other code, where every call sets
    // the search path for its own statement.
    let shared = MessageDb::new(eventrail_devdb::pool(&url, 32)?);
    let mut rows = Vec::new();
    for writers in [1, 4, 16] {
        let mut raw_writers = Vec::new();
        for _ in 0..writers {
            raw_writers.push(raw_writer(&url).await?);
        }
        // Warm the pools up (connections, prepared statements) outside the measurement.
        measure(writers, |c| client_writes(db.clone(), c, 1)).await?;
        measure(writers, |c| client_writes(shared.clone(), c, 1)).await?;
        // Short alternating slices, averaged: load from elsewhere on the machine then weighs on
        // every side alike.
        let (mut raw, mut own, mut on_shared) = (0f64, 0f64, 0f64);
        for _ in 0..seconds {
            raw += measure(writers, |c| raw_writes(raw_writers[c].clone(), c, 1)).await?;
            own += measure(writers, |c| client_writes(db.clone(), c, 1)).await?;
            on_shared += measure(writers, |c| client_writes(shared.clone(), c, 1)).await?;
        }
        #[expect(clippy::cast_precision_loss, reason = "a handful of seconds")]
        let slices = seconds.max(1) as f64;
        rows.push((
            "write_message, MessageDb::connect",
            writers,
            raw / slices,
            own / slices,
        ));
        rows.push((
            "write_message, shared pool",
            writers,
            raw / slices,
            on_shared / slices,
        ));
    }
    for (scenario, writers, raw, ours) in rows {
        print_row(scenario, writers, raw, ours);
    }

    setup
        .batch_execute(&format!(
            "SET search_path = message_store, public; \
             SELECT write_message(gen_random_uuid()::varchar, 'readbench-' || (i % 100), 'BenchEvent', \
             jsonb_build_object('i', i, 'sku', 'tea-earl-grey', 'qty', 2)) FROM generate_series(1, {READ_MESSAGES}) AS i"
        ))
        .await?;
    let (mut raw, mut ours) = (0f64, 0f64);
    for _ in 0..READ_ROUNDS {
        raw += raw_category_read(&url).await?;
        ours += subscription_read(&db).await?;
    }
    let rounds = f64::from(READ_ROUNDS);
    print_row(
        "category read, batches of 1000",
        1,
        raw / rounds,
        ours / rounds,
    );
    Ok(())
}

fn print_row(scenario: &str, writers: usize, raw: f64, ours: f64) {
    let overhead = (raw - ours) / raw * 100.0;
    println!(
        "| {scenario:<34} | {writers:>7} | {raw:>9.0} | {ours:>12.0} | {overhead:>7.1}% | ≤10% {} |",
        if overhead <= 10.0 { "ok" } else { "MISS" }
    );
}
