//! Sagas against a real PostgreSQL: compensation order, pivots, conditions, timeouts, stuck
//! compensations and operator actions, cancel, transactional and idempotent starts, timers and
//! signals across runner restarts, data definitions served by two runners, and versions no
//! runner can run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use eventrail_core::{BoxError, EventStore, RetryPolicy};
use eventrail_saga::{
    SagaAdmin, SagaDefinition, SagaDocument, SagaOptions, SagaRunner, SagaState, Sagas, Step,
    handler, handler_with_compensation, saga_stream,
};
use eventrail_store_postgres::PgEventStore;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::harness::{TestDb, eventually};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Order {
    id: u64,
    /// The step that fails every attempt, if any.
    fail: Option<String>,
    express: bool,
}

/// Every action and compensation writes a row here, in the step's transaction.
async fn effects_table(db: &TestDb) -> anyhow::Result<()> {
    db.client()
        .await?
        .batch_execute(
            "CREATE TABLE effects (saga_id uuid, step text, what text, at timestamptz DEFAULT clock_timestamp());
             CREATE TABLE external_calls (key text PRIMARY KEY, calls int NOT NULL DEFAULT 1)",
        )
        .await?;
    Ok(())
}

async fn record(ctx: &eventrail_saga::StepContext<'_>, what: &str) -> Result<(), BoxError> {
    ctx.transaction()
        .execute(
            "INSERT INTO effects (saga_id, step, what) VALUES ($1, $2, $3)",
            &[&ctx.saga_id(), &ctx.step(), &what],
        )
        .await?;
    Ok(())
}

/// An action that records itself and fails when the input says so.
fn act<'a>(
    ctx: &'a eventrail_saga::StepContext<'a>,
) -> futures::future::BoxFuture<'a, Result<String, BoxError>> {
    Box::pin(async move {
        let order: Order = ctx.input()?;
        if order.fail.as_deref() == Some(ctx.step()) {
            return Err(format!("{} refused order {}", ctx.step(), order.id).into());
        }
        record(ctx, "done").await?;
        Ok(format!("{}-{}", ctx.step(), order.id))
    })
}

/// A compensation that takes a while, so that the overlap of siblings can be measured.
fn undo<'a>(
    ctx: &'a eventrail_saga::StepContext<'a>,
) -> futures::future::BoxFuture<'a, Result<(), BoxError>> {
    Box::pin(async move {
        record(ctx, "undo-start").await?;
        // Simulated work of the compensation (not synchronisation).
        tokio::time::sleep(Duration::from_millis(300)).await;
        record(ctx, "undo-end").await?;
        Ok(())
    })
}

fn fast() -> RetryPolicy {
    RetryPolicy::new(2, Duration::from_millis(20), Duration::from_millis(50))
}

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), eventrail_saga::SagaError>>,
}

impl Running {
    async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await??;
        Ok(())
    }
}

fn options_for_sagas() -> SagaOptions {
    options()
}

fn options() -> SagaOptions {
    SagaOptions::new()
        .poll_interval(Duration::from_millis(50))
        .lease(Duration::from_secs(2))
}

fn spawn(runner: SagaRunner) -> Running {
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { runner.run(stop).await }
    });
    Running { stop, task }
}

fn run_definition<I: Serialize + serde::de::DeserializeOwned + 'static>(
    store: &PgEventStore,
    definition: &SagaDefinition<I>,
) -> anyhow::Result<Running> {
    Ok(spawn(
        SagaRunner::builder(store.clone(), options())
            .definition(definition)
            .build()?,
    ))
}

/// Waits (at most 30 s) until the saga is finished or stuck.
pub(crate) async fn settled(sagas: &Sagas, id: Uuid) -> anyhow::Result<SagaState> {
    let state = tokio::time::timeout(
        Duration::from_secs(30),
        sagas.wait_settled(id, Duration::from_millis(20)),
    )
    .await??;
    Ok(state)
}

