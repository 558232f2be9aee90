//! An order is placed: its event and an `orders.placed` message commit in one transaction; a
//! relay delivers the message to NATS JetStream with its id as `Nats-Msg-Id`, and a second
//! transaction that rolls back leaves neither event nor message.
//!
//! Run it with `cargo run -p example-outbox` (it needs NATS with JetStream on 127.0.0.1:4222 or
//! `NATS_URL`, and finds or starts a PostgreSQL; set `DATABASE_URL` to use yours). It works in
//! a database of its own, `eventrail_outbox_example`, and a stream of its own, `OUTBOX_EXAMPLE`.

use std::time::Duration;

use anyhow::Context;
use eventrail::outbox::async_nats::{self, jetstream};
use eventrail::outbox::{
    CancellationToken, NatsSink, NewMessage, Outbox, OutboxAdmin, OutboxOptions, OutboxTables,
    Relay, outbox_migrator,
};
use eventrail::postgres::PgConnectOptions;
use eventrail::postgres::PgEventStore;
use eventrail::{AppendRequest, ExpectedVersion, NewEvent, StreamName};
use serde_json::json;

const STREAM: &str = "OUTBOX_EXAMPLE";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin_url = eventrail_devdb::database_url().await?;
    let url = eventrail_devdb::recreate_database(&admin_url, "eventrail_outbox_example").await?;
    // TLS, timeouts and application_name from the URL (`sslmode`, `connect_timeout`, ...).
    let connect: PgConnectOptions = url.parse()?;
    let (mut client, connection) = connect.connect("example-outbox").await?;
    tokio::spawn(connection);
    let applied = outbox_migrator("eventrail", &OutboxTables::default())?
        .run(&mut client)
        .await?;
    println!("applied migrations {applied:?}");

    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let nats = async_nats::connect(&nats_url)
        .await
        .with_context(|| format!("connecting to NATS at {nats_url}"))?;
    let sink = NatsSink::new(nats).subject_prefix("example.");
    let _ = sink.jetstream().delete_stream(STREAM).await;
    let mut stream = sink
        .jetstream()
        .create_stream(jetstream::stream::Config {
            name: STREAM.into(),
            subjects: vec!["example.>".into()],
            ..Default::default()
        })
        .await?;

    // The append and the message commit together.
    let store = PgEventStore::connect(&url)?;
    let options = OutboxOptions::new();
    let outbox = Outbox::new(&options)?;
    let order: StreamName = "order-42".parse()?;
    let placed = json!({ "order": 42, "customer": "ada", "total": 1250 });
    let (outcome, ids) = outbox
        .append_and_enqueue(
            &store,
            AppendRequest::new(
                order.clone(),
                ExpectedVersion::NoStream,
                vec![NewEvent::json("OrderPlaced", placed.clone())],
            ),
            vec![NewMessage::json(
                "orders.placed",
                order.to_string(),
                &placed,
            )],
        )
        .await?;
    println!(
        "appended {order} v{} at position {} with outbox message {}",
        outcome.stream_version,
        outcome.last_position(),
        ids[0]
    );

    // A producer that rolls back leaves nothing behind.
    {
        let mut client = store.pool().get().await?;
        let tx = client.transaction().await?;
        let cancelled: StreamName = "order-43".parse()?;
        store
            .append_in(
                &tx,
                AppendRequest::new(
                    cancelled.clone(),
                    ExpectedVersion::NoStream,
                    vec![NewEvent::json("OrderPlaced", json!({ "order": 43 }))],
                ),
            )
            .await?;
        outbox
            .enqueue(
                &tx,
                NewMessage::json(
                    "orders.placed",
                    cancelled.to_string(),
                    &json!({ "order": 43 }),
                ),
            )
            .await?;
        tx.rollback().await?;
    }

    // The relay delivers what committed.
    let relay = Relay::new(store.pool().clone(), sink.clone(), options.clone())?.listen(&connect);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { relay.run(shutdown).await }
    });
    let admin = OutboxAdmin::new(store.pool().clone(), &options)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while admin.status().await?.pending > 0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the relay did not deliver"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    running.await??;

    let messages = stream.info().await?.state.messages;
    println!("stream {STREAM} holds {messages} message(s)");
    for seq in 1..=messages {
        let m = stream.get_raw_message(seq).await?;
        let id = m
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        println!(
            "  {} Nats-Msg-Id={id} {}",
            m.subject,
            String::from_utf8_lossy(&m.payload)
        );
    }
    anyhow::ensure!(messages == 1, "exactly the committed message");
    sink.jetstream().delete_stream(STREAM).await?;
    Ok(())
}
