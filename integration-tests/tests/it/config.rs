//! One configuration handle for every component: a JSON file naming a schema, renamed worker and
//! outbox tables in another schema, and the database, used by the CLI, the store, a worker,
//! `wait_for`, the outbox, the relay and both admin types.

use std::time::Duration;

use eventrail_core::{AppendRequest, EventStore, ExpectedVersion, NewEvent};
use eventrail_outbox::{InMemorySink, NewMessage, Outbox, OutboxAdmin, OutboxOptions, Relay};
use eventrail_store_postgres::{EventrailConfig, PgEventStore};
use eventrail_worker::{Worker, WorkerAdmin, WorkerOptions, wait_for_config};
use integration_tests::Recorder;
use tokio_util::sync::CancellationToken;

use crate::cli::eventrail;
use crate::harness::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_configuration_drives_every_component_on_renamed_tables() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    db.client()
        .await?
        .batch_execute(integration_tests::HANDLED_DDL)
        .await?;
    let file = std::env::temp_dir().join(format!("eventrail-{}.json", uuid::Uuid::now_v7()));
    std::fs::write(
        &file,
        serde_json::json!({
            "database_url": db.url,
            "schema": "cfg_a",
            "worker_tables": { "consumer_checkpoints": "cfg_ops.checkpoints", "worker_nodes": "cfg_ops.nodes" },
            "outbox_tables": { "outbox": "cfg_ops.messages" }
        })
        .to_string(),
    )?;
    let path = file.display().to_string();
    // The CLI takes everything from the file, the database included.
    let out = eventrail(&["--config", &path, "migrate"]).await?;
    assert!(out.contains("to schema cfg_a"), "{out}");

    let config = EventrailConfig::from_json_file(&file)?;
    let pool = config
        .connect_options()
        .expect("the file names the database")
        .pool("test")?;
    let store = PgEventStore::from_config(pool.clone(), &config)?;
    assert_eq!(store.notify_channel(), Some("cfg_a_events"));
    let worker = Worker::builder(
        store.clone(),
        config.connect_options().cloned().expect("url"),
    )
    .options(
        WorkerOptions::new()
            .heartbeat_interval(Duration::from_millis(100))
            .rebalance_interval(Duration::from_millis(100)),
    )
    .consumer(Recorder::new("configured", "w"))
    .build()?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker.run(stop.clone()));
    let last = store
        .append(AppendRequest::new(
            "thing-1".parse()?,
            ExpectedVersion::Any,
            vec![NewEvent::json("Made", serde_json::json!({}))],
        ))
        .await?
        .last_position();
    let reached = wait_for_config(
        config.connect_options().cloned().expect("url"),
        &config,
        "configured",
        last,
        Duration::from_secs(20),
    )
    .await?;
    assert!(reached >= last);
    let client = db.client().await?;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM cfg_ops.checkpoints", &[])
        .await?
        .get(0);
    assert_eq!(rows, 1, "the checkpoint lives in the configured table");
    let status = WorkerAdmin::from_config(pool.clone(), &config)?
        .status()
        .await?;
    assert_eq!(status.consumers.len(), 1);
    let out = eventrail(&["--config", &path, "status"]).await?;
    assert!(out.contains("configured"), "{out}");
    stop.cancel();
    task.await??;

    // The outbox and its relay on the configured table.
    let outbox = Outbox::new(&OutboxOptions::from_config(&config))?;
    let mut c = pool.get().await?;
    let tx = c.transaction().await?;
    outbox
        .enqueue(&tx, NewMessage::new("orders", "k", b"hello".to_vec()))
        .await?;
    tx.commit().await?;
    let sink = InMemorySink::new();
    Relay::new(
        pool.clone(),
        sink.clone(),
        OutboxOptions::from_config(&config),
    )?
    .relay_once()
    .await?;
    assert_eq!(sink.messages().len(), 1);
    let in_table: i64 = client
        .query_one("SELECT count(*) FROM cfg_ops.messages", &[])
        .await?
        .get(0);
    assert_eq!(in_table, 1, "kept for the retention");
    let outbox_status = OutboxAdmin::from_config(pool, &config)?.status().await?;
    assert_eq!(outbox_status.pending, 0, "{outbox_status:?}");
    assert_eq!(outbox_status.sent, 1, "{outbox_status:?}");
    let out = eventrail(&["--config", &path, "outbox", "status"]).await?;
    assert!(!out.is_empty());

    // A bad file is refused with its reason, before anything runs.
    std::fs::write(&file, r#"{ "schema": "Bad Schema" }"#)?;
    let refused = eventrail(&["--config", &path, "status"]).await.unwrap_err();
    assert!(refused.to_string().contains("schema"), "{refused}");
    let _ = std::fs::remove_file(&file);
    Ok(())
}
