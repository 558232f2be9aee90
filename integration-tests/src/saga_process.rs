//! A saga runner in its own OS process, for the crash tests: `<program> <database-url> <name>
//! <unused>`. Prints `worker <runner id>` once its runner is built and runs until killed or
//! stdin closes. The `test-saga-runner` binary runs it.
//!
//! It runs [`definition`]: `reserve` (compensatable, a local write), `work` (compensatable: an
//! external call keyed by the idempotency key on its own connection, then a local write) and
//! `finish` (fails for inputs that say so, so that the saga compensates).
//!
//! It also runs [`waits_definition`] (a timer and a signal wait, for restarts of every
//! runner), and the step types of [`FULFILMENT`] named in `EVENTRAIL_TEST_STEP_TYPES`
//! (comma-separated; each output names the runner that ran it).
//!
//! Environment: `EVENTRAIL_TEST_HOLD_DIR`: while the file `hold` there holds this process's
//! name, its `work` step creates `entered-<name>` and waits with its transaction open (and its
//! external call made) until killed; `EVENTRAIL_TEST_LEASE_MS`: the lease (default 1000).

use std::path::PathBuf;
use std::time::Duration;

use eventrail_core::BoxError;
use eventrail_saga::{SagaDefinition, SagaOptions, SagaRunner, Step, StepContext};
use eventrail_store_postgres::PgEventStore;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

/// The tables the steps write: `effects` locally (one row per step effect, so a duplicate
/// fails), `external_effects` as an external service that dedups by idempotency key, and
/// `external_calls` counting the calls it received.
pub const SAGA_EFFECTS_DDL: &str = "
    CREATE TABLE IF NOT EXISTS effects (saga_id uuid, step text, what text, runner text, PRIMARY KEY (saga_id, step, what));
    CREATE TABLE IF NOT EXISTS external_effects (key text PRIMARY KEY);
    CREATE TABLE IF NOT EXISTS external_calls (key text, runner text)";

/// The input of [`definition`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CrashInput {
    /// Makes `finish` fail, so the saga compensates.
    pub fail: bool,
}

static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn runner_name() -> String {
    NAME.get().cloned().unwrap_or_default()
}

async fn local(ctx: &StepContext<'_>, what: &str) -> Result<(), BoxError> {
    ctx.transaction()
        .execute(
            "INSERT INTO effects (saga_id, step, what, runner) VALUES ($1, $2, $3, $4)",
            &[&ctx.saga_id(), &ctx.step(), &what, &runner_name()],
        )
        .await?;
    Ok(())
}

fn reserve<'a>(ctx: &'a StepContext<'a>) -> BoxFuture<'a, Result<(), BoxError>> {
    Box::pin(async move { local(ctx, "done").await })
}

fn undo<'a>(ctx: &'a StepContext<'a>) -> BoxFuture<'a, Result<(), BoxError>> {
    Box::pin(async move { local(ctx, "undone").await })
}

