//! Two workers share three consumers. One keeps an `order_totals` projection inside each batch
//! transaction (exactly-once effect); the leader assigns consumers over the live workers, and when
//! one worker stops the other takes over without losing or repeating anything.
//!
//! Run it with `cargo run -p example-worker` (it finds or starts a PostgreSQL; set
//! `DATABASE_URL` to use yours). It works in a database of its own, `eventrail_worker_example`.

use std::time::Duration;

use eventrail::postgres::PgConnectOptions;
use eventrail::postgres::PgEventStore;
use eventrail::postgres::tokio_postgres::Transaction;
use eventrail::worker::{
    CancellationToken, Consumer, ConsumerScope, TableNames, Worker, WorkerAdmin, WorkerOptions,
    wait_for,
};
use eventrail::{
    AppendRequest, BoxError, EventData, EventStore, ExpectedVersion, NewEvent, RecordedEvent,
    StreamName,
};

/// Sums order amounts per customer, in the batch transaction.
#[derive(Clone)]
struct OrderTotals;

impl Consumer for OrderTotals {
    fn name(&self) -> &str {
        "order-totals"
    }

    fn scope(&self) -> ConsumerScope {
        ConsumerScope::all()
            .categories(["order"])
            .event_types(["OrderPlaced"])
    }

    async fn handle(&self, tx: &Transaction<'_>, event: &RecordedEvent) -> Result<(), BoxError> {
        let EventData::Json(data) = &event.data else {
            return Err("expected JSON".into());
        };
        let data = data.value()?;
        let customer = data["customer"].as_str().ok_or("customer missing")?;
        let amount = data["amount"].as_i64().ok_or("amount missing")?;
        tx.execute(
            "INSERT INTO order_totals (customer, total, orders) VALUES ($1, $2, 1)
             ON CONFLICT (customer) DO UPDATE SET total = order_totals.total + $2, orders = order_totals.orders + 1",
            &[&customer, &amount],
        )
        .await?;
        Ok(())
    }
}

/// Counts events per type (a second and third consumer, to have something to share).
#[derive(Clone)]
struct Counter(&'static str);

impl Consumer for Counter {
    fn name(&self) -> &str {
        self.0
    }

    async fn handle(&self, tx: &Transaction<'_>, event: &RecordedEvent) -> Result<(), BoxError> {
        tx.execute(
            "INSERT INTO type_counts (consumer, event_type, n) VALUES ($1, $2, 1)
             ON CONFLICT (consumer, event_type) DO UPDATE SET n = type_counts.n + 1",
            &[&self.0, &event.event_type],
        )
        .await?;
        Ok(())
    }
}

fn start(
    store: &PgEventStore,
    url: &str,
    name: &str,
) -> anyhow::Result<(
    CancellationToken,
    tokio::task::JoinHandle<Result<(), eventrail::worker::WorkerError>>,
)> {
    let worker = Worker::builder(store.clone(), url.parse::<PgConnectOptions>()?)
        .options(WorkerOptions::new().name(name))
        .consumer(OrderTotals)
        .consumer(Counter("type-counter"))
        .consumer(Counter("type-counter-2"))
        .build()?;
    let stop = CancellationToken::new();
    Ok((stop.clone(), tokio::spawn(worker.run(stop))))
}

async fn show(
    admin: &WorkerAdmin,
    names: &[(String, &str)],
    client: &eventrail::postgres::tokio_postgres::Client,
) -> anyhow::Result<()> {
    let status = admin.status().await?;
    println!("  assignments:");
    for c in &status.consumers {
        let worker = c
            .worker_id
            .and_then(|id| {
                names
                    .iter()
                    .find(|(w, _)| *w == id.to_string())
                    .map(|(_, n)| *n)
            })
            .unwrap_or("-");
        println!(
            "    {:<15} -> {worker:<8} checkpoint {}",
            c.consumer, c.position
        );
    }
    println!("  order_totals:");
    for row in client
        .query(
            "SELECT customer, total, orders FROM order_totals ORDER BY customer",
            &[],
        )
        .await?
    {
        println!(
            "    {:<6} total {:>5} over {} orders",
            row.get::<_, String>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2)
        );
    }
    Ok(())
}