async fn effects(db: &TestDb, id: Uuid) -> anyhow::Result<Vec<(String, String)>> {
    Ok(db
        .client()
        .await?
        .query(
            "SELECT step, what FROM effects WHERE saga_id = $1 ORDER BY at",
            &[&id],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

fn diamond() -> anyhow::Result<SagaDefinition<Order>> {
    Ok(SagaDefinition::<Order>::builder("diamond", 1)
        .step(Step::compensatable("a", act, undo))
        .step(Step::compensatable("b", act, undo).after(["a"]))
        .step(Step::compensatable("c", act, undo).after(["a"]))
        .step(
            Step::compensatable("d", act, undo)
                .after(["b", "c"])
                .retry(fast()),
        )
        .build()?)
}

#[tokio::test]
async fn a_failure_compensates_in_reverse_dependency_order_siblings_in_parallel()
-> anyhow::Result<()> {
    let db = TestDb::new().await?;
    effects_table(&db).await?;
    let store = db.store();
    let definition = diamond()?;
    let sagas = Sagas::new(store.clone(), &SagaOptions::new())?;
    let runner = run_definition(&store, &definition)?;
    let order = Order {
        id: 7,
        fail: Some("d".into()),
        ..Order::default()
    };
    let id = sagas.start(&definition, &order, None).await?;
    assert_eq!(settled(&sagas, id).await?, SagaState::Compensated);
    runner.stop().await?;

    let client = db.client().await?;
    let at = |step: &'static str, what: &'static str| {
        let client = &client;
        async move {
            let row = client
                .query_one(
                    "SELECT at FROM effects WHERE saga_id = $1 AND step = $2 AND what = $3",
                    &[&id, &step, &what],
                )
                .await?;
            anyhow::Ok(row.get::<_, std::time::SystemTime>(0))
        }
    };
    let (b_start, b_end, c_start, c_end, a_start) = (
        at("b", "undo-start").await?,
        at("b", "undo-end").await?,
        at("c", "undo-start").await?,
        at("c", "undo-end").await?,
        at("a", "undo-start").await?,
    );
    // a is undone after both of its dependents; b and c, independent, at the same time.
    assert!(
        a_start >= b_end && a_start >= c_end,
        "a undone before b or c finished"
    );
    let overlap = b_end
        .min(c_end)
        .duration_since(b_start.max(c_start))
        .unwrap_or_default();
    println!("compensations of b and c overlapped for {overlap:?} of 300 ms");
    assert!(
        overlap >= Duration::from_millis(150),
        "b and c did not run in parallel: {overlap:?}"
    );
    // d never succeeded, so it is not compensated; it was attempted twice.
    let e = effects(&db, id).await?;
    assert!(!e.iter().any(|(s, _)| s == "d"), "{e:?}");
    let detail = SagaAdmin::new(store.clone(), &SagaOptions::new())?
        .show(id)
        .await?;
    let d = detail.steps.iter().find(|s| s.name == "d").expect("d");
    assert_eq!((d.state.as_str(), d.attempts), ("failed", 2));
    assert!(
        d.last_error
            .as_deref()
            .unwrap_or("")
            .contains("d refused order 7"),
        "{d:?}"
    );
    assert!(
        detail
            .saga
            .last_error
            .unwrap_or_default()
            .contains("d refused order 7")
    );

    // Every change is an event of the saga's stream.
    let events = store
        .read_stream(
            &saga_stream(id),
            eventrail_core::ReadStreamOptions::default(),
        )
        .await?;
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types.first(), Some(&"SagaStarted"));
    assert_eq!(types.last(), Some(&"SagaCompensated"));
    for t in [
        "StepSucceeded",
        "StepRetrying",
        "StepFailed",
        "SagaCompensating",
        "StepCompensated",
    ] {
        assert!(types.contains(&t), "{t} missing from {types:?}");
    }
    assert_eq!(types.iter().filter(|t| **t == "StepCompensated").count(), 3);
    Ok(())
}

#[tokio::test]
async fn past_the_pivot_the_saga_only_goes_forward() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    effects_table(&db).await?;
    let store = db.store();
    let ship_failures = Arc::new(AtomicU32::new(2));
    let failures = Arc::clone(&ship_failures);
    let definition = SagaDefinition::<Order>::builder("pivoted", 1)
        .step(Step::compensatable("reserve", act, undo))
        .step(Step::pivot("pay", act).after(["reserve"]).retry(fast()))
        .step(
            Step::retriable("ship", move |ctx| {
                let failures = Arc::clone(&failures);
                Box::pin(async move {
                    if failures
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        return Err::<(), BoxError>("courier unavailable".into());
                    }
                    record(ctx, "done").await?;
                    Ok(())
                })
            })
            .after(["pay"])
            // Fewer attempts than failures: a retriable step is never given up.
            .retry(RetryPolicy::new(
                1,
                Duration::from_millis(10),
                Duration::from_millis(20),
            )),
        )
        .build()?;
    let sagas = Sagas::new(store.clone(), &SagaOptions::new())?;
    let runner = run_definition(&store, &definition)?;
    let ok = sagas
        .start(
            &definition,
            &Order {
                id: 1,
                ..Order::default()
            },
            None,
        )
        .await?;
    assert_eq!(settled(&sagas, ok).await?, SagaState::Completed);
    let admin = SagaAdmin::new(store.clone(), &SagaOptions::new())?;
    let ship = admin
        .show(ok)
        .await?
        .steps
        .into_iter()
        .find(|s| s.name == "ship")
        .expect("ship");
    assert_eq!((ship.state.as_str(), ship.attempts), ("succeeded", 3));
    assert!(
        !effects(&db, ok)
            .await?
            .iter()
            .any(|(_, w)| w.starts_with("undo"))
    );
    // Past the pivot it cannot be cancelled.
    assert!(matches!(
        sagas.cancel(ok).await,
        Err(eventrail_saga::SagaError::InvalidState { .. })
    ));

    // A pivot that fails undoes what came before it.
    let failed = sagas
        .start(
            &definition,
            &Order {
                id: 2,
                fail: Some("pay".into()),
                ..Order::default()
            },
            None,
        )
        .await?;
    assert_eq!(settled(&sagas, failed).await?, SagaState::Compensated);
    let e = effects(&db, failed).await?;
    assert!(e.contains(&("reserve".into(), "undo-end".into())), "{e:?}");
    runner.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_condition_that_does_not_hold_skips_and_dependents_go_on() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    effects_table(&db).await?;
    let store = db.store();
    let definition = SagaDefinition::<Order>::builder("conditional", 1)
        .step(Step::compensatable("reserve", act, undo))
        .step(
            Step::compensatable("express", act, undo)
                .after(["reserve"])
                .when(|o: &Order, _| o.express),
        )
        .step(
            Step::action("notify", |ctx| {
                Box::pin(async move {
                    // Sees the outputs of its dependencies: a skipped one has none.
                    let express: Option<String> = ctx.output("express")?;
                    let reserve: Option<String> = ctx.output("reserve")?;
                    record(ctx, "done").await?;
                    Ok(format!("{reserve:?}/{express:?}"))
                })
            })
            .after(["reserve", "express"]),
        )
        .build()?;
    let sagas = Sagas::new(store.clone(), &SagaOptions::new())?;
    let runner = run_definition(&store, &definition)?;
    let slow = sagas
        .start(
            &definition,
            &Order {
                id: 3,
                ..Order::default()
            },
            None,
        )
        .await?;
    let fast = sagas
        .start(
            &definition,
            &Order {
                id: 4,
                express: true,
                ..Order::default()
            },
            None,
        )
        .await?;
    assert_eq!(settled(&sagas, slow).await?, SagaState::Completed);
    assert_eq!(settled(&sagas, fast).await?, SagaState::Completed);
    runner.stop().await?;
    let admin = SagaAdmin::new(store, &SagaOptions::new())?;
    let steps = admin.show(slow).await?.steps;
    let state = |n: &str| steps.iter().find(|s| s.name == n).map(|s| s.state.clone());
    assert_eq!(state("express").as_deref(), Some("skipped"));
    let notify = steps
        .iter()
        .find(|s| s.name == "notify")
        .and_then(|s| s.output.clone());
    assert_eq!(notify, Some(serde_json::json!("Some(\"reserve-3\")/None")));
    let fast_steps = admin.show(fast).await?.steps;
    assert!(
        fast_steps.iter().all(|s| s.state == "succeeded"),
        "{fast_steps:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_step_that_times_out_is_retried_then_compensated() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    effects_table(&db).await?;
    let store = db.store();
    let definition = SagaDefinition::<Order>::builder("slow", 1)
        .step(Step::compensatable("reserve", act, undo))
        .step(
            Step::compensatable(
                "call",
                |ctx| {
                    Box::pin(async move {
                        record(ctx, "started").await?;
                        // Longer than its timeout.
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        Ok(())
                    })
                },
                undo,
            )
            .after(["reserve"])
            .timeout(Duration::from_millis(200))
            .retry(fast()),
        )
        .build()?;
    let sagas = Sagas::new(store.clone(), &SagaOptions::new())?;
    let runner = run_definition(&store, &definition)?;
    let id = sagas.start(&definition, &Order::default(), None).await?;
    assert_eq!(settled(&sagas, id).await?, SagaState::Compensated);
    runner.stop().await?;
    let detail = SagaAdmin::new(store, &SagaOptions::new())?.show(id).await?;
    let call = detail
        .steps
        .iter()
        .find(|s| s.name == "call")
        .expect("call");
    assert_eq!((call.state.as_str(), call.attempts), ("failed", 2));
    assert!(
        call.last_error
            .as_deref()
            .unwrap_or("")
            .contains("timed out"),
        "{call:?}"
    );
    // The timed-out attempts' writes rolled back with them.
    assert!(!effects(&db, id).await?.iter().any(|(s, _)| s == "call"));
    Ok(())
}

#[tokio::test]
async fn a_compensation_that_keeps_failing_is_stuck_until_an_operator_acts() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    effects_table(&db).await?;
    let store = db.store();
    let broken = Arc::new(AtomicBool::new(true));
    let is_broken = Arc::clone(&broken);
    let definition = SagaDefinition::<Order>::builder("stuck", 1)
        .step(Step::compensatable("reserve", act, undo))
        .step(
            Step::compensatable("charge", act, move |ctx| {
                let broken = Arc::clone(&is_broken);
                Box::pin(async move {
                    if broken.load(Ordering::SeqCst) {
                        return Err("refund service down".into());
                    }
                    record(ctx, "undo-end").await
                })
            })
            .after(["reserve"])
            .compensation_retry(fast()),
        )
        .step(
            Step::compensatable("ship", act, undo)
                .after(["charge"])
                .retry(fast()),
        )
        .build()?;
    let sagas = Sagas::new(store.clone(), &SagaOptions::new())?;
    let admin = SagaAdmin::new(store.clone(), &SagaOptions::new())?;
    let runner = run_definition(&store, &definition)?;
    let order = Order {
        id: 9,
        fail: Some("ship".into()),
        ..Order::default()
    };
    let id = sagas.start(&definition, &order, None).await?;
    assert_eq!(settled(&sagas, id).await?, SagaState::Stuck);
    let detail = admin.show(id).await?;
    let charge = detail
        .steps
        .iter()
        .find(|s| s.name == "charge")
        .expect("charge");
    assert_eq!(
        (charge.state.as_str(), charge.compensation_attempts),
        ("compensation_stuck", 2)
    );
    assert!(
        charge
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("refund service down")
    );
    let reserve = detail
        .steps
        .iter()
        .find(|s| s.name == "reserve")
        .expect("reserve");
    assert_eq!(
        reserve.state, "succeeded",
        "reserve waits behind the stuck charge"
    );
    // Operator actions that do not apply are refused.
    assert!(matches!(
        admin.skip_step(id, "reserve").await,
        Err(eventrail_saga::SagaError::InvalidState { .. })
    ));
    assert!(matches!(
        admin.skip_step(id, "nope").await,
        Err(eventrail_saga::SagaError::NoSuchStep { .. })
    ));

    // The operator fixes the refund service and retries.
    broken.store(false, Ordering::SeqCst);
    assert_eq!(admin.retry(id).await?, SagaState::Compensating);
    assert_eq!(settled(&sagas, id).await?, SagaState::Compensated);
    let e = effects(&db, id).await?;
    assert!(
        e.contains(&("charge".into(), "undo-end".into()))
            && e.contains(&("reserve".into(), "undo-end".into())),
        "{e:?}"
    );

    // Skipping a stuck step instead lets the rest be compensated.
    broken.store(true, Ordering::SeqCst);
    let other = sagas
        .start(
            &definition,
            &Order {
                id: 10,
                fail: Some("ship".into()),
                ..Order::default()
            },
            None,
        )
        .await?;
    assert_eq!(settled(&sagas, other).await?, SagaState::Stuck);
    admin.skip_step(other, "charge").await?;
    assert_eq!(settled(&sagas, other).await?, SagaState::Compensated);
    let e = effects(&db, other).await?;
    assert!(
        !e.contains(&("charge".into(), "undo-end".into()))
            && e.contains(&("reserve".into(), "undo-end".into())),
        "{e:?}"
    );

    // Abort gives a stuck saga up.
    let third = sagas
        .start(
            &definition,
            &Order {
                id: 11,
                fail: Some("ship".into()),
                ..Order::default()
            },
            None,
        )
        .await?;
    assert_eq!(settled(&sagas, third).await?, SagaState::Stuck);
    assert_eq!(admin.abort(third).await?, SagaState::Failed);
    runner.stop().await?;
    let stuck: Vec<Uuid> = admin
        .list(Some(SagaState::Stuck), Some("stuck"), 10)
        .await?
        .iter()
        .map(|s| s.id)
        .collect();
    assert!(stuck.is_empty(), "{stuck:?}");
    Ok(())
}

