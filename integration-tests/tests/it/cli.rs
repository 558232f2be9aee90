//! The `eventrail` command against a real database.

use clap::Parser;
use eventrail_cli::{Cli, run};
use eventrail_core::{AppendRequest, EventStore, ExpectedVersion, NewEvent};

use crate::harness::TestDb;

pub(crate) async fn eventrail(args: &[&str]) -> anyhow::Result<String> {
    let cli = Cli::try_parse_from(std::iter::once("eventrail").chain(args.iter().copied()))?;
    let mut out = Vec::new();
    run(cli, &mut out).await?;
    Ok(String::from_utf8(out)?)
}

#[tokio::test]
async fn migrate_prints_applies_and_is_idempotent() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let sql = eventrail(&["migrate", "--print-sql", "--schema", "printed"]).await?;
    assert!(sql.contains("CREATE TABLE \"printed\".events"));
    // The printed script is complete: it applies on its own.
    db.client().await?.batch_execute(&sql).await?;

    let out = eventrail(&[
        "migrate",
        "--database-url",
        &db.url,
        "--schema",
        "cli_schema",
    ])
    .await?;
    assert!(
        out.contains("applied migrations [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14]"),
        "{out}"
    );
    let out = eventrail(&[
        "migrate",
        "--database-url",
        &db.url,
        "--schema",
        "cli_schema",
    ])
    .await?;
    assert!(out.contains("up to date"), "{out}");
    let err = eventrail(&[
        "migrate",
        "--database-url",
        &db.url,
        "--schema",
        "bad;schema",
    ])
    .await
    .unwrap_err();
    assert!(err.to_string().contains("invalid schema"), "{err}");
    Ok(())
}

#[tokio::test]
async fn stream_and_category_read_print_tables() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = db.store();
    store
        .append(AppendRequest::new(
            "account-42".parse()?,
            ExpectedVersion::NoStream,
            vec![
                NewEvent::json("Opened", serde_json::json!({"owner": "ada"})),
                NewEvent::json("Deposited", serde_json::json!({"amount": 10})),
            ],
        ))
        .await?;
    store
        .append(AppendRequest::new(
            "account-43".parse()?,
            ExpectedVersion::NoStream,
            vec![NewEvent::json("Opened", serde_json::json!({}))],
        ))
        .await?;
    let out = eventrail(&["stream", "read", "account-42", "--database-url", &db.url]).await?;
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("POSITION") && lines[0].contains("DATA"),
        "{out}"
    );
    assert!(
        lines[1].contains("Opened") && lines[1].contains(r#"{"owner":"ada"}"#),
        "{out}"
    );
    assert!(lines[2].contains("Deposited"), "{out}");
    assert_eq!(lines[3], "(2 events)");
    let out = eventrail(&[
        "stream",
        "read",
        "account-42",
        "--backward",
        "--limit",
        "1",
        "--database-url",
        &db.url,
    ])
    .await?;
    assert!(
        out.lines().nth(1).is_some_and(|l| l.contains("Deposited")),
        "{out}"
    );

    let out = eventrail(&["category", "read", "account", "--database-url", &db.url]).await?;
    assert!(
        out.contains("account-43") && out.ends_with("(3 events)\n"),
        "{out}"
    );
    let err = eventrail(&["stream", "read", "no spaces", "--database-url", &db.url])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid stream name"), "{err}");
    Ok(())
}