async fn place_orders(store: &PgEventStore, from: usize, to: usize) -> anyhow::Result<u64> {
    let mut last = 0;
    for i in from..to {
        let customer = ["ada", "bob", "cy"][i % 3];
        let stream: StreamName = format!("order-{i}").parse()?;
        let events = vec![
            NewEvent::json(
                "OrderPlaced",
                serde_json::json!({ "customer": customer, "amount": 10 * (i as i64 % 5 + 1) }),
            ),
            NewEvent::json("OrderShipped", serde_json::json!({})),
        ];
        last = store
            .append(AppendRequest::new(
                stream,
                ExpectedVersion::NoStream,
                events,
            ))
            .await?
            .last_position();
    }
    Ok(last)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin_url = eventrail_devdb::database_url().await?;
    let url = eventrail_devdb::recreate_database(&admin_url, "eventrail_worker_example").await?;

    let store = PgEventStore::connect(&url)?;
    let (mut client, connection) = url
        .parse::<PgConnectOptions>()?
        .connect("example-worker")
        .await?;
    tokio::spawn(connection);
    eventrail::worker::worker_migrator("eventrail", &TableNames::default())?
        .run(&mut client)
        .await?;
    client
        .batch_execute(
            "CREATE TABLE order_totals (customer text PRIMARY KEY, total bigint NOT NULL, orders bigint NOT NULL);
             CREATE TABLE type_counts (consumer text, event_type text, n bigint NOT NULL, PRIMARY KEY (consumer, event_type));",
        )
        .await?;
    let admin = WorkerAdmin::new(store.pool().clone(), "eventrail", &TableNames::default())?;

    let (stop_a, a) = start(&store, &url, "alpha")?;
    let (stop_b, b) = start(&store, &url, "beta")?;
    let last = place_orders(&store, 0, 30).await?;
    let config: PgConnectOptions = url.parse()?;
    let tables = TableNames::default();
    let wait = |position| {
        wait_for(
            &config,
            "eventrail",
            &tables,
            "order-totals",
            position,
            Duration::from_secs(30),
        )
    };
    wait(last).await?;
    // Let the leader finish spreading the consumers over both workers (it rebalances every
    // 500 ms by default).
    for _ in 0..100 {
        let status = admin.status().await?;
        let spread = status
            .consumers
            .iter()
            .map(|c| c.worker_id)
            .collect::<std::collections::HashSet<_>>()
            .len()
            == 2;
        if spread
            && status
                .consumers
                .iter()
                .all(|c| c.worker_id.is_some() && c.position >= last)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let names: Vec<(String, &str)> = admin
        .status()
        .await?
        .workers
        .iter()
        .map(|w| {
            (
                w.id.to_string(),
                if w.name == "alpha" { "alpha" } else { "beta" },
            )
        })
        .collect();
    println!("30 orders placed, two workers running:");
    show(&admin, &names, &client).await?;

    println!("\nalpha stops gracefully; beta takes over and 30 more orders arrive:");
    stop_a.cancel();
    a.await??;
    let last = place_orders(&store, 30, 60).await?;
    wait(last).await?;
    for _ in 0..100 {
        if admin
            .status()
            .await?
            .consumers
            .iter()
            .all(|c| c.position >= last)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    show(&admin, &names, &client).await?;

    let orders: i64 = client
        .query_one("SELECT sum(orders)::bigint FROM order_totals", &[])
        .await?
        .get(0);
    println!("\nprojection counted {orders} orders (60 placed): exactly once through the handover");
    stop_b.cancel();
    b.await??;
    anyhow::ensure!(orders == 60, "the projection should count 60 orders");
    Ok(())
}
