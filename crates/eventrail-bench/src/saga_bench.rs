//! `eventrail-bench saga`: three-step sagas with no-op steps, started and completed per second
//! with 1 and 4 runners, and p50/p99 from start to completion; beside them DBOS Transact
//! running the same three-step workflow on the same server (`scripts/peers/dbos_saga.py`).

use std::time::{Duration, Instant};

use anyhow::Context;
use eventrail_saga::{
    SagaDefinition, SagaOptions, SagaRunner, SagaTables, Sagas, Step, saga_migrator,
};
use eventrail_store_postgres::{PgConnectOptions, PgEventStore};
use tokio_util::sync::CancellationToken;

use crate::connect;

struct Row {
    system: &'static str,
    workers: usize,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn definition() -> anyhow::Result<SagaDefinition<u64>> {
    Ok(SagaDefinition::<u64>::builder("bench", 1)
        .step(Step::action("a", |_ctx| Box::pin(async move { Ok(()) })))
        .step(Step::action("b", |_ctx| Box::pin(async move { Ok(()) })).after(["a"]))
        .step(Step::action("c", |_ctx| Box::pin(async move { Ok(()) })).after(["b"]))
        .build()?)
}

async fn eventrail(admin_url: &str, sagas: u64, workers: usize) -> anyhow::Result<Row> {
    let url = eventrail_devdb::recreate_database(admin_url, "eventrail_bench_saga").await?;
    let mut client = connect(&url).await?;
    saga_migrator("eventrail", &SagaTables::default())?
        .run(&mut client)
        .await?;
    let definition = definition()?;
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let runner = SagaRunner::builder(PgEventStore::connect(&url)?, SagaOptions::new())
            .definition(&definition)
            .listen(PgConnectOptions::from_url(&url)?)
            .build()?;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move { runner.run(stop).await }));
    }
    let starter = Sagas::new(PgEventStore::connect(&url)?, &SagaOptions::new())?;
    // Let the runners register before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    for i in 0..sagas {
        starter.start(&definition, &i, None).await?;
    }
    let unfinished = "SELECT count(*) FROM eventrail.saga_instances WHERE state <> 'completed'";
    while client.query_one(unfinished, &[]).await?.get::<_, i64>(0) > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    for t in tasks {
        t.await??;
    }
    let row = client
        .query_one(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)
             FROM (SELECT extract(epoch FROM finished_at - created_at) * 1000 AS ms FROM eventrail.saga_instances) t",
            &[],
        )
        .await?;
    Ok(Row {
        system: "eventrail",
        workers,
        per_second: sagas as f64 / seconds,
        p50_ms: row.get(0),
        p99_ms: row.get(1),
    })
}

fn dbos(url: &str, sagas: u64, workers: usize) -> anyhow::Result<Row> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/peers/dbos_saga.py"
    );
    let out = std::process::Command::new("python3")
        .args([script, url, &sagas.to_string(), &workers.to_string()])
        .output()
        .context("running python3 scripts/peers/dbos_saga.py")?;
    anyhow::ensure!(
        out.status.success(),
        "dbos_saga.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.lines().last().unwrap_or_default())?;
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    anyhow::ensure!(
        v["completed"].as_u64() == Some(sagas),
        "DBOS completed {} of {sagas}",
        v["completed"]
    );
    Ok(Row {
        system: "DBOS",
        workers,
        per_second: f("per_second"),
        p50_ms: f("p50_ms"),
        p99_ms: f("p99_ms"),
    })
}

/// Runs the benchmark and prints its table.
///
/// # Errors
/// A database, runner or peer failure.
pub(crate) async fn run(sagas: u64, workers: &[usize], peer: bool) -> anyhow::Result<()> {
    let admin_url = eventrail_devdb::database_url().await?;
    let mut rows = Vec::new();
    for &w in workers {
        rows.push(eventrail(&admin_url, sagas, w).await?);
        if peer {
            let url =
                eventrail_devdb::recreate_database(&admin_url, "eventrail_bench_dbos").await?;
            rows.push(dbos(&url, sagas, w)?);
        }
    }
    println!(
        "\n3-step sagas with no-op steps, {sagas} per run, started by one client as fast as it can"
    );
    println!("| workers | system | sagas/s | p50 start→done ms | p99 start→done ms |");
    println!("|--:|---|--:|--:|--:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {:.1} | {:.1} |",
            r.workers, r.system, r.per_second, r.p50_ms, r.p99_ms
        );
    }
    Ok(())
}