#[tokio::test]
async fn cancel_compensates_what_ran_and_nothing_else_runs() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    effects_table(&db).await?;
    let store = db.store();
    let definition = SagaDefinition::<Order>::builder("cancellable", 1)
        .step(Step::compensatable("reserve", act, undo))
        .step(Step::signal("approval", "approved", Duration::from_secs(60)).after(["reserve"]))
        .step(Step::compensatable("charge", act, undo).after(["approval"]))
        .build()?;
    let sagas = Sagas::new(store.clone(), &SagaOptions::new())?;
    let admin = SagaAdmin::new(store.clone(), &SagaOptions::new())?;
    let runner = run_definition(&store, &definition)?;
    let id = sagas.start(&definition, &Order::default(), None).await?;
    eventually(20, "the saga waits for approval", || {
        let admin = admin.clone();
        async move {
            let steps = admin.show(id).await?.steps;
            Ok(steps
                .iter()
                .any(|s| s.name == "approval" && s.state == "waiting"))
        }
    })
    .await?;
    sagas.cancel(id).await?;
    assert_eq!(settled(&sagas, id).await?, SagaState::Cancelled);
    runner.stop().await?;
    let steps = admin.show(id).await?.steps;
    let state = |n: &str| {
        steps
            .iter()
            .find(|s| s.name == n)
            .map(|s| s.state.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        (
            state("reserve").as_str(),
            state("approval").as_str(),
            state("charge").as_str()
        ),
        ("compensated", "not_run", "not_run")
    );
    assert!(matches!(
        sagas.cancel(id).await,
        Err(eventrail_saga::SagaError::InvalidState { .. })
    ));
    assert!(matches!(
        sagas.cancel(Uuid::now_v7()).await,
        Err(eventrail_saga::SagaError::NotFound(_))
    ));
    Ok(())
}

