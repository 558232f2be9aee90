//! Remote saga steps between two services in separate schemas, over real brokers: the orders
//! service's saga sends a command through its outbox, the payments service takes it through
//! its inbox with a `Participant` and replies through its own outbox. A refusal and a reply
//! that never comes (the deadline) both compensate the saga.

use std::sync::Arc;
use std::time::Duration;

use eventrail_outbox::{Inbox, Outbox, OutboxOptions, OutboxTables, Relay, Sink, outbox_migrator};
use eventrail_saga::{
    Participant, RemoteCommand, SagaAdmin, SagaDefinition, SagaOptions, SagaRunner, SagaState,
    Sagas, Step, send_command,
};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::harness::TestDb;
use crate::outbox::{fast, start};
use crate::saga::settled;
use integration_tests::saga_participant::charge;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Checkout {
    amount: i64,
}

/// Fetches the bodies waiting at a destination (and acks them).
type Receive =
    Arc<dyn Fn(String) -> BoxFuture<'static, anyhow::Result<Vec<Vec<u8>>>> + Send + Sync>;

/// Where the payments service runs.
enum Payments {
    /// In this process, consuming through `receive`.
    Here,
    /// In its own OS process (`test-saga-participant`), consuming from JetStream itself.
    Process,
}

async fn scenario<S: Sink + Clone>(
    sink: S,
    prefix: &str,
    receive: Receive,
    service: Payments,
) -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let mut client = db.pool.get().await?;
    outbox_migrator("payments", &OutboxTables::default())?
        .run(&mut client)
        .await?;
    client
        .batch_execute(
            "CREATE TABLE payments.charges (saga_id uuid PRIMARY KEY, amount bigint);
             CREATE TABLE reservations (saga_id uuid PRIMARY KEY, released boolean NOT NULL DEFAULT false)",
        )
        .await?;
    drop(client);
    let commands = format!("{prefix}.payments.commands");
    let replies = format!("{prefix}.orders.replies");

    // The orders service: the saga, its outbox and relay.
    let orders_outbox = Outbox::new(&OutboxOptions::new())?;
    let definition = SagaDefinition::<Checkout>::builder("checkout", 1)
        .step(Step::compensatable(
            "reserve",
            |ctx| {
                Box::pin(async move {
                    ctx.transaction()
                        .execute(
                            "INSERT INTO reservations (saga_id) VALUES ($1)",
                            &[&ctx.saga_id()],
                        )
                        .await?;
                    Ok(())
                })
            },
            |ctx| {
                Box::pin(async move {
                    ctx.transaction()
                        .execute(
                            "UPDATE reservations SET released = true WHERE saga_id = $1",
                            &[&ctx.saga_id()],
                        )
                        .await?;
                    Ok(())
                })
            },
        ))
        .step(
            Step::action("pay", {
                let (outbox, commands, replies) =
                    (orders_outbox.clone(), commands.clone(), replies.clone());
                move |ctx| {
                    let (outbox, commands, replies) =
                        (outbox.clone(), commands.clone(), replies.clone());
                    Box::pin(async move {
                        let amount = ctx.input::<Checkout>()?.amount;
                        let id = send_command(
                            ctx,
                            &outbox,
                            &commands,
                            "charge",
                            serde_json::json!({"amount": amount}),
                            &replies,
                            Duration::from_secs(3),
                        )
                        .await?;
                        Ok(id)
                    })
                }
            })
            .after(["reserve"]),
        )
        .step(Step::action("confirm", |_ctx| Box::pin(async move { Ok(()) })).after(["pay"]))
        .build()?;
    let store = db.store();
    let stop = CancellationToken::new();
    let runner = SagaRunner::builder(
        store.clone(),
        SagaOptions::new().poll_interval(Duration::from_millis(50)),
    )
    .definition(&definition)
    .build()?;
    let runner_task = tokio::spawn({
        let stop = stop.clone();
        async move { runner.run(stop).await }
    });
    let orders_relay = start(Relay::new(db.pool.clone(), sink.clone(), fast())?);

    // The payments service: inbox, outbox and relay in its own schema.
    let payments = OutboxOptions::new().schema("payments");
    let participant = Participant::new("payments", Inbox::new(&payments)?, Outbox::new(&payments)?);
    let here = matches!(service, Payments::Here);
    let payments_relay = if here {
        Some(start(Relay::new(
            db.pool.clone(),
            sink.clone(),
            fast().schema("payments"),
        )?))
    } else {
        None
    };
    let payments_process = if here {
        None
    } else {
        let command = integration_tests::fleet::WorkerCommand::new(env!(
            "CARGO_BIN_EXE_test-saga-participant"
        ))
        .env("EVENTRAIL_TEST_SUBJECT_PREFIX", prefix);
        Some(integration_tests::fleet::WorkerProcess::spawn(
            &command, &db.url, "payments", 0,
        )?)
    };

    // The brokers' consumers: commands to the participant (except those for amount 999, which
    // the payments service never answers), replies to the sagas.
    let sagas = Sagas::new(store.clone(), &SagaOptions::new())?;
    let handled = Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let consumers = tokio::spawn({
        let (pool, sagas, stop, handled) = (
            db.pool.clone(),
            sagas.clone(),
            stop.clone(),
            Arc::clone(&handled),
        );
        let (commands, replies, participant, receive) = (
            commands.clone(),
            replies.clone(),
            participant.clone(),
            Arc::clone(&receive),
        );
        async move {
            while !stop.is_cancelled() {
                let commands = if here {
                    receive(commands.clone()).await?
                } else {
                    Vec::new() // the payments process consumes them itself
                };
                for body in commands {
                    let command: RemoteCommand = serde_json::from_slice(&body)?;
                    if command.payload["amount"] == 999 {
                        continue;
                    }
                    participant.handle(&pool, &body, charge).await?;
                    handled.lock().expect("lock").push(body);
                }
                for body in receive(replies.clone()).await? {
                    sagas.receive_reply(&body).await?;
                }
                // The consumers poll the brokers.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(())
        }
    });

    let paid = sagas
        .start(&definition, &Checkout { amount: 50 }, None)
        .await?;
    let declined = sagas
        .start(&definition, &Checkout { amount: 500 }, None)
        .await?;
    let unanswered = sagas
        .start(&definition, &Checkout { amount: 999 }, None)
        .await?;
    assert_eq!(settled(&sagas, paid).await?, SagaState::Completed);
    assert_eq!(settled(&sagas, declined).await?, SagaState::Compensated);
    assert_eq!(settled(&sagas, unanswered).await?, SagaState::Compensated);

    // The command redelivered: the inbox takes it once.
    if here {
        let again = handled
            .lock()
            .expect("lock")
            .first()
            .cloned()
            .expect("a handled command");
        assert!(!participant.handle(&db.pool, &again, charge).await?);
    }

    stop.cancel();
    runner_task.await??;
    consumers.await??;
    orders_relay.stop().await?;
    if let Some(relay) = payments_relay {
        relay.stop().await?;
    }
    if let Some(process) = payments_process {
        process.stop()?;
    }

    let client = db.client().await?;
    let charges: Vec<(Uuid, i64)> = client
        .query(
            "SELECT saga_id, amount FROM payments.charges ORDER BY amount",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        charges,
        [(paid, 50)],
        "the declined charge rolled back with the refusal, the paid one once"
    );
    let released: Vec<(Uuid, bool)> = client
        .query("SELECT saga_id, released FROM reservations", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (id, r) in &released {
        assert_eq!(*r, *id != paid, "reservation of {id}");
    }
    assert_eq!(released.len(), 3);
    let admin = SagaAdmin::new(store, &SagaOptions::new())?;
    let error = |id| {
        let admin = admin.clone();
        async move {
            let steps = admin.show(id).await?.steps;
            anyhow::Ok(
                steps
                    .into_iter()
                    .find(|s| s.name == "pay")
                    .and_then(|s| s.last_error)
                    .unwrap_or_default(),
            )
        }
    };
    assert!(error(declined).await?.contains("card declined"));
    assert!(error(unanswered).await?.contains("before the deadline"));
    Ok(())
}

#[tokio::test]
async fn remote_steps_over_nats_jetstream_complete_refuse_and_time_out() -> anyhow::Result<()> {
    over_nats(Payments::Here).await
}

/// The payments service in its own process, with its own relay and JetStream consumer.
#[tokio::test]
async fn remote_steps_between_two_processes_over_nats_jetstream() -> anyhow::Result<()> {
    over_nats(Payments::Process).await
}

async fn over_nats(payments: Payments) -> anyhow::Result<()> {
    use eventrail_outbox::NatsSink;
    use futures::StreamExt;

    let client = async_nats::connect(crate::outbox::nats_url()).await?;
    let sink = NatsSink::new(client);
    let prefix = format!("sagaremote{}", Uuid::now_v7().simple());
    let stream = sink
        .jetstream()
        .create_stream(async_nats::jetstream::stream::Config {
            name: prefix.clone(),
            subjects: vec![format!("{prefix}.>")],
            ..Default::default()
        })
        .await?;
    let stream = Arc::new(stream);
    let receive: Receive = Arc::new(move |subject: String| {
        let stream = Arc::clone(&stream);
        Box::pin(async move {
            let consumer = stream
                .get_or_create_consumer(
                    &subject.replace('.', "_"),
                    async_nats::jetstream::consumer::pull::Config {
                        durable_name: Some(subject.replace('.', "_")),
                        filter_subject: subject.clone(),
                        ..Default::default()
                    },
                )
                .await?;
            let mut batch = consumer
                .fetch()
                .max_messages(50)
                .expires(Duration::from_millis(50))
                .messages()
                .await?;
            let mut bodies = Vec::new();
            while let Some(m) = batch.next().await {
                let m = m.map_err(|e| anyhow::anyhow!(e))?;
                bodies.push(m.payload.to_vec());
                m.ack().await.map_err(|e| anyhow::anyhow!(e))?;
            }
            Ok(bodies)
        })
    });
    scenario(sink.clone(), &prefix, receive, payments).await?;
    sink.jetstream().delete_stream(&prefix).await?;
    Ok(())
}

#[tokio::test]
async fn remote_steps_over_rabbitmq_complete_refuse_and_time_out() -> anyhow::Result<()> {
    use eventrail_outbox::AmqpSink;
    use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
    use lapin::types::FieldTable;

    let sink = AmqpSink::connect(&crate::outbox::amqp_url(), "").await?;
    let prefix = format!("sagaremote{}", Uuid::now_v7().simple());
    let queues = [
        format!("{prefix}.payments.commands"),
        format!("{prefix}.orders.replies"),
    ];
    for q in &queues {
        sink.channel()
            .queue_declare(
                q.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await?;
    }
    let channel = sink.channel();
    let receive: Receive = Arc::new(move |queue: String| {
        let channel = channel.clone();
        Box::pin(async move {
            let mut bodies = Vec::new();
            while let Some(m) = channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await?
            {
                bodies.push(m.delivery.data.clone());
            }
            Ok(bodies)
        })
    });
    scenario(sink.clone(), &prefix, receive, Payments::Here).await?;
    for q in &queues {
        sink.channel()
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    Ok(())
}
