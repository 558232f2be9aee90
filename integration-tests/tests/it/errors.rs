//! Errors keep their cause: the SQLSTATE and constraint of a database error, whether it is worth
//! retrying, and typed errors for an operator's mistakes.

use std::time::Duration;

use eventrail_core::{
    AppendRequest, BoxError, EventStore, ExpectedVersion, NewEvent, RecordedEvent, StoreError,
};
use eventrail_store_postgres::{PgEventStore, PgStoreOptions};
use eventrail_worker::{Consumer, RetryPolicy, Worker, WorkerError, WorkerOptions};
use tokio_postgres::Transaction;

use crate::cli::eventrail;
use crate::harness::TestDb;
use crate::harness::one_event as one;

#[tokio::test]
async fn a_store_error_from_the_database_exposes_its_sqlstate_and_whether_to_retry()
-> anyhow::Result<()> {
    let db = TestDb::new().await?;
    // A schema nobody migrated: a mistake, not worth retrying.
    let store =
        PgEventStore::with_options(db.pool.clone(), PgStoreOptions::new().schema("nowhere"))?;
    let error = store.append(one("a-1")?).await.expect_err("no such schema");
    assert!(matches!(error, StoreError::Backend(_)), "{error:?}");
    // The plain append is one INSERT statement: the missing relation `nowhere.events`.
    assert_eq!(error.code(), Some("42P01"), "{error:?}");
    assert!(!error.is_retryable(), "{error:?}");
    let text = eventrail_core::error_chain(&error);
    assert!(text.contains("42P01") && text.contains("nowhere"), "{text}");

    // A unique violation names its constraint.
    let store = db.store();
    let id = uuid::Uuid::now_v7();
    let with_id = |stream: &str| -> anyhow::Result<AppendRequest> {
        Ok(AppendRequest::new(
            stream.parse()?,
            ExpectedVersion::Any,
            vec![NewEvent::json("E", serde_json::json!({})).with_id(id)],
        ))
    };
    store.append(with_id("b-1")?).await?;
    let duplicate = store
        .append(with_id("b-2")?)
        .await
        .expect_err("duplicate id");
    assert!(
        matches!(duplicate, StoreError::DuplicateEventId { .. }),
        "{duplicate:?}"
    );

    // A session terminated under a transaction: worth retrying.
    let mut client = db.pool.get().await?;
    let tx = client.transaction().await?;
    let pid: i32 = tx.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
    db.client()
        .await?
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await?;
    let lost = store
        .append_in(&tx, one("c-1")?)
        .await
        .expect_err("connection gone");
    assert!(lost.is_retryable(), "{lost:?}");
    Ok(())
}

/// A handler whose SQL fails: it names a table that does not exist.
#[derive(Debug)]
struct BadSql;

impl Consumer for BadSql {
    fn name(&self) -> &str {
        "bad_sql"
    }

    async fn handle(&self, tx: &Transaction<'_>, _event: &RecordedEvent) -> Result<(), BoxError> {
        tx.execute("INSERT INTO no_such_table VALUES (1)", &[])
            .await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_consumer_whose_handler_hit_a_sql_error_shows_the_sqlstate_and_message()
-> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let last = db.store().append(one("sql-1")?).await?.last_position();
    let worker = Worker::builder(db.store(), db.config())
        .options(
            WorkerOptions::new()
                .heartbeat_interval(Duration::from_millis(100))
                .rebalance_interval(Duration::from_millis(100))
                .retry(RetryPolicy {
                    max_attempts: 1,
                    initial_backoff: Duration::from_millis(10),
                    max_backoff: Duration::from_millis(10),
                }),
        )
        .consumer(BadSql)
        .build()?;
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(worker.run(stop.clone()));
    match db.wait_for("bad_sql", last, Duration::from_secs(20)).await {
        Err(WorkerError::ConsumerParked { error, .. }) => {
            assert!(error.contains("42P01"), "{error}");
        }
        other => panic!("expected bad_sql parked, got {other:?}"),
    }
    let status = eventrail(&["status", "--database-url", &db.url]).await?;
    assert!(
        status.contains("42P01") && status.contains("relation \"no_such_table\" does not exist"),
        "{status}"
    );
    stop.cancel();
    task.await??;
    Ok(())
}

#[tokio::test]
async fn rewinding_out_of_range_or_beyond_the_head_is_a_typed_error() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let head = db.store().append(one("r-1")?).await?.last_position();
    let client = db.client().await?;
    client
        .execute(
            "INSERT INTO eventrail.consumer_checkpoints (consumer, position) VALUES ('proj', 0)",
            &[],
        )
        .await?;
    let admin = eventrail_worker::WorkerAdmin::new(
        db.pool.clone(),
        "eventrail",
        &eventrail_worker::TableNames::default(),
    )?;
    match admin.rewind("proj", u64::MAX).await {
        Err(WorkerError::InvalidPosition { position }) => assert_eq!(position, u64::MAX),
        other => panic!("expected an invalid position, got {other:?}"),
    }
    match admin.rewind("proj", head + 10).await {
        Err(WorkerError::BeyondHead { position, head: h }) => {
            assert_eq!((position, h), (head + 10, head));
        }
        other => panic!("expected a rewind beyond the head refused, got {other:?}"),
    }
    let refused = eventrail(&[
        "consumer",
        "rewind",
        "proj",
        "--to",
        &(head + 10).to_string(),
        "--database-url",
        &db.url,
    ])
    .await
    .expect_err("beyond the head without --force");
    assert!(refused.to_string().contains("--force"), "{refused}");
    eventrail(&[
        "consumer",
        "rewind",
        "proj",
        "--to",
        &(head + 10).to_string(),
        "--force",
        "--database-url",
        &db.url,
    ])
    .await?;
    admin.rewind("proj", head).await?;
    Ok(())
}
