//! The payments service of the remote-step tests, in its own OS process: `<program>
//! <database-url> <name> <unused>`, with `EVENTRAIL_TEST_SUBJECT_PREFIX` naming the JetStream
//! stream and subject prefix the test created, and `NATS_URL` (default 127.0.0.1:4222). Prints
//! `worker <id>` once it consumes, and runs until killed or stdin closes.
//!
//! It takes `<prefix>.payments.commands` from JetStream with a [`Participant`] (inbox, handler,
//! reply through its outbox in schema `payments`) and relays its outbox to NATS. Commands for
//! an amount of 999 are never answered (the saga's deadline passes).

use std::time::Duration;

use anyhow::Context;
use eventrail_core::BoxError;
use eventrail_outbox::{Inbox, NatsSink, Outbox, OutboxOptions, Relay, Wakeup};
use eventrail_saga::{Participant, RemoteCommand};
use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::io::AsyncReadExt;
use tokio_postgres::Transaction;
use tokio_util::sync::CancellationToken;

/// The payments service's handler: writes the charge in the participant's transaction, and
/// refuses amounts over 100 (the write is then undone with the refusal).
pub fn charge<'a>(
    tx: &'a Transaction<'a>,
    command: &'a RemoteCommand,
) -> BoxFuture<'a, Result<serde_json::Value, BoxError>> {
    Box::pin(async move {
        let amount = command.payload["amount"].as_i64().unwrap_or(0);
        tx.execute(
            "INSERT INTO payments.charges (saga_id, amount) VALUES ($1, $2)",
            &[&command.saga_id, &amount],
        )
        .await?;
        if amount > 100 {
            return Err("card declined".into());
        }
        Ok(serde_json::json!({"charged": amount}))
    })
}

/// Runs the process (see the module docs).
///
/// # Errors
/// Bad arguments, an unreachable database or broker.
pub async fn run(mut args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let url = args.next().context("usage: <database-url> <name>")?;
    let prefix =
        std::env::var("EVENTRAIL_TEST_SUBJECT_PREFIX").context("EVENTRAIL_TEST_SUBJECT_PREFIX")?;
    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let pool = eventrail_devdb::pool(&url, 8)?;
    let options = OutboxOptions::new()
        .schema("payments")
        .poll_interval(Duration::from_millis(20))
        .wakeup(Wakeup::Poll);
    let participant = Participant::new("payments", Inbox::new(&options)?, Outbox::new(&options)?);
    let client = async_nats::connect(&nats_url).await?;
    let sink = NatsSink::new(client);
    let stream = sink.jetstream().get_stream(&prefix).await?;
    let subject = format!("{prefix}.payments.commands");
    let consumer = stream
        .get_or_create_consumer(
            "payments_process",
            async_nats::jetstream::consumer::pull::Config {
                durable_name: Some("payments_process".into()),
                filter_subject: subject,
                ..Default::default()
            },
        )
        .await?;
    let stop = CancellationToken::new();
    let relay = Relay::new(pool.clone(), sink, options)?;
    let relay_task = tokio::spawn({
        let stop = stop.clone();
        async move { relay.run(stop).await }
    });
    let stopper = stop.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        let mut stdin = tokio::io::stdin();
        while stdin.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        stopper.cancel();
    });
    println!("worker {}", uuid::Uuid::now_v7());
    let mut messages = consumer.messages().await?;
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => break,
            next = messages.next() => next,
        };
        let Some(message) = next else { break };
        let message = message.map_err(|e| anyhow::anyhow!(e))?;
        let command: RemoteCommand = serde_json::from_slice(&message.payload)?;
        if command.payload["amount"] != 999 {
            participant.handle(&pool, &message.payload, charge).await?;
        }
        message.ack().await.map_err(|e| anyhow::anyhow!(e))?;
    }
    relay_task.await??;
    Ok(())
}