#[tokio::test]
async fn starts_commit_with_the_caller_and_a_key_starts_one_saga() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = db.store();
    let definition = diamond()?;
    let sagas = Sagas::new(store.clone(), &SagaOptions::new())?;
    let mut client = db.pool.get().await?;
    let tx = client.transaction().await?;
    let started = sagas
        .start_in(&tx, definition.document(), &Order::default(), Some("k1"))
        .await?;
    tx.rollback().await?;
    assert!(matches!(
        sagas.state(started.id).await,
        Err(eventrail_saga::SagaError::NotFound(_))
    ));
    assert!(
        store
            .read_stream(
                &saga_stream(started.id),
                eventrail_core::ReadStreamOptions::default()
            )
            .await?
            .is_empty()
    );

    // The same key, concurrently: one saga.
    let starts = (0..4).map(|_| {
        let (sagas, definition) = (sagas.clone(), definition.clone());
        tokio::spawn(async move {
            sagas
                .start(&definition, &Order::default(), Some("k2"))
                .await
        })
    });
    let ids: Vec<Uuid> = futures::future::try_join_all(starts)
        .await?
        .into_iter()
        .collect::<Result<_, _>>()?;
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    let count: i64 = db
        .client()
        .await?
        .query_one(
            "SELECT count(*) FROM eventrail.saga_instances WHERE start_key = 'k2'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(count, 1);
    Ok(())
}

#[tokio::test]
async fn timers_and_signals_survive_restarts_of_every_runner() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    effects_table(&db).await?;
    let store = db.store();
    let definition = SagaDefinition::<Order>::builder("waits", 1)
        .step(Step::compensatable("reserve", act, undo))
        .step(Step::timer("cool-off", Duration::from_secs(2)).after(["reserve"]))
        .step(Step::signal("approval", "approved", Duration::from_secs(60)).after(["reserve"]))
        .step(
            Step::action("ship", |ctx| {
                Box::pin(async move {
                    let approval: Option<serde_json::Value> = ctx.output("approval")?;
                    record(ctx, "done").await?;
                    Ok(approval)
                })
            })
            .after(["cool-off", "approval"]),
        )
        .build()?;
    let expiring = SagaDefinition::<Order>::builder("expiring", 1)
        .step(Step::compensatable("reserve", act, undo))
        .step(Step::signal("approval", "approved", Duration::from_millis(1500)).after(["reserve"]))
        .build()?;
    let sagas = Sagas::new(store.clone(), &SagaOptions::new())?;
    let admin = SagaAdmin::new(store.clone(), &SagaOptions::new())?;
    let run = || -> anyhow::Result<Running> {
        Ok(spawn(
            SagaRunner::builder(store.clone(), options())
                .definition(&definition)
                .definition(&expiring)
                .build()?,
        ))
    };
    let first = run()?;
    let id = sagas.start(&definition, &Order::default(), None).await?;
    let late = sagas.start(&expiring, &Order::default(), None).await?;
    eventually(20, "both waits started", || {
        let admin = admin.clone();
        async move {
            let steps = admin.show(id).await?.steps;
            Ok(steps.iter().filter(|s| s.state == "waiting").count() == 2)
        }
    })
    .await?;
    // Every runner stops; the signal arrives while none runs, and the timer and the other
    // saga's deadline pass.
    first.stop().await?;
    assert!(
        sagas
            .signal(id, "approved", &serde_json::json!({"by": "ops"}))
            .await?
    );
    assert!(
        !sagas
            .signal(id, "approved", &serde_json::json!({"by": "again"}))
            .await?,
        "the first signal wins"
    );
    tokio::time::sleep(Duration::from_secs(2)).await; // let the timer and the deadline pass while no runner runs
    let second = run()?;
    assert_eq!(settled(&sagas, id).await?, SagaState::Completed);
    assert_eq!(settled(&sagas, late).await?, SagaState::Compensated);
    second.stop().await?;
    let ship = admin
        .show(id)
        .await?
        .steps
        .into_iter()
        .find(|s| s.name == "ship")
        .expect("ship");
    assert_eq!(ship.output, Some(serde_json::json!({"by": "ops"})));
    let approval = admin
        .show(late)
        .await?
        .steps
        .into_iter()
        .find(|s| s.name == "approval")
        .expect("approval");
    assert!(
        approval
            .last_error
            .unwrap_or_default()
            .contains("before the deadline")
    );
    Ok(())
}

