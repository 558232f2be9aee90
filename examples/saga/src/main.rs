//! Order processing as a saga: reserve stock, charge the payment, ship. The first order's
//! payment goes through and it ships; the second order's card is declined, so its stock
//! reservation is compensated. Every change of each saga is printed from its event stream.
//!
//! Run it with `cargo run -p example-saga` (it finds or starts a PostgreSQL; set `DATABASE_URL`
//! to use yours). It works in a database of its own, `eventrail_saga_example`.

use std::time::Duration;

use eventrail::postgres::{PgConnectOptions, PgEventStore};
use eventrail::saga::{
    SagaDefinition, SagaOptions, SagaRunner, SagaState, SagaTables, Sagas, Step, StepContext,
    saga_migrator, saga_stream,
};
use eventrail::worker::CancellationToken;
use eventrail::{BoxError, EventData, EventStore, ReadStreamOptions, RetryPolicy};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: i64,
    sku: String,
    quantity: i32,
    card: String,
}

/// Reserves stock in the step's transaction: the reservation commits with the step.
fn reserve<'a>(ctx: &'a StepContext<'a>) -> BoxFuture<'a, Result<i32, BoxError>> {
    Box::pin(async move {
        let order: Order = ctx.input()?;
        let left: i32 = ctx
            .transaction()
            .query_one(
                "UPDATE stock SET available = available - $2 WHERE sku = $1 AND available >= $2 RETURNING available",
                &[&order.sku, &order.quantity],
            )
            .await?
            .get(0);
        Ok(left)
    })
}

/// Gives the stock back.
fn release<'a>(ctx: &'a StepContext<'a>) -> BoxFuture<'a, Result<(), BoxError>> {
    Box::pin(async move {
        let order: Order = ctx.input()?;
        ctx.transaction()
            .execute(
                "UPDATE stock SET available = available + $2 WHERE sku = $1",
                &[&order.sku, &order.quantity],
            )
            .await?;
        Ok(())
    })
}

/// The payment provider, called with the step's idempotency key.
fn charge<'a>(ctx: &'a StepContext<'a>) -> BoxFuture<'a, Result<String, BoxError>> {
    Box::pin(async move {
        let order: Order = ctx.input()?;
        if order.card == "declined" {
            return Err(format!("card declined for order {}", order.id).into());
        }
        Ok(format!("payment {}", ctx.idempotency_key()))
    })
}

fn ship<'a>(ctx: &'a StepContext<'a>) -> BoxFuture<'a, Result<String, BoxError>> {
    Box::pin(async move {
        let order: Order = ctx.input()?;
        Ok(format!("parcel for order {}", order.id))
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin_url = eventrail_devdb::database_url().await?;
    let url = eventrail_devdb::recreate_database(&admin_url, "eventrail_saga_example").await?;
    let connect: PgConnectOptions = url.parse()?;
    let (mut client, connection) = connect.connect("example-saga").await?;
    tokio::spawn(connection);
    saga_migrator("eventrail", &SagaTables::default())?
        .run(&mut client)
        .await?;
    client
        .batch_execute(
            "CREATE TABLE stock (sku text PRIMARY KEY, available int NOT NULL CHECK (available >= 0));
             INSERT INTO stock VALUES ('book', 10)",
        )
        .await?;

    let definition = SagaDefinition::<Order>::builder("order", 1)
        .step(Step::compensatable("reserve-stock", reserve, release))
        .step(
            Step::pivot("charge-payment", charge)
                .after(["reserve-stock"])
                .retry(RetryPolicy::new(
                    2,
                    Duration::from_millis(50),
                    Duration::from_millis(100),
                )),
        )
        .step(Step::retriable("ship", ship).after(["charge-payment"]))
        .build()?;

    let store = PgEventStore::connect(&url)?;
    let runner = SagaRunner::builder(store.clone(), SagaOptions::new())
        .definition(&definition)
        .listen(connect.clone())
        .build()?;
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let stop = stop.clone();
        async move { runner.run(stop).await }
    });

    let sagas = Sagas::new(store.clone(), &SagaOptions::new())?;
    for (id, card) in [(1, "ok"), (2, "declined")] {
        let order = Order {
            id,
            sku: "book".into(),
            quantity: 3,
            card: card.into(),
        };
        let saga = sagas
            .start(&definition, &order, Some(&format!("order-{id}")))
            .await?;
        let state = sagas.wait_settled(saga, Duration::from_millis(20)).await?;
        println!("\norder {id} (card {card}): saga {saga}");
        for event in store
            .read_stream(&saga_stream(saga), ReadStreamOptions::default())
            .await?
        {
            let EventData::Json(data) = &event.data else {
                continue;
            };
            let data = data.value()?;
            let step = data["step"]
                .as_str()
                .map(|s| format!(" {s}"))
                .unwrap_or_default();
            let detail = data["error"]
                .as_str()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            println!(
                "  {:>2}. {}{step}{detail}",
                event.stream_version, event.event_type
            );
        }
        let available: i32 = client
            .query_one("SELECT available FROM stock WHERE sku = 'book'", &[])
            .await?
            .get(0);
        println!("  => {state}; books available: {available}");
        let expected = if card == "ok" {
            (SagaState::Completed, 7)
        } else {
            (SagaState::Compensated, 7)
        };
        anyhow::ensure!((state, available) == expected, "unexpected outcome");
    }
    stop.cancel();
    running.await??;
    Ok(())
}