fn work(
    url: String,
    hold_dir: Option<PathBuf>,
) -> impl for<'c> Fn(&'c StepContext<'c>) -> BoxFuture<'c, Result<(), BoxError>> + Send + Sync + 'static
{
    move |ctx| {
        let (url, hold_dir) = (url.clone(), hold_dir.clone());
        Box::pin(async move {
            // The external service: its own connection, outside the step's transaction.
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            let conn = tokio::spawn(conn);
            let key = ctx.idempotency_key();
            client
                .batch_execute(&format!(
                    "INSERT INTO external_calls (key, runner) VALUES ('{key}', '{}');
                     INSERT INTO external_effects (key) VALUES ('{key}') ON CONFLICT DO NOTHING",
                    runner_name()
                ))
                .await?;
            drop(client);
            let _ = conn.await;
            local(ctx, "done").await?;
            if let Some(dir) = hold_dir {
                let hold = dir.join("hold");
                let me = runner_name();
                if std::fs::read_to_string(&hold).is_ok_and(|h| h.trim() == me) {
                    std::fs::write(dir.join(format!("entered-{me}")), ctx.saga_id().to_string())?;
                    // Held with the transaction open until the test kills this process.
                    loop {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            Ok(())
        })
    }
}

/// The crash tests' definition (see the module docs).
///
/// # Errors
/// Never for this graph.
pub fn definition(url: &str) -> anyhow::Result<SagaDefinition<CrashInput>> {
    let hold_dir = std::env::var_os("EVENTRAIL_TEST_HOLD_DIR").map(PathBuf::from);
    Ok(SagaDefinition::<CrashInput>::builder("crash", 1)
        .step(Step::compensatable("reserve", reserve, undo))
        .step(Step::compensatable("work", work(url.to_owned(), hold_dir), undo).after(["reserve"]))
        .step(
            Step::action("finish", |ctx| {
                Box::pin(async move {
                    if ctx.input::<CrashInput>()?.fail {
                        return Err::<(), BoxError>("finish refused".into());
                    }
                    local(ctx, "done").await
                })
            })
            .after(["work"])
            .retry(eventrail_core::RetryPolicy::new(
                1,
                Duration::from_millis(10),
                Duration::from_millis(10),
            )),
        )
        .build()?)
}

/// A definition with a durable timer and a signal wait after a first step.
///
/// # Errors
/// Never for this graph.
pub fn waits_definition() -> anyhow::Result<SagaDefinition<CrashInput>> {
    Ok(SagaDefinition::<CrashInput>::builder("waits", 1)
        .step(Step::compensatable("reserve", reserve, undo))
        .step(Step::timer("cool-off", Duration::from_secs(3)).after(["reserve"]))
        .step(Step::signal("approval", "approved", Duration::from_secs(120)).after(["reserve"]))
        .step(
            Step::action("finish", |ctx| {
                Box::pin(async move {
                    local(ctx, "done").await?;
                    Ok(ctx.output::<serde_json::Value>("approval")?)
                })
            })
            .after(["cool-off", "approval"]),
        )
        .build()?)
}

/// A definition as data whose step types are served by different runners.
pub const FULFILMENT: &str = r#"{"name": "fulfilment", "version": 1, "steps": [
    {"name": "reserve", "type": "stock.reserve"},
    {"name": "charge", "type": "payment.charge", "after": ["reserve"]},
    {"name": "ship", "type": "stock.ship", "compensate": false, "after": ["charge"]}
]}"#;

/// Runs the process (see the module docs).
///
/// # Errors
/// Bad arguments, or a runner that fails.
pub async fn run(mut args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let url = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: <database-url> <name>"))?;
    let name = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: <database-url> <name>"))?;
    let _ = NAME.set(name.clone());
    let lease = std::env::var("EVENTRAIL_TEST_LEASE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let store = PgEventStore::connect(&url)?;
    let mut runner = SagaRunner::builder(
        store,
        SagaOptions::new()
            .lease(Duration::from_millis(lease))
            .poll_interval(Duration::from_millis(100)),
    )
    .id(name.clone())
    .listen(eventrail_store_postgres::PgConnectOptions::from_url(&url)?)
    .definition(&definition(&url)?)
    .definition(&waits_definition()?);
    for step_type in std::env::var("EVENTRAIL_TEST_STEP_TYPES")
        .unwrap_or_default()
        .split(',')
        .filter(|t| !t.is_empty())
    {
        let runner_name = name.clone();
        runner = runner.step_type(
            step_type,
            eventrail_saga::handler_with_compensation(
                move |ctx| {
                    let runner_name = runner_name.clone();
                    Box::pin(async move {
                        Ok(serde_json::json!({"step": ctx.step(), "runner": runner_name}))
                    })
                },
                |_ctx| Box::pin(async move { Ok(()) }),
            ),
        );
    }
    let runner = runner.build()?;
    println!("worker {}", uuid::Uuid::now_v7());
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        let mut stdin = tokio::io::stdin();
        while stdin.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        stopper.cancel();
    });
    runner.run(stop).await?;
    Ok(())
}