const DOCUMENT: &str = r#"{
    "name": "fulfilment", "version": 1,
    "steps": [
        {"name": "reserve", "type": "stock.reserve"},
        {"name": "charge", "type": "payment.charge", "after": ["reserve"],
         "when": {"compare": {"path": "/input/amount", "op": "gt", "value": 0}}},
        {"name": "ship", "type": "stock.ship", "kind": "compensatable", "compensate": false, "after": ["charge"]}
    ]
}"#;

#[tokio::test]
async fn a_data_definition_runs_with_handlers_of_two_runners() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = db.store();
    let document = SagaDocument::from_json(DOCUMENT)?;
    let yaml = SagaDocument::from_yaml(
        "name: fulfilment\nversion: 1\nsteps:\n  - {name: reserve, type: stock.reserve}\n  - name: charge\n    type: payment.charge\n    after: [reserve]\n    when: {compare: {path: /input/amount, op: gt, value: 0}}\n  - {name: ship, type: stock.ship, compensate: false, after: [charge]}\n",
    )?;
    assert_eq!(yaml, document, "YAML and JSON describe the same graph");
    let sagas = Sagas::new(store.clone(), &SagaOptions::new())?;
    sagas.register(&document).await?;
    sagas.register(&document).await?;
    let mut changed = serde_json::from_str::<serde_json::Value>(DOCUMENT)?;
    changed["steps"][2]["type"] = "stock.dispatch".into();
    let changed: SagaDocument = serde_json::from_value(changed)?;
    assert!(matches!(
        sagas.register(&changed).await,
        Err(eventrail_saga::SagaError::DefinitionChanged { .. })
    ));

    // The stock service and the payment service each serve their step types.
    let stock = spawn(
        SagaRunner::builder(store.clone(), options())
            .id("stock")
            .step_type("stock.reserve", handler_with_compensation(
                |ctx| Box::pin(async move { Ok(serde_json::json!({"reserved_by": "stock", "attempt": ctx.attempt()})) }),
                |_ctx| Box::pin(async move { Ok(()) }),
            ))
            .step_type("stock.ship", handler(|ctx| Box::pin(async move {
                let charge: Option<serde_json::Value> = ctx.output("charge")?;
                Ok(serde_json::json!({"shipped_after": charge}))
            })))
            .build()?,
    );
    let payment = spawn(
        SagaRunner::builder(store.clone(), options())
            .id("payment")
            .step_type(
                "payment.charge",
                handler(|ctx| {
                    Box::pin(async move {
                        let amount = ctx.input_json()["amount"].as_u64().unwrap_or(0);
                        Ok(serde_json::json!({"charged_by": "payment", "amount": amount}))
                    })
                }),
            )
            .build()?,
    );
    let mut client = db.pool.get().await?;
    let tx = client.transaction().await?;
    let paid = sagas
        .start_registered_in(
            &tx,
            "fulfilment",
            1,
            &serde_json::json!({"amount": 30}),
            None,
        )
        .await?;
    let free = sagas
        .start_registered_in(
            &tx,
            "fulfilment",
            1,
            &serde_json::json!({"amount": 0}),
            None,
        )
        .await?;
    tx.commit().await?;
    assert_eq!(settled(&sagas, paid.id).await?, SagaState::Completed);
    assert_eq!(settled(&sagas, free.id).await?, SagaState::Completed);
    let admin = SagaAdmin::new(store.clone(), &SagaOptions::new())?;
    let steps = admin.show(paid.id).await?.steps;
    let owner = |n: &str| {
        steps
            .iter()
            .find(|s| s.name == n)
            .map(|s| (s.state.clone(), s.output.clone()))
    };
    assert_eq!(
        owner("charge").map(|o| o.1),
        Some(Some(
            serde_json::json!({"charged_by": "payment", "amount": 30})
        ))
    );
    assert_eq!(
        owner("ship").map(|o| o.1),
        Some(Some(
            serde_json::json!({"shipped_after": {"charged_by": "payment", "amount": 30}})
        ))
    );
    let free_steps = admin.show(free.id).await?.steps;
    assert_eq!(
        free_steps
            .iter()
            .find(|s| s.name == "charge")
            .map(|s| s.state.as_str()),
        Some("skipped")
    );
    let mut client = db.pool.get().await?;
    let tx = client.transaction().await?;
    assert!(matches!(
        sagas
            .start_registered_in(&tx, "fulfilment", 2, &serde_json::json!({}), None)
            .await,
        Err(eventrail_saga::SagaError::UnknownDefinition { .. })
    ));
    tx.rollback().await?;
    stock.stop().await?;
    payment.stop().await?;
    Ok(())
}