#[tokio::test]
async fn reads_say_when_more_rows_exist() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = db.store();
    let events = (0..5)
        .map(|n| NewEvent::json("Counted", serde_json::json!({ "n": n })))
        .collect();
    let positions = store
        .append(AppendRequest::new(
            "counter-1".parse()?,
            ExpectedVersion::NoStream,
            events,
        ))
        .await?
        .positions;
    let read = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--database-url", db.url.as_str()]);
        let all: Vec<String> = all.into_iter().map(str::to_owned).collect();
        async move { eventrail(&all.iter().map(String::as_str).collect::<Vec<_>>()).await }
    };

    let out = read(&["stream", "read", "counter-1", "--limit", "2"]).await?;
    assert!(out.contains("(2 events)"), "{out}");
    assert!(out.ends_with("more events follow: use --from 2\n"), "{out}");
    let out = read(&["stream", "read", "counter-1", "--limit", "2", "--from", "2"]).await?;
    assert!(out.ends_with("more events follow: use --from 4\n"), "{out}");
    let out = read(&["stream", "read", "counter-1", "--limit", "2", "--from", "4"]).await?;
    assert!(
        out.ends_with("(1 events)\n"),
        "the last page says nothing more: {out}"
    );
    let out = read(&["stream", "read", "counter-1", "--limit", "5"]).await?;
    assert!(
        out.ends_with("(5 events)\n"),
        "exactly the limit, nothing more: {out}"
    );
    let out = read(&["stream", "read", "counter-1", "--backward", "--limit", "3"]).await?;
    assert!(out.ends_with("more events follow: use --from 1\n"), "{out}");

    let out = read(&["category", "read", "counter", "--limit", "4"]).await?;
    let next = positions[3] + 1;
    assert!(out.contains("(4 events)"), "{out}");
    assert!(
        out.ends_with(&format!("more events follow: use --from {next}\n")),
        "{out}"
    );
    let out = read(&["category", "read", "counter", "--from", &next.to_string()]).await?;
    assert!(out.ends_with("(1 events)\n"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_consumer_operations_and_gaps() -> anyhow::Result<()> {
    use eventrail_worker::{Worker, WorkerOptions};
    use integration_tests::{HANDLED_DDL, Recorder};

    let db = TestDb::new().await?;
    db.client().await?.batch_execute(HANDLED_DDL).await?;
    let sql = eventrail(&["migrate", "--print-sql"]).await?;
    assert!(
        sql.contains("\"eventrail\".\"worker_nodes\"") && sql.contains("consumer_gap_skips"),
        "worker tables printed"
    );

    let store = db.store();
    // A rolled-back hole below a committed event: the consumer skips it and audits the skip.
    let mut holder = db.client().await?;
    let tx = holder.transaction().await?;
    store
        .append_in(
            &tx,
            AppendRequest::new(
                "cli-0".parse()?,
                ExpectedVersion::Any,
                vec![NewEvent::json("E", serde_json::json!({}))],
            ),
        )
        .await?;
    let last = store
        .append(AppendRequest::new(
            "cli-1".parse()?,
            ExpectedVersion::Any,
            vec![NewEvent::json("E", serde_json::json!({}))],
        ))
        .await?
        .last_position();
    tx.rollback().await?;

    let worker = Worker::builder(db.store(), db.config())
        .options(
            WorkerOptions::new()
                .name("cli-worker")
                .heartbeat_interval(std::time::Duration::from_millis(100))
                .rebalance_interval(std::time::Duration::from_millis(100)),
        )
        .consumer(Recorder::new("projection", "w"))
        .build()?;
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(worker.run(stop.clone()));
    db.wait_for("projection", last, std::time::Duration::from_secs(10))
        .await?;

    let status = eventrail(&["status", "--database-url", &db.url]).await?;
    assert!(
        status.contains("cli-worker") && status.contains("leader"),
        "{status}"
    );
    assert!(
        status.contains("projection") && status.contains("running"),
        "{status}"
    );
    let gaps = eventrail(&["gaps", "--database-url", &db.url]).await?;
    assert!(
        gaps.contains("projection") && gaps.contains("proven") && gaps.contains("candidates="),
        "{gaps}"
    );

    assert!(
        eventrail(&["consumer", "pause", "projection", "--database-url", &db.url])
            .await?
            .contains("paused")
    );
    assert!(
        eventrail(&["status", "--database-url", &db.url])
            .await?
            .contains("paused")
    );
    eventrail(&[
        "consumer",
        "rewind",
        "projection",
        "--to",
        "0",
        "--database-url",
        &db.url,
    ])
    .await?;
    let status = eventrail(&["status", "--database-url", &db.url]).await?;
    let line = status
        .lines()
        .find(|l| l.starts_with("projection"))
        .expect("consumer line");
    assert!(
        line.split_whitespace().nth(3) == Some("0"),
        "rewound: {line}"
    );
    // Handled rows are keyed by position: clear them so the replay after resume can insert again.
    db.client()
        .await?
        .execute("DELETE FROM handled", &[])
        .await?;
    eventrail(&[
        "consumer",
        "resume",
        "projection",
        "--database-url",
        &db.url,
    ])
    .await?;
    db.wait_for("projection", last, std::time::Duration::from_secs(10))
        .await?;
    let err = eventrail(&["consumer", "reset", "nobody", "--database-url", &db.url])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown consumer"), "{err}");
    stop.cancel();
    task.await??;
    Ok(())
}

/// Fails on every event of type `Poison`; records the others in `handled`.
#[derive(Clone)]
struct Picky;

impl eventrail_worker::Consumer for Picky {
    fn name(&self) -> &str {
        "picky"
    }

    async fn handle(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        event: &eventrail_core::RecordedEvent,
    ) -> Result<(), eventrail_core::BoxError> {
        if event.event_type == "Poison" {
            return Err("cannot handle a Poison event".into());
        }
        let position = i64::try_from(event.global_position)?;
        tx.execute(
            "INSERT INTO handled (consumer, position, worker) VALUES ('picky', $1, 'w')",
            &[&position],
        )
        .await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_skip_passes_exactly_the_parked_event_audited_and_refuses_otherwise()
-> anyhow::Result<()> {
    use eventrail_worker::{RetryPolicy, Worker, WorkerError, WorkerOptions};
    use integration_tests::{HANDLED_DDL, Recorder};

    let db = TestDb::new().await?;
    db.client().await?.batch_execute(HANDLED_DDL).await?;
    let store = db.store();
    let append = |event_type: &'static str| {
        let store = store.clone();
        async move {
            anyhow::Ok(
                store
                    .append(AppendRequest::new(
                        "skip-1".parse()?,
                        ExpectedVersion::Any,
                        vec![NewEvent::json(event_type, serde_json::json!({}))],
                    ))
                    .await?
                    .last_position(),
            )
        }
    };
    append("Good").await?;
    let poison = append("Poison").await?;
    append("Good").await?;
    let last = append("Good").await?;
    let worker = Worker::builder(db.store(), db.config())
        .options(
            WorkerOptions::new()
                .heartbeat_interval(std::time::Duration::from_millis(100))
                .rebalance_interval(std::time::Duration::from_millis(100))
                .retry(RetryPolicy {
                    max_attempts: 2,
                    initial_backoff: std::time::Duration::from_millis(10),
                    max_backoff: std::time::Duration::from_millis(10),
                }),
        )
        .consumer(Picky)
        .consumer(Recorder::new("fine", "w"))
        .build()?;
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(worker.run(stop.clone()));
    match db
        .wait_for("picky", last, std::time::Duration::from_secs(20))
        .await
    {
        Err(WorkerError::ConsumerParked { .. }) => {}
        other => panic!("expected picky parked, got {other:?}"),
    }
    db.wait_for("fine", last, std::time::Duration::from_secs(20))
        .await?;
    let status = eventrail(&["status", "--database-url", &db.url]).await?;
    assert!(
        status.contains(&format!("parked at {poison}: cannot handle a Poison event")),
        "{status}"
    );
    let err = eventrail(&["consumer", "skip", "fine", "--database-url", &db.url])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not parked"), "{err}");

    let out = eventrail(&["consumer", "skip", "picky", "--database-url", &db.url]).await?;
    assert!(
        out.contains(&format!("consumer picky skipped position {poison}")),
        "{out}"
    );
    db.wait_for("picky", last, std::time::Duration::from_secs(20))
        .await?;
    let handled: Vec<i64> = db
        .client()
        .await?
        .query(
            "SELECT position FROM handled WHERE consumer = 'picky' ORDER BY position",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: Vec<i64> = (1..=i64::try_from(last)?)
        .filter(|p| *p != i64::try_from(poison).unwrap_or_default())
        .collect();
    assert_eq!(handled, expected, "every event but the skipped one, once");
    let gaps = eventrail(&["gaps", "--consumer", "picky", "--database-url", &db.url]).await?;
    assert!(
        gaps.contains(&format!("{poison}..={poison}"))
            && gaps.contains("poison")
            && gaps.contains("error=cannot handle a Poison event")
            && gaps.contains("by=postgres"),
        "{gaps}"
    );
    let err = eventrail(&["consumer", "skip", "picky", "--database-url", &db.url])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not parked"),
        "skipped once: {err}"
    );
    let err = eventrail(&["consumer", "skip", "nobody", "--database-url", &db.url])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown consumer"), "{err}");
    stop.cancel();
    task.await??;
    Ok(())
}

#[tokio::test]
async fn outbox_status_and_dead_letters() -> anyhow::Result<()> {
    use eventrail_outbox::{NewMessage, Outbox, OutboxOptions};

    let db = TestDb::new().await?;
    let outbox = Outbox::new(&OutboxOptions::new())?;
    let mut client = db.pool.get().await?;
    let tx = client.transaction().await?;
    let ids = outbox
        .enqueue_batch(
            &tx,
            vec![
                NewMessage::new("orders", "a", b"1".to_vec()),
                NewMessage::new("orders", "b", b"2".to_vec()),
                NewMessage::new("payments", "c", b"3".to_vec()),
            ],
        )
        .await?;
    tx.commit().await?;
    client
        .execute(
            "UPDATE eventrail.outbox SET state = 'dead', attempts = 10, last_error = 'broker said no'
             WHERE message_id <> $1",
            &[&ids[0]],
        )
        .await?;
    let url = db.url.as_str();
    let out = eventrail(&["outbox", "status", "--database-url", url]).await?;
    assert!(out.contains("pending      1"), "{out}");
    assert!(
        out.contains("orders       1") && out.contains("payments     1"),
        "{out}"
    );
    let out = eventrail(&["outbox", "dead", "list", "--database-url", url]).await?;
    assert!(
        out.contains(&ids[1].to_string()) && out.contains("broker said no"),
        "{out}"
    );
    assert!(out.contains("(2 dead)"), "{out}");
    let id = ids[1].to_string();
    let out = eventrail(&["outbox", "dead", "requeue", &id, "--database-url", url]).await?;
    assert!(out.contains("requeued 1 dead messages"), "{out}");
    let out = eventrail(&["outbox", "dead", "purge", "--all", "--database-url", url]).await?;
    assert!(out.contains("purged 1 dead messages"), "{out}");
    let states: Vec<String> = client
        .query(
            &format!(
                "SELECT state FROM {} ORDER BY sequence",
                integration_tests::OUTBOX_MESSAGES
            ),
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(states, ["pending", "pending"]);
    assert!(
        eventrail(&["outbox", "dead", "requeue", "--database-url", url])
            .await
            .is_err()
    );
    Ok(())
}

#[tokio::test]
async fn status_marks_workers_and_a_leader_past_the_heartbeat_timeout_as_stale()
-> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let (frozen, fresh) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let client = db.client().await?;
    client
        .execute(
            "INSERT INTO eventrail.worker_nodes (worker_id, name, heartbeat_at) VALUES
                 ($1, 'frozen-leader', now() - interval '1 minute'), ($2, 'fresh-follower', now())",
            &[&frozen, &fresh],
        )
        .await?;
    // A frozen leader: its session still holds its identity and the leader lock.
    let session = db.client().await?;
    session
        .execute(
            "SELECT pg_advisory_lock(1701147140, hashtext($1::text)),
                    pg_advisory_lock(1701147141, hashtext('\"eventrail\".\"consumer_checkpoints\"'))",
            &[&frozen.to_string()],
        )
        .await?;
    let line = |status: &str, name: &str| {
        status
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_default()
            .to_owned()
    };
    let status = eventrail(&["status", "--database-url", &db.url]).await?;
    let leader = line(&status, "frozen-leader");
    assert!(
        leader.contains("leader") && leader.split_whitespace().last() == Some("stale"),
        "{status}"
    );
    let follower = line(&status, "fresh-follower");
    assert_eq!(follower.split_whitespace().last(), Some("live"), "{status}");
    // With the timeout the workers really run with (here two minutes), nobody is stale.
    let status = eventrail(&[
        "status",
        "--database-url",
        &db.url,
        "--heartbeat-timeout",
        "120",
    ])
    .await?;
    assert!(!status.contains("stale"), "{status}");
    Ok(())
}

#[tokio::test]
async fn saga_commands_list_show_operate_and_report_definitions() -> anyhow::Result<()> {
    use eventrail_saga::{SagaDefinition, SagaOptions, Sagas, Step};
    let db = TestDb::new().await?;
    let definition = SagaDefinition::<serde_json::Value>::builder("cli-order", 3)
        .step(Step::compensatable(
            "reserve",
            |_ctx| Box::pin(async move { Ok(()) }),
            |_ctx| Box::pin(async move { Ok(()) }),
        ))
        .step(Step::timer("wait", std::time::Duration::from_secs(1)).after(["reserve"]))
        .build()?;
    // No runner serves it: it stays queued and is reported.
    let sagas = Sagas::new(db.store(), &SagaOptions::new())?;
    let id = sagas
        .start(&definition, &serde_json::json!({"order": 1}), None)
        .await?;
    let url = db.url.as_str();
    let list = eventrail(&["saga", "list", "--database-url", url, "--state", "queued"]).await?;
    assert!(
        list.contains(&id.to_string())
            && list.contains("cli-order@3")
            && list.contains("(1 sagas)"),
        "{list}"
    );
    let none = eventrail(&[
        "saga",
        "list",
        "--database-url",
        url,
        "--definition",
        "other",
    ])
    .await?;
    assert!(none.contains("(0 sagas)"), "{none}");
    let bad = eventrail(&["saga", "list", "--database-url", url, "--state", "sleeping"])
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("unknown saga state"), "{bad}");
    let show = eventrail(&["saga", "show", "--database-url", url, &id.to_string()]).await?;
    assert!(
        show.contains("reserve")
            && show.contains("ready")
            && show.contains("wait")
            && show.contains("blocked"),
        "{show}"
    );
    assert!(show.contains("\"order\":1"), "{show}");
    let defs = eventrail(&["saga", "definitions", "--database-url", url]).await?;
    let line = defs
        .lines()
        .find(|l| l.contains("cli-order"))
        .unwrap_or_default();
    assert!(line.contains("cli-order@3/reserve"), "{defs}");
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&cols[1..4], ["3", "1", "1"], "{defs}");
    let retry = eventrail(&["saga", "retry", "--database-url", url, &id.to_string()])
        .await
        .unwrap_err();
    assert!(
        retry.to_string().contains("retry does not apply"),
        "{retry}"
    );
    let cancel = eventrail(&["saga", "cancel", "--database-url", url, &id.to_string()]).await?;
    assert!(cancel.contains("cancelled"), "{cancel}");
    let missing = eventrail(&[
        "saga",
        "abort",
        "--database-url",
        url,
        &uuid::Uuid::now_v7().to_string(),
    ])
    .await
    .unwrap_err();
    assert!(missing.to_string().contains("no saga"), "{missing}");
    Ok(())
}

#[tokio::test]
async fn migrate_partitions_the_log_on_request_once() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let args = |size: &'static str| {
        [
            "migrate",
            "--database-url",
            db.url.as_str(),
            "--schema",
            "parted",
            "--partition-size",
            size,
        ]
    };
    // Printed, it applies on its own in one transaction, after the printed migrations.
    let printed = eventrail(&[
        "migrate",
        "--print-sql",
        "--schema",
        "printed_parts",
        "--partition-size",
        "10",
    ])
    .await?;
    assert!(printed.contains("PARTITION BY RANGE (global_position)"));
    db.client()
        .await?
        .batch_execute(&format!("BEGIN; {printed}; COMMIT;"))
        .await?;
    let printed_store =
        db.store_with(eventrail_store_postgres::PgStoreOptions::new().schema("printed_parts"));
    let batch = printed_store
        .append(AppendRequest::new(
            "account-1".parse()?,
            ExpectedVersion::NoStream,
            (0..25)
                .map(|_| NewEvent::json("Opened", serde_json::json!({})))
                .collect(),
        ))
        .await?;
    assert_eq!(batch.stream_version, 24);
    let err = eventrail(&args("0")).await.unwrap_err();
    assert!(
        err.to_string().contains("invalid partition size 0"),
        "{err}"
    );
    let out = eventrail(&args("1000")).await?;
    assert!(
        out.contains("partitioned the events of schema parted by position, 1000 per partition"),
        "{out}"
    );
    let out = eventrail(&args("1000")).await?;
    assert!(out.contains("partitioned already"), "{out}");
    let kind: String = db
        .client()
        .await?
        .query_one(
            "SELECT relkind::text FROM pg_class WHERE oid = 'parted.events'::regclass",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(kind, "p");
    let store = db.store_with(eventrail_store_postgres::PgStoreOptions::new().schema("parted"));
    let outcome = store
        .append(AppendRequest::new(
            "account-1".parse()?,
            ExpectedVersion::NoStream,
            vec![NewEvent::json("Opened", serde_json::json!({}))],
        ))
        .await?;
    assert_eq!(outcome.stream_version, 0);
    let info = eventrail(&[
        "migrate",
        "info",
        "--database-url",
        &db.url,
        "--schema",
        "parted",
    ])
    .await?;
    assert!(
        info.lines()
            .any(|l| l.contains("partition_by_position") && l.contains("applied")),
        "{info}"
    );
    Ok(())
}
