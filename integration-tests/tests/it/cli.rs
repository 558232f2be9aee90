//! The `eventrail` command against a real database.

use clap::Parser;
use eventrail_cli::{Cli, run};
use eventrail_core::{AppendRequest, EventStore, ExpectedVersion, NewEvent};

use crate::harness::TestDb;

async fn eventrail(args: &[&str]) -> anyhow::Result<String> {
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
    assert!(out.contains("applied migrations [1]"), "{out}");
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