#[tokio::test]
async fn an_instance_no_runner_can_run_is_reported() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    effects_table(&db).await?;
    let store = db.store();
    let v1 = SagaDefinition::<Order>::builder("versioned", 1)
        .step(Step::compensatable("reserve", act, undo))
        .build()?;
    let v2 = SagaDefinition::<Order>::builder("versioned", 2)
        .step(Step::compensatable("reserve", act, undo))
        .step(Step::compensatable("charge", act, undo).after(["reserve"]))
        .build()?;
    let sagas = Sagas::new(store.clone(), &SagaOptions::new())?;
    let admin = SagaAdmin::new(store.clone(), &SagaOptions::new())?;
    // Only version 1 is deployed.
    let runner = run_definition(&store, &v1)?;
    let old = sagas.start(&v1, &Order::default(), None).await?;
    let new = sagas.start(&v2, &Order::default(), None).await?;
    assert_eq!(settled(&sagas, old).await?, SagaState::Completed);
    eventually(20, "version 2 reported as stranded", || {
        let admin = admin.clone();
        async move {
            let defs = admin.definitions(Duration::from_secs(30)).await?;
            Ok(defs.iter().any(|d| {
                d.version == 2
                    && d.in_flight == 1
                    && d.stranded == 1
                    && d.missing_handlers == ["versioned@2/charge", "versioned@2/reserve"]
            }))
        }
    })
    .await?;
    let defs = admin.definitions(Duration::from_secs(30)).await?;
    let v1_status = defs.iter().find(|d| d.version == 1).expect("v1");
    assert_eq!(
        (v1_status.in_flight, v1_status.stranded),
        (0, 0),
        "{defs:?}"
    );
    assert_eq!(
        sagas.state(new).await?,
        SagaState::Queued,
        "left alone by the version-1 runner"
    );
    // Deploying version 2 runs it.
    let runner2 = run_definition(&store, &v2)?;
    assert_eq!(settled(&sagas, new).await?, SagaState::Completed);
    runner.stop().await?;
    runner2.stop().await?;
    Ok(())
}

mod crashes {
    //! Runners in their own OS processes, killed with SIGKILL.

    use std::time::Duration;

    use eventrail_saga::{SagaOptions, SagaState, Sagas};
    use integration_tests::fleet::{WorkerCommand, WorkerProcess};
    use integration_tests::saga_process::{CrashInput, SAGA_EFFECTS_DDL, definition};
    use uuid::Uuid;

    use crate::harness::{TestDb, eventually};

    fn command() -> WorkerCommand {
        WorkerCommand::new(env!("CARGO_BIN_EXE_test-saga-runner"))
            .env("EVENTRAIL_TEST_LEASE_MS", 1000)
    }

    #[tokio::test]
    async fn a_runner_killed_mid_step_leaves_the_step_to_another_with_effects_once()
    -> anyhow::Result<()> {
        let db = TestDb::new().await?;
        db.client().await?.batch_execute(SAGA_EFFECTS_DDL).await?;
        let hold = std::env::temp_dir().join(format!("eventrail-saga-hold-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&hold)?;
        std::fs::write(hold.join("hold"), "a")?;
        let command = command().env("EVENTRAIL_TEST_HOLD_DIR", hold.display());
        let mut a = WorkerProcess::spawn(&command, &db.url, "a", 0)?;
        let sagas = Sagas::new(db.store(), &SagaOptions::new())?;
        let id = sagas
            .start(&definition(&db.url)?, &CrashInput::default(), None)
            .await?;
        eventually(30, "runner a holds the step mid-way", || {
            let entered = hold.join("entered-a");
            async move { Ok(entered.exists()) }
        })
        .await?;
        let b = WorkerProcess::spawn(&command, &db.url, "b", 0)?;
        a.kill()?;
        let state = super::settled(&sagas, id).await?;
        assert_eq!(state, SagaState::Completed);
        b.stop()?;
        let client = db.client().await?;
        let rows: Vec<(String, String, String)> = client
            .query(
                "SELECT step, what, runner FROM effects WHERE saga_id = $1 ORDER BY step",
                &[&id],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        // The killed runner's local write rolled back; b's committed once (a duplicate would
        // violate the primary key).
        assert!(
            rows.contains(&("work".into(), "done".into(), "b".into())),
            "{rows:?}"
        );
        assert!(
            !rows.iter().any(|r| r.2 == "a" && r.0 == "work"),
            "{rows:?}"
        );
        let key = format!("{id}:work");
        let calls: i64 = client
            .query_one(
                "SELECT count(*) FROM external_calls WHERE key = $1",
                &[&key],
            )
            .await?
            .get(0);
        let effects: i64 = client
            .query_one(
                "SELECT count(*) FROM external_effects WHERE key = $1",
                &[&key],
            )
            .await?
            .get(0);
        assert_eq!(
            (calls, effects),
            (2, 1),
            "called by both runners with one key, effect once"
        );
        std::fs::remove_dir_all(&hold)?;
        Ok(())
    }

    #[tokio::test]
    async fn a_thousand_sagas_over_three_runners_killed_at_random_all_end() -> anyhow::Result<()> {
        use rand::Rng;
        let db = TestDb::new().await?;
        db.client().await?.batch_execute(SAGA_EFFECTS_DDL).await?;
        let command = command();
        let names = ["r0", "r1", "r2"];
        let mut runners: Vec<WorkerProcess> = names
            .iter()
            .map(|n| WorkerProcess::spawn(&command, &db.url, n, 0))
            .collect::<Result<_, _>>()?;
        let sagas = Sagas::new(db.store(), &SagaOptions::new())?;
        let definition = definition(&db.url)?;
        // Sagas arrive in ten batches of 100 while the runners are killed.
        let starting = tokio::spawn({
            let pool = db.pool.clone();
            async move {
                for batch in 0..10 {
                    let mut client = pool.get().await?;
                    let tx = client.transaction().await?;
                    for i in 0..100 {
                        let input = CrashInput {
                            fail: (batch * 100 + i) % 5 == 0,
                        };
                        sagas
                            .start_in(&tx, definition.document(), &input, None)
                            .await?;
                    }
                    tx.commit().await?;
                    // The next batch arrives later (load shape, not synchronisation).
                    tokio::time::sleep(Duration::from_millis(400)).await;
                }
                anyhow::Ok(())
            }
        });
        let client = db.client().await?;
        let unfinished = || async {
            let n: i64 = client
                .query_one("SELECT count(*) FROM eventrail.saga_instances WHERE state NOT IN ('completed', 'compensated')", &[])
                .await?
                .get(0);
            anyhow::Ok(n)
        };
        let mut kills = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
        while !starting.is_finished() || unfinished().await? > 0 {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "sagas still unfinished: {}",
                unfinished().await?
            );
            // Chaos: every 0.3–1.2 s one runner is killed and started again.
            let pause = rand::rng().random_range(300..1200);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            if kills < 30 {
                let victim = rand::rng().random_range(0..runners.len());
                runners[victim].kill()?;
                runners[victim] = WorkerProcess::spawn(&command, &db.url, names[victim], 0)?;
                kills += 1;
            }
        }
        starting.await??;
        for r in runners {
            r.stop()?;
        }
        assert!(kills >= 5, "only {kills} kills happened while sagas ran");
        let states: Vec<(String, i64)> = client
            .query("SELECT state, count(*) FROM eventrail.saga_instances GROUP BY state ORDER BY state", &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        println!("{kills} runner kills; sagas by state: {states:?}");
        assert_eq!(
            states,
            [("compensated".into(), 200), ("completed".into(), 800)]
        );
        // No step's effect twice (the primary key of effects forbids it), every compensated
        // saga undid what it did, and every external effect happened once per key.
        let bad: i64 = client
            .query_one(
                "SELECT count(*) FROM eventrail.saga_instances i WHERE
                   (i.state = 'completed' AND (SELECT count(*) FROM effects e WHERE e.saga_id = i.id AND e.what = 'done') <> 3)
                OR (i.state = 'compensated' AND (
                     (SELECT count(*) FROM effects e WHERE e.saga_id = i.id AND e.what = 'done') <> 2
                  OR (SELECT count(*) FROM effects e WHERE e.saga_id = i.id AND e.what = 'undone') <> 2))",
                &[],
            )
            .await?
            .get(0);
        assert_eq!(bad, 0, "sagas whose effects are not exactly once");
        let external: i64 = client
            .query_one("SELECT count(*) FROM external_effects", &[])
            .await?
            .get(0);
        assert_eq!(external, 1000);
        let left: i64 = client
            .query_one("SELECT count(*) FROM eventrail.saga_steps WHERE state IN ('running', 'ready', 'compensating', 'compensate_ready', 'waiting', 'blocked')", &[])
            .await?
            .get(0);
        assert_eq!(left, 0);
        Ok(())
    }
}

mod processes {
    //! Runners in their own OS processes: every one restarted, data definitions split over two.

    use eventrail_saga::{SagaAdmin, SagaDocument, SagaOptions, SagaState, Sagas};
    use integration_tests::fleet::{WorkerCommand, WorkerProcess};
    use integration_tests::saga_process::{
        CrashInput, FULFILMENT, SAGA_EFFECTS_DDL, waits_definition,
    };

    use crate::harness::{TestDb, eventually};

    fn command() -> WorkerCommand {
        WorkerCommand::new(env!("CARGO_BIN_EXE_test-saga-runner"))
            .env("EVENTRAIL_TEST_LEASE_MS", 1000)
    }

    #[tokio::test]
    async fn timers_and_signal_waits_survive_the_restart_of_every_runner_process()
    -> anyhow::Result<()> {
        let db = TestDb::new().await?;
        db.client().await?.batch_execute(SAGA_EFFECTS_DDL).await?;
        let sagas = Sagas::new(db.store(), &SagaOptions::new())?;
        let admin = SagaAdmin::new(db.store(), &SagaOptions::new())?;
        let mut runners = vec![
            WorkerProcess::spawn(&command(), &db.url, "r0", 0)?,
            WorkerProcess::spawn(&command(), &db.url, "r1", 0)?,
        ];
        let id = sagas
            .start(&waits_definition()?, &CrashInput::default(), None)
            .await?;
        eventually(30, "the timer and the signal wait started", || {
            let admin = admin.clone();
            async move {
                let steps = admin.show(id).await?.steps;
                Ok(steps.iter().filter(|s| s.state == "waiting").count() == 2)
            }
        })
        .await?;
        // Every runner dies; the signal arrives while none runs; the timer's time passes.
        for r in &mut runners {
            r.kill()?;
        }
        assert!(
            sagas
                .signal(id, "approved", &serde_json::json!({"by": "ops"}))
                .await?
        );
        assert_eq!(
            sagas.state(id).await?,
            SagaState::Running,
            "nothing moves without a runner"
        );
        let restarted = [
            WorkerProcess::spawn(&command(), &db.url, "r2", 0)?,
            WorkerProcess::spawn(&command(), &db.url, "r3", 0)?,
        ];
        let state = super::settled(&sagas, id).await?;
        assert_eq!(state, SagaState::Completed);
        let finish = admin
            .show(id)
            .await?
            .steps
            .into_iter()
            .find(|s| s.name == "finish")
            .expect("finish");
        assert_eq!(finish.output, Some(serde_json::json!({"by": "ops"})));
        assert!(finish.owner.is_none(), "the lease is released");
        for r in restarted {
            r.stop()?;
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_data_definition_runs_with_step_types_of_two_processes() -> anyhow::Result<()> {
        let db = TestDb::new().await?;
        db.client().await?.batch_execute(SAGA_EFFECTS_DDL).await?;
        let stock = WorkerProcess::spawn(
            &command().env("EVENTRAIL_TEST_STEP_TYPES", "stock.reserve,stock.ship"),
            &db.url,
            "stock",
            0,
        )?;
        let payment = WorkerProcess::spawn(
            &command().env("EVENTRAIL_TEST_STEP_TYPES", "payment.charge"),
            &db.url,
            "payment",
            0,
        )?;
        let sagas = Sagas::new(db.store(), &SagaOptions::new())?;
        let document = SagaDocument::from_json(FULFILMENT)?;
        sagas.register(&document).await?;
        let mut ids = Vec::new();
        let mut client = db.pool.get().await?;
        let tx = client.transaction().await?;
        for i in 0..20 {
            ids.push(
                sagas
                    .start_registered_in(
                        &tx,
                        "fulfilment",
                        1,
                        &serde_json::json!({"order": i}),
                        None,
                    )
                    .await?
                    .id,
            );
        }
        tx.commit().await?;
        let admin = SagaAdmin::new(db.store(), &SagaOptions::new())?;
        for id in ids {
            let state = super::settled(&sagas, id).await?;
            assert_eq!(state, SagaState::Completed);
            let steps = admin.show(id).await?.steps;
            let runner = |n: &str| {
                steps
                    .iter()
                    .find(|s| s.name == n)
                    .and_then(|s| s.output.as_ref())
                    .map(|o| o["runner"].clone())
            };
            assert_eq!(runner("reserve"), Some("stock".into()));
            assert_eq!(runner("charge"), Some("payment".into()));
            assert_eq!(runner("ship"), Some("stock".into()));
        }
        stock.stop()?;
        payment.stop()?;
        Ok(())
    }
}

#[tokio::test]
async fn a_worker_consumer_starts_one_saga_per_matching_event_even_when_redelivered()
-> anyhow::Result<()> {
    use eventrail_core::{AppendRequest, EventData, ExpectedVersion, NewEvent, StreamName};
    use eventrail_saga::SagaStarter;
    use eventrail_worker::{Worker, WorkerAdmin, WorkerOptions};

    let db = TestDb::new().await?;
    effects_table(&db).await?;
    let store = db.store();
    let definition = diamond()?;
    let sagas = Sagas::new(store.clone(), &SagaOptions::new())?;
    let starter = || {
        SagaStarter::new(
            "order-sagas",
            sagas.clone(),
            definition.document().clone(),
            |event| match &event.data {
                EventData::Json(v) if event.event_type == "OrderPlaced" => {
                    let order = v.value().ok()?["order"].clone();
                    Some(serde_json::json!({"id": order, "fail": null, "express": false}))
                }
                _ => None,
            },
        )
    };
    let options = WorkerOptions::new()
        .heartbeat_interval(Duration::from_millis(100))
        .rebalance_interval(Duration::from_millis(100))
        .base_poll_interval(Duration::from_millis(10))
        .max_poll_interval(Duration::from_millis(100));
    let run_worker = || -> anyhow::Result<(CancellationToken, tokio::task::JoinHandle<Result<(), eventrail_worker::WorkerError>>)> {
        // The saga runner runs on the worker runtime, as one of its tasks.
        let runner = SagaRunner::builder(store.clone(), options_for_sagas())
            .definition(&definition)
            .build()?;
        let worker = Worker::builder(store.clone(), db.config())
            .options(options.clone())
            .consumer(starter())
            .task("sagas", runner.into_worker_task())
            .build()?;
        let stop = CancellationToken::new();
        Ok((stop.clone(), tokio::spawn(worker.run(stop))))
    };
    let events: Vec<NewEvent> = (0..10)
        .map(|i| {
            let kind = if i % 2 == 0 {
                "OrderPlaced"
            } else {
                "OrderViewed"
            };
            NewEvent::json(kind, serde_json::json!({"order": i}))
        })
        .collect();
    store
        .append(AppendRequest::new(
            "orders-1".parse::<StreamName>()?,
            ExpectedVersion::Any,
            events,
        ))
        .await?;
    let (stop, task) = run_worker()?;
    let client = db.client().await?;
    let count = || async {
        let n: i64 = client
            .query_one("SELECT count(*) FROM eventrail.saga_instances", &[])
            .await?
            .get(0);
        anyhow::Ok(n)
    };
    eventually(30, "five sagas started", || async {
        Ok(count().await? == 5)
    })
    .await?;
    stop.cancel();
    task.await??;
    // Redelivery: the consumer is rewound and runs again; the keys (event ids) hold.
    WorkerAdmin::new(
        db.pool.clone(),
        "eventrail",
        &eventrail_worker::TableNames::default(),
    )?
    .rewind("order-sagas", 0)
    .await?;
    let (stop, task) = run_worker()?;
    eventually(30, "the rewound consumer caught up", || {
        let client = &client;
        async move {
            let p: Option<i64> = client
                .query_one("SELECT position FROM eventrail.consumer_checkpoints WHERE consumer = 'order-sagas'", &[])
                .await?
                .get(0);
            Ok(p.unwrap_or(0) >= 10)
        }
    })
    .await?;
    // The consumer's checkpoint says nothing of the saga task's progress: wait for the task to
    // run the sagas to their end (it may not have by the time the first worker stopped).
    let states = || async {
        let states: Vec<String> = client
            .query("SELECT state FROM eventrail.saga_instances", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        anyhow::Ok(states)
    };
    eventually(30, "the worker's saga task completed the sagas", || async {
        let states = states().await?;
        Ok(states.len() == 5 && states.iter().all(|s| s == "completed"))
    })
    .await?;
    stop.cancel();
    task.await??;
    assert_eq!(
        count().await?,
        5,
        "a redelivered event starts no second saga"
    );
    let states = states().await?;
    assert!(
        states.len() == 5 && states.iter().all(|s| s == "completed"),
        "run by the worker's saga task: {states:?}"
    );
    let runners: i64 = client
        .query_one("SELECT count(*) FROM eventrail.saga_runners", &[])
        .await?
        .get(0);
    assert_eq!(runners, 0, "the task stopped with the worker");
    Ok(())
}
