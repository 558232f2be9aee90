//! The Message DB client against the real Message DB, installed from its published npm package
//! into a database per test (see `harness::TestDb::message_db`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use eventrail_message_db::{
    CancellationToken, CategoryReadOptions, ConstantPolling, DecodeError, DynamicPolling,
    ExpectedVersion, ExponentialBackoff, InvalidArgument, Liveness, Message, MessageDb,
    MessageDbError, MessageDbOptions, MessageMetadata, NewMessage, PositionStore,
    StreamReadOptions, SubscriptionError, SummaryView, names, parse_wrong_expected_version,
    polling_fn,
};
use futures::StreamExt;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;

use crate::harness::TestDb;

/// How long a test waits for a condition before it fails.
const DEADLINE: Duration = Duration::from_secs(20);

const FAST: ConstantPolling = ConstantPolling::new(Duration::from_millis(10));

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Deposited {
    amount: u32,
}

async fn setup() -> anyhow::Result<(TestDb, MessageDb)> {
    let db = TestDb::message_db().await?;
    let client = MessageDb::new(db.pool.clone());
    Ok((db, client))
}

fn deposit(amount: u32) -> NewMessage {
    NewMessage::serialize("Deposited", &Deposited { amount }).expect("serializable")
}

/// Waits for the next item of `rx`, failing after the deadline.
async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> anyhow::Result<T> {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .context("nothing arrived before the deadline")?
        .context("the sender is gone")
}

/// Polls `check` until it holds, failing after the deadline.
async fn eventually<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if check().await? {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn installs_the_published_message_db() -> anyhow::Result<()> {
    let (db, client) = setup().await?;
    assert_eq!(client.message_store_version().await?, "1.3.0");
    // A client with its own pool: its connections start on Message DB's search path.
    let own = MessageDb::connect(&db.url)?;
    assert_eq!(own.write_message("own-1", &deposit(1)).await?, 0);
    assert_eq!(own.stream_version("own-1").await?, Some(0));
    assert_eq!(own.category("own-1").await?, "own");
    let conn = own.pool().get().await?;
    let path: String = conn.query_one("SHOW search_path", &[]).await?.get(0);
    assert!(path.starts_with("message_store"), "{path}");
    Ok(())
}

#[tokio::test]
async fn writes_and_reads_a_stream_with_every_option() -> anyhow::Result<()> {
    let (_db, client) = setup().await?;
    let stream = "account-1";
    assert_eq!(client.stream_version(stream).await?, None);
    assert!(client.get_last_stream_message(stream).await?.is_none());
    let meta = MessageMetadata::new().correlation_stream_name("saga-9");
    let first = deposit(10)
        .expected_version(ExpectedVersion::NoStream)
        .serialize_metadata(&meta)?;
    assert_eq!(client.write_message(stream, &first).await?, 0);
    assert_eq!(
        client
            .write_message(
                stream,
                &NewMessage::new("Withdrawn", json!({ "amount": 3 }))
                    .expected_version(ExpectedVersion::Exact(0))
            )
            .await?,
        1
    );
    assert_eq!(
        client
            .write_message(
                stream,
                &deposit(5).expected_version(ExpectedVersion::Exact(1))
            )
            .await?,
        2
    );
    // No expectation: appends whatever the version.
    assert_eq!(client.write_message(stream, &deposit(1)).await?, 3);
    assert_eq!(client.stream_version(stream).await?, Some(3));

    let all = client
        .get_stream_messages(stream, &StreamReadOptions::new())
        .await?;
    assert_eq!(
        all.iter().map(|m| m.position).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    assert_eq!(all[0].id, first.message_id());
    assert_eq!(all[0].stream_name, stream);
    assert_eq!(all[0].data::<Deposited>()?, Deposited { amount: 10 });
    assert_eq!(all[0].standard_metadata()?, meta);
    assert_eq!(all[1].message_type, "Withdrawn");
    assert_eq!(all[1].raw_metadata(), None);
    assert!(
        all.windows(2)
            .all(|w| w[0].global_position < w[1].global_position)
    );
    assert!(all[0].time <= std::time::SystemTime::now() + Duration::from_secs(60));

    let from_2 = client
        .get_stream_messages(stream, &StreamReadOptions::new().position(2))
        .await?;
    assert_eq!(
        from_2.iter().map(|m| m.position).collect::<Vec<_>>(),
        [2, 3]
    );
    let two = client
        .get_stream_messages(stream, &StreamReadOptions::new().position(1).batch_size(2))
        .await?;
    assert_eq!(two.iter().map(|m| m.position).collect::<Vec<_>>(), [1, 2]);
    // Unlimited reads past Message DB's default batch of 1,000.
    for _ in 0..1000 {
        client.write_message("big-1", &deposit(1)).await?;
    }
    let big = client
        .get_stream_messages("big-1", &StreamReadOptions::new())
        .await?;
    assert_eq!(big.len(), 1000);
    let unlimited = client
        .get_stream_messages("big-1", &StreamReadOptions::new().unlimited())
        .await?;
    assert_eq!(unlimited.len(), 1000);
    client.write_message("big-1", &deposit(1)).await?;
    let unlimited = client
        .get_stream_messages("big-1", &StreamReadOptions::new().unlimited())
        .await?;
    assert_eq!(unlimited.len(), 1001);

    let last = client.get_last_stream_message(stream).await?.unwrap();
    assert_eq!(last.position, 3);
    let last_withdrawal = client
        .get_last_stream_message_of_type(stream, "Withdrawn")
        .await?
        .unwrap();
    assert_eq!(last_withdrawal.position, 1);
    assert!(
        client
            .get_last_stream_message_of_type(stream, "Closed")
            .await?
            .is_none()
    );
    Ok(())
}

#[tokio::test]
async fn wrong_expected_versions_are_typed_and_parsed_from_real_errors() -> anyhow::Result<()> {
    let (db, client) = setup().await?;
    for i in 0..12u64 {
        client
            .write_message(
                "account-7",
                &deposit(1).expected_version(if i == 0 {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(i - 1)
                }),
            )
            .await?;
    }
    let err = client
        .write_message(
            "account-7",
            &deposit(1).expected_version(ExpectedVersion::Exact(3)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MessageDbError::WrongExpectedVersion { stream, expected: ExpectedVersion::Exact(3), actual: Some(11) } if stream == "account-7"),
        "{err:?}"
    );
    let err = client
        .write_message(
            "account-7",
            &deposit(1).expected_version(ExpectedVersion::NoStream),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            MessageDbError::WrongExpectedVersion {
                actual: Some(11),
                ..
            }
        ),
        "{err:?}"
    );
    // A missing stream reports -1: no actual version.
    let err = client
        .write_message(
            "account-8",
            &deposit(1).expected_version(ExpectedVersion::Exact(1234)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            MessageDbError::WrongExpectedVersion {
                expected: ExpectedVersion::Exact(1234),
                actual: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(client.stream_version("account-8").await?, None);

    // The parser on Message DB's own texts, including a name that imitates the text.
    let raw = db.client().await?;
    raw.batch_execute("SET search_path = message_store, public")
        .await?;
    let odd = "odd-x, Stream Version: 5) (Stream: y";
    raw.execute(
        "SELECT write_message(gen_random_uuid()::varchar, $1, 'T', '{}'::jsonb)",
        &[&odd],
    )
    .await?;
    for (stream, expected, actual) in [
        ("account-7", 123_456_789_i64, 11_i64),
        ("account-8", 0, -1),
        (odd, -1, 0),
    ] {
        let err = raw
            .execute(
                "SELECT write_message(gen_random_uuid()::varchar, $1, 'T', '{}'::jsonb, NULL, $2)",
                &[&stream, &expected],
            )
            .await
            .unwrap_err();
        let text = err.as_db_error().expect("a database error").message();
        let parsed =
            parse_wrong_expected_version(text).with_context(|| format!("unparsed: {text}"))?;
        assert_eq!(
            (parsed.stream.as_str(), parsed.expected, parsed.actual),
            (stream, expected, actual),
            "{text}"
        );
    }
    let err = client
        .write_message(odd, &deposit(1).expected_version(ExpectedVersion::Exact(7)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            MessageDbError::WrongExpectedVersion {
                actual: Some(0),
                ..
            }
        ),
        "{err:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_duplicate_id_is_typed_and_decode_errors_are_typed() -> anyhow::Result<()> {
    let (_db, client) = setup().await?;
    let message = deposit(1);
    client.write_message("account-1", &message).await?;
    let err = client
        .write_message("account-2", &message)
        .await
        .unwrap_err();
    assert!(
        matches!(err, MessageDbError::DuplicateMessageId { id } if id == message.message_id()),
        "{err:?}"
    );
    client
        .write_message(
            "account-1",
            &NewMessage::new("Deposited", json!({ "amount": "ten" })),
        )
        .await?;
    let read = client
        .get_stream_messages("account-1", &StreamReadOptions::new())
        .await?;
    assert_eq!(read.len(), 2);
    assert!(matches!(
        read[1].data::<Deposited>(),
        Err(DecodeError::Data { .. })
    ));
    assert_eq!(
        read[1].data::<serde_json::Value>()?,
        json!({ "amount": "ten" })
    );
    Ok(())
}

#[tokio::test]
async fn reads_a_category_with_position_batch_correlation_and_condition() -> anyhow::Result<()> {
    let (_db, client) = setup().await?;
    let mut written = Vec::new();
    for i in 0..6u32 {
        let stream = format!("order-{}", i % 3);
        let correlation = if i % 2 == 0 { "saga-1" } else { "other-2" };
        let message = deposit(i)
            .serialize_metadata(&MessageMetadata::new().correlation_stream_name(correlation))?;
        client.write_message(&stream, &message).await?;
        written.push(message.message_id());
    }
    client.write_message("invoice-1", &deposit(99)).await?;
    client
        .write_message("order:command-1", &deposit(98))
        .await?;

    let all = client
        .get_category_messages("order", &CategoryReadOptions::new())
        .await?;
    assert_eq!(all.iter().map(|m| m.id).collect::<Vec<_>>(), written);
    assert!(
        all.windows(2)
            .all(|w| w[0].global_position < w[1].global_position)
    );
    let typed = client
        .get_category_messages("order:command", &CategoryReadOptions::new())
        .await?;
    assert_eq!(typed.len(), 1);

    let from = all[2].global_position;
    let page = client
        .get_category_messages(
            "order",
            &CategoryReadOptions::new().position(from).batch_size(2),
        )
        .await?;
    assert_eq!(page.iter().map(|m| m.id).collect::<Vec<_>>(), written[2..4]);
    let unlimited = client
        .get_category_messages("order", &CategoryReadOptions::new().unlimited())
        .await?;
    assert_eq!(unlimited.len(), 6);

    let correlated = client
        .get_category_messages("order", &CategoryReadOptions::new().correlation("saga"))
        .await?;
    assert_eq!(
        correlated.iter().map(|m| m.id).collect::<Vec<_>>(),
        [written[0], written[2], written[4]]
    );

    // Conditions are off unless turned on.
    let err = client
        .get_category_messages(
            "order",
            &CategoryReadOptions::new().condition("position = 0"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, MessageDbError::ConditionNotActivated),
        "{err:?}"
    );
    let err = client
        .get_stream_messages(
            "order-1",
            &StreamReadOptions::new().condition("position = 0"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, MessageDbError::ConditionNotActivated),
        "{err:?}"
    );

    let with_conditions = MessageDb::with_options(
        client.pool().clone(),
        MessageDbOptions::new().sql_condition(true),
    );
    let firsts = with_conditions
        .get_category_messages(
            "order",
            &CategoryReadOptions::new().condition("position = 0"),
        )
        .await?;
    assert_eq!(
        firsts.iter().map(|m| m.id).collect::<Vec<_>>(),
        written[0..3]
    );
    let later = with_conditions
        .get_stream_messages(
            "order-1",
            &StreamReadOptions::new().condition("position >= 1"),
        )
        .await?;
    assert_eq!(later.iter().map(|m| m.id).collect::<Vec<_>>(), [written[4]]);
    // Combined with correlation and a consumer group.
    let combined = with_conditions
        .get_category_messages(
            "order",
            &CategoryReadOptions::new()
                .correlation("saga")
                .consumer_group(0, 1)
                .condition("position = 0"),
        )
        .await?;
    assert_eq!(
        combined.iter().map(|m| m.id).collect::<Vec<_>>(),
        [written[0], written[2]]
    );
    // The setting is per statement: the pooled connections are left as they were.
    let conn = client.pool().get().await?;
    let setting: Option<String> = conn
        .query_one(
            "SELECT current_setting('message_store.sql_condition', true)",
            &[],
        )
        .await?
        .get(0);
    assert_ne!(setting.as_deref(), Some("on"));
    let path: String = conn.query_one("SHOW search_path", &[]).await?.get(0);
    assert!(!path.contains("message_store"), "{path}");
    Ok(())
}

#[tokio::test]
async fn invalid_arguments_are_refused_before_any_query() -> anyhow::Result<()> {
    // A pool on a port where nothing listens: any query would fail with a pool error.
    let nowhere = eventrail_devdb::pool("postgres://postgres@127.0.0.1:9/none", 1)?;
    let client = MessageDb::new(nowhere);
    let invalid = |r: Result<Vec<Message>, MessageDbError>| match r {
        Err(MessageDbError::InvalidArgument(a)) => a,
        other => panic!("expected an invalid argument, got {other:?}"),
    };
    assert_eq!(
        invalid(
            client
                .get_stream_messages("account", &StreamReadOptions::new())
                .await
        ),
        InvalidArgument::NotAStreamName("account".into())
    );
    assert_eq!(
        invalid(
            client
                .get_category_messages("account-1", &CategoryReadOptions::new())
                .await
        ),
        InvalidArgument::NotACategory("account-1".into())
    );
    assert_eq!(
        invalid(
            client
                .get_category_messages("account", &CategoryReadOptions::new().correlation("saga-1"))
                .await
        ),
        InvalidArgument::CorrelationNotACategory("saga-1".into())
    );
    for (member, size) in [(0, 0), (2, 2), (3, 2), (0, 32_768), (1, u64::MAX)] {
        assert!(matches!(
            invalid(
                client
                    .get_category_messages(
                        "account",
                        &CategoryReadOptions::new().consumer_group(member, size)
                    )
                    .await
            ),
            InvalidArgument::ConsumerGroup { .. }
        ));
    }
    assert_eq!(
        invalid(
            client
                .get_category_messages("account", &CategoryReadOptions::new().batch_size(0))
                .await
        ),
        InvalidArgument::ZeroBatchSize
    );
    assert!(matches!(
        invalid(
            client
                .get_stream_messages("account-1", &StreamReadOptions::new().position(u64::MAX))
                .await
        ),
        InvalidArgument::OutOfRange { .. }
    ));
    let err = client
        .write_message(
            "account-1",
            &deposit(1).expected_version(ExpectedVersion::Exact(u64::MAX)),
        )
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        MessageDbError::InvalidArgument(InvalidArgument::OutOfRange { .. })
    ));
    let err = client
        .subscribe_category("account")
        .consumer_group(1, 1)
        .run(|_| async { anyhow::Ok(()) })
        .await
        .unwrap_err();
    assert!(
        matches!(err, SubscriptionError::InvalidArgument(_)),
        "{err:?}"
    );
    let err = client
        .subscribe_stream("account-1")
        .batch_size(0)
        .run(|_| async { anyhow::Ok(()) })
        .await
        .unwrap_err();
    assert!(
        matches!(err, SubscriptionError::InvalidArgument(_)),
        "{err:?}"
    );
    let err = client
        .subscribe_stream("account-1")
        .consumer_group(0, 2)
        .run(|_| async { anyhow::Ok(()) })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SubscriptionError::InvalidArgument(InvalidArgument::Setting { .. })
        ),
        "{err:?}"
    );
    // The same client does reach the pool for a valid call.
    assert!(matches!(
        client.stream_version("account-1").await,
        Err(MessageDbError::Connect(_))
    ));
    Ok(())
}

#[tokio::test]
async fn consumer_group_members_partition_a_category_exactly() -> anyhow::Result<()> {
    let (_db, client) = setup().await?;
    let mut all = BTreeSet::new();
    for i in 0..40 {
        // Compound ids: `i+a` and `i+b` share the cardinal id `i`.
        for suffix in ["", "+a", "+b"] {
            let stream = format!("part-{i}{suffix}");
            client.write_message(&stream, &deposit(i)).await?;
            all.insert(stream);
        }
    }
    const SIZE: u64 = 3;
    let mut member_of: HashMap<String, u64> = HashMap::new();
    let mut union = BTreeSet::new();
    let mut total = 0;
    for member in 0..SIZE {
        let read = client
            .get_category_messages(
                "part",
                &CategoryReadOptions::new().consumer_group(member, SIZE),
            )
            .await?;
        assert!(
            !read.is_empty(),
            "member {member} got nothing of 120 streams"
        );
        total += read.len();
        for m in read {
            union.insert(m.stream_name.clone());
            let cardinal = names::cardinal_id(&m.stream_name).unwrap().to_owned();
            // Same cardinal id, same member; and the Rust twin agrees with Message DB.
            assert_eq!(*member_of.entry(cardinal).or_insert(member), member);
            assert_eq!(
                names::consumer_group_member(&m.stream_name, SIZE),
                Some(member)
            );
        }
    }
    assert_eq!(union, all, "the members' union is the whole category");
    assert_eq!(total, all.len(), "no message went to two members");
    Ok(())
}

#[tokio::test]
async fn rust_twins_agree_with_the_sql_functions_on_generated_names() -> anyhow::Result<()> {
    let (db, client) = setup().await?;
    // Names from Message DB's grammar and around it: categories with `:type` suffixes,
    // compound ids with `+`, several `-`, and arbitrary text.
    let strategy = proptest::prop_oneof![
        "[a-zA-Z0-9_]{0,8}(:[a-z]{1,6}){0,2}",
        "[a-zA-Z0-9_]{0,8}(:[a-z]{1,6}){0,2}-[a-z0-9]{0,6}(\\+[a-z0-9]{0,6}){0,3}",
        "[a-z:+-]{0,16}",
        "[^\u{0}]{0,20}",
    ];
    let mut runner = TestRunner::deterministic();
    let names_: Vec<String> = (0..3000)
        .map(|_| strategy.new_tree(&mut runner).map(|t| t.current()))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let raw = db.client().await?;
    // `cardinal_id` calls `id` unqualified, like every Message DB function.
    raw.batch_execute("SET search_path = message_store, public")
        .await?;
    let rows = raw
        .query(
            "SELECT n, message_store.id(n)::text, message_store.cardinal_id(n)::text, \
             message_store.category(n)::text, message_store.is_category(n), message_store.hash_64(n) \
             FROM unnest($1::text[]) AS n",
            &[&names_],
        )
        .await?;
    assert_eq!(rows.len(), names_.len());
    for row in &rows {
        let name: String = row.get(0);
        assert_eq!(
            names::id(&name),
            row.get::<_, Option<&str>>(1),
            "id({name:?})"
        );
        assert_eq!(
            names::cardinal_id(&name),
            row.get::<_, Option<&str>>(2),
            "cardinal_id({name:?})"
        );
        assert_eq!(
            names::category(&name),
            row.get::<_, &str>(3),
            "category({name:?})"
        );
        assert_eq!(
            names::is_category(&name),
            row.get::<_, bool>(4),
            "is_category({name:?})"
        );
        assert_eq!(
            names::hash_64(&name),
            row.get::<_, i64>(5),
            "hash_64({name:?})"
        );
    }
    // And the client's own calls of the same functions.
    for name in ["account-1+a", "account:command-1", "account", ""] {
        assert_eq!(client.id(name).await?.as_deref(), names::id(name));
        assert_eq!(
            client.cardinal_id(name).await?.as_deref(),
            names::cardinal_id(name)
        );
        assert_eq!(client.category(name).await?, names::category(name));
        assert_eq!(client.is_category(name).await?, names::is_category(name));
        assert_eq!(client.hash_64(name).await?, names::hash_64(name));
    }
    Ok(())
}

#[tokio::test]
async fn summary_views_count_messages() -> anyhow::Result<()> {
    let (_db, client) = setup().await?;
    for (stream, kind) in [
        ("account-1", "Deposited"),
        ("account-1", "Deposited"),
        ("account-2", "Withdrawn"),
        ("order-1", "Placed"),
    ] {
        client
            .write_message(stream, &NewMessage::new(kind, json!({})))
            .await?;
    }
    let streams: BTreeMap<_, _> = client
        .summary(SummaryView::Stream)
        .await?
        .into_iter()
        .map(|r| (r.stream_name.unwrap(), (r.message_count, r.percent)))
        .collect();
    assert_eq!(streams["account-1"], (2, 50.0));
    assert_eq!(streams["order-1"], (1, 25.0));
    let categories: BTreeMap<_, _> = client
        .summary(SummaryView::CategoryType)
        .await?
        .into_iter()
        .map(|r| {
            (
                (r.category.unwrap(), r.message_type.unwrap()),
                r.message_count,
            )
        })
        .collect();
    assert_eq!(
        categories[&("account".to_owned(), "Deposited".to_owned())],
        2
    );
    for view in SummaryView::ALL {
        let rows = client.summary(view).await?;
        assert!(!rows.is_empty(), "{view:?}");
        assert_eq!(
            rows.iter().map(|r| r.message_count).sum::<u64>(),
            4,
            "{view:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_transaction_form_commits_rolls_back_and_locks() -> anyhow::Result<()> {
    let (db, client) = setup().await?;
    let mut conn = db.pool.get().await?;
    {
        let tx = conn.transaction().await?;
        assert_eq!(
            client.write_message_in(&tx, "cart-1", &deposit(1)).await?,
            0
        );
        assert_eq!(client.stream_version_in(&tx, "cart-1").await?, Some(0));
        tx.rollback().await?;
    }
    assert_eq!(client.stream_version("cart-1").await?, None);

    let tx = conn.transaction().await?;
    client
        .write_message_in(
            &tx,
            "cart-1",
            &deposit(1).expected_version(ExpectedVersion::NoStream),
        )
        .await?;
    assert_eq!(
        client
            .get_stream_messages_in(&tx, "cart-1", &StreamReadOptions::new())
            .await?
            .len(),
        1
    );
    assert_eq!(
        client
            .get_category_messages_in(&tx, "cart", &CategoryReadOptions::new())
            .await?
            .len(),
        1
    );
    assert!(
        client
            .get_last_stream_message_in(&tx, "cart-1")
            .await?
            .is_some()
    );
    assert!(
        client
            .get_last_stream_message_of_type_in(&tx, "cart-1", "Deposited")
            .await?
            .is_some()
    );
    assert_eq!(client.summary_in(&tx, SummaryView::Stream).await?.len(), 1);
    let key = client.acquire_lock_in(&tx, "cart-2").await?;
    assert_eq!(key, names::hash_64("cart"));
    // Another writer to the category waits for the lock until this transaction ends.
    let other = client.clone();
    let writer = tokio::spawn(async move { other.write_message("cart-3", &deposit(2)).await });
    let watcher = db.client().await?;
    eventually("the other writer to wait on the category lock", || async {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[],
            )
            .await?
            .get(0);
        Ok(waiting == 1)
    })
    .await?;
    assert!(!writer.is_finished());
    tx.commit().await?;
    assert_eq!(writer.await??, 0);
    assert_eq!(client.stream_version("cart-1").await?, Some(0));
    Ok(())
}

#[tokio::test]
async fn concurrent_writers_with_expected_versions_never_lose_or_duplicate() -> anyhow::Result<()> {
    let (_db, client) = setup().await?;
    const WRITERS: u32 = 8;
    const EACH: u32 = 15;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u32;
            let mut written = 0;
            while written < EACH {
                let version = client.stream_version("ledger-1").await?;
                let expected = version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                let message = NewMessage::new("Entry", json!({ "writer": w, "n": written }))
                    .expected_version(expected);
                match client.write_message("ledger-1", &message).await {
                    Ok(position) => {
                        assert_eq!(position, version.map_or(0, |v| v + 1));
                        written += 1;
                    }
                    Err(MessageDbError::WrongExpectedVersion { actual, .. }) => {
                        assert_ne!(actual, version);
                        conflicts += 1;
                    }
                    Err(e) => return Err(anyhow::Error::from(e)),
                }
            }
            anyhow::Ok(conflicts)
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await??;
    }
    let messages = client
        .get_stream_messages("ledger-1", &StreamReadOptions::new().unlimited())
        .await?;
    let total = usize::try_from(WRITERS * EACH)?;
    assert_eq!(messages.len(), total);
    assert!(
        messages
            .iter()
            .enumerate()
            .all(|(i, m)| m.position == i as u64)
    );
    let mut seen = BTreeSet::new();
    for m in &messages {
        let data: serde_json::Value = m.data()?;
        assert!(
            seen.insert((data["writer"].as_u64(), data["n"].as_u64())),
            "duplicate {data}"
        );
    }
    assert_eq!(seen.len(), total);
    println!("{conflicts} conflicts among {WRITERS} writers");
    Ok(())
}

#[tokio::test]
async fn a_category_subscription_receives_later_messages_in_order() -> anyhow::Result<()> {
    let (_db, client) = setup().await?;
    client.write_message("task-0", &deposit(0)).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let (live_tx, mut live_rx) = mpsc::unbounded_channel();
    let subscription = client
        .subscribe_category("task")
        .batch_size(7)
        .polling(ExponentialBackoff::new(
            Duration::from_millis(5),
            Duration::from_millis(50),
            2.0,
        )?)
        .on_liveness(move |l| {
            let _ = live_tx.send(l);
        })
        .cancellation(cancel.clone());
    let running = tokio::spawn(subscription.run(move |m: Message| {
        let tx = tx.clone();
        async move { tx.send(m).map_err(|_| anyhow::anyhow!("receiver gone")) }
    }));
    // The message written before start arrives, then the subscription is caught up.
    assert_eq!(next(&mut rx).await?.stream_name, "task-0");
    assert_eq!(next(&mut live_rx).await?, Liveness::CaughtUp);
    let mut expected = Vec::new();
    for i in 0..30u32 {
        let message = deposit(i);
        expected.push(message.message_id());
        client
            .write_message(&format!("task-{}", i % 4), &message)
            .await?;
    }
    let mut received = Vec::new();
    while received.len() < expected.len() {
        received.push(next(&mut rx).await?.id);
    }
    assert_eq!(received, expected, "every message, in the order written");
    cancel.cancel();
    running.await??;
    Ok(())
}

#[tokio::test]
async fn a_stream_subscription_with_a_custom_strategy() -> anyhow::Result<()> {
    let (_db, client) = setup().await?;
    let polls = Arc::new(Mutex::new(Vec::new()));
    let seen = polls.clone();
    let cancel = CancellationToken::new();
    let mut stream = Box::pin(
        client
            .subscribe_stream("job-1")
            .start_position(1)
            .batch_size(2)
            .polling(polling_fn(move |fetched, batch| {
                seen.lock().unwrap().push((fetched, batch));
                Duration::from_millis(5)
            }))
            .cancellation(cancel.clone())
            .into_stream(),
    );
    for i in 0..5 {
        client.write_message("job-1", &deposit(i)).await?;
        client.write_message("job-2", &deposit(i)).await?;
    }
    let mut positions = Vec::new();
    while positions.len() < 4 {
        let m = tokio::time::timeout(DEADLINE, stream.next())
            .await?
            .context("stream ended")??;
        assert_eq!(m.stream_name, "job-1");
        positions.push(m.position);
    }
    assert_eq!(positions, [1, 2, 3, 4], "from the start position, in order");
    assert!(polls.lock().unwrap().iter().all(|&(f, b)| f <= 2 && b == 2));
    cancel.cancel();
    assert!(
        tokio::time::timeout(DEADLINE, stream.next())
            .await?
            .is_none()
    );
    Ok(())
}

#[tokio::test]
async fn a_subscription_resumes_from_its_stored_position() -> anyhow::Result<()> {
    let (_db, client) = setup().await?;
    let mut ids = Vec::new();
    for i in 0..30u32 {
        let m = deposit(i);
        ids.push(m.message_id());
        client
            .write_message(&format!("invoice-{}", i % 5), &m)
            .await?;
    }
    let store = PositionStore::for_consumer("invoice", "mailer")?.every(5);
    assert_eq!(store.stream_name(), "invoice:position-mailer");

    // First run: processes 12 messages, then is cancelled.
    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler_cancel = cancel.clone();
    let first = tokio::spawn(
        client
            .subscribe_category("invoice")
            .batch_size(4)
            .polling(FAST)
            .position_store(store.clone())
            .cancellation(cancel.clone())
            .run(move |m: Message| {
                let (tx, cancel) = (tx.clone(), handler_cancel.clone());
                async move {
                    tx.send(m.clone())?;
                    if m.data::<Deposited>()?.amount == 11 {
                        cancel.cancel();
                    }
                    anyhow::Ok(())
                }
            }),
    );
    let mut first_run = Vec::new();
    for _ in 0..12 {
        first_run.push(next(&mut rx).await?);
    }
    first.await??;
    assert!(
        rx.try_recv().is_err(),
        "stopped after the cancelling message"
    );
    // Recorded every 5 messages, and the last processed one on the graceful stop.
    let recorded: Vec<u64> = client
        .get_stream_messages("invoice:position-mailer", &StreamReadOptions::new())
        .await?
        .iter()
        .map(|m| {
            m.data::<serde_json::Value>()
                .map(|d| d["position"].as_u64().unwrap())
        })
        .collect::<Result<_, _>>()?;
    assert_eq!(
        recorded,
        [
            first_run[4].global_position,
            first_run[9].global_position,
            first_run[11].global_position
        ]
    );
    assert_eq!(
        store.load(&client).await?,
        Some(first_run[11].global_position)
    );

    // Second run: starts after the recorded position, not at the start position.
    let cancel = CancellationToken::new();
    let mut stream = Box::pin(
        client
            .subscribe_category("invoice")
            .start_position(1)
            .batch_size(4)
            .polling(DynamicPolling::new(
                Duration::from_millis(5),
                Duration::from_millis(100),
                0.5,
            )?)
            .position_store(store.clone())
            .cancellation(cancel.clone())
            .into_stream(),
    );
    let mut second_run = Vec::new();
    while second_run.len() < 18 {
        let m = tokio::time::timeout(DEADLINE, stream.next())
            .await?
            .context("stream ended")??;
        second_run.push(m.id);
    }
    assert_eq!(second_run, ids[12..]);
    cancel.cancel();
    assert!(
        tokio::time::timeout(DEADLINE, stream.next())
            .await?
            .is_none()
    );
    // The stream form recorded the last yielded message when it stopped.
    let last = client
        .get_last_stream_message("invoice:position-mailer")
        .await?
        .unwrap();
    assert_eq!(
        last.data::<serde_json::Value>()?["position"],
        client
            .get_stream_messages("invoice-4", &StreamReadOptions::new())
            .await?
            .last()
            .unwrap()
            .global_position
    );
    Ok(())
}

#[tokio::test]
async fn a_subscription_reports_liveness_changes() -> anyhow::Result<()> {
    let (_db, client) = setup().await?;
    for i in 0..25 {
        client.write_message("feed-1", &deposit(i)).await?;
    }
    let (live_tx, mut live_rx) = mpsc::unbounded_channel();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let running = tokio::spawn(
        client
            .subscribe_category("feed")
            .batch_size(10)
            .polling(FAST)
            .on_liveness(move |l| {
                let _ = live_tx.send(l);
            })
            .cancellation(cancel.clone())
            .run(move |m: Message| {
                let tx = tx.clone();
                async move { tx.send(m.global_position).map_err(anyhow::Error::from) }
            }),
    );
    assert_eq!(next(&mut live_rx).await?, Liveness::FallenBehind);
    assert_eq!(next(&mut live_rx).await?, Liveness::CaughtUp);
    for _ in 0..25 {
        next(&mut rx).await?;
    }
    // 40 new messages at once (one transaction), read in batches of 10: behind, then caught up.
    let (db, mut conn) = (client.clone(), client.pool().get().await?);
    let tx = conn.transaction().await?;
    for i in 0..40 {
        db.write_message_in(&tx, "feed-2", &deposit(i)).await?;
    }
    tx.commit().await?;
    for _ in 0..40 {
        next(&mut rx).await?;
    }
    let mut changes = Vec::new();
    while changes.last() != Some(&Liveness::CaughtUp) || changes.is_empty() {
        changes.push(next(&mut live_rx).await?);
    }
    assert_eq!(changes, [Liveness::FallenBehind, Liveness::CaughtUp]);
    cancel.cancel();
    running.await??;
    Ok(())
}

/// Makes the subscription's next read wait on a table lock, terminates its backend while it
/// waits, and releases the lock: the read fails as if the database went away.
async fn terminate_waiting_reader(db: &TestDb) -> anyhow::Result<()> {
    let mut locker = db.client().await?;
    let tx = locker.transaction().await?;
    tx.batch_execute("LOCK TABLE message_store.messages IN ACCESS EXCLUSIVE MODE")
        .await?;
    let watcher = db.client().await?;
    eventually("a reader to wait on the lock", || async {
        let waiting = watcher
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock' AND backend_type = 'client backend'",
                &[],
            )
            .await?;
        Ok(!waiting.is_empty())
    })
    .await?;
    let terminated: i64 = watcher
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock' \
             AND backend_type = 'client backend'",
            &[],
        )
        .await?
        .get(0);
    anyhow::ensure!(terminated == 1, "terminated {terminated} backends");
    tx.rollback().await?;
    Ok(())
}

#[tokio::test]
async fn a_subscription_reports_a_drop_and_stops_without_recovery() -> anyhow::Result<()> {
    let (db, client) = setup().await?;
    let dropped = Arc::new(Mutex::new(Vec::new()));
    let seen = dropped.clone();
    let running = tokio::spawn(
        client
            .subscribe_category("alarm")
            .polling(FAST)
            .on_dropped(move |e| seen.lock().unwrap().push(format!("{e:?}")))
            .run(|_: Message| async { anyhow::Ok(()) }),
    );
    terminate_waiting_reader(&db).await?;
    let err = tokio::time::timeout(DEADLINE, running).await??.unwrap_err();
    assert!(
        matches!(&err, SubscriptionError::Read(MessageDbError::Database(_))),
        "{err:?}"
    );
    assert_eq!(dropped.lock().unwrap().len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_subscription_reports_a_drop_and_recovers_when_configured() -> anyhow::Result<()> {
    let (db, client) = setup().await?;
    let (drop_tx, mut drop_rx) = mpsc::unbounded_channel();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let running = tokio::spawn(
        client
            .subscribe_category("alarm")
            .polling(FAST)
            .recover_after(Duration::from_millis(20))
            .on_dropped(move |e| {
                let _ = drop_tx.send(matches!(e, SubscriptionError::Read(_)));
            })
            .cancellation(cancel.clone())
            .run(move |m: Message| {
                let tx = tx.clone();
                async move { tx.send(m.id).map_err(anyhow::Error::from) }
            }),
    );
    client.write_message("alarm-1", &deposit(1)).await?;
    next(&mut rx).await?;
    terminate_waiting_reader(&db).await?;
    assert!(next(&mut drop_rx).await?, "the drop is a read failure");
    let after = deposit(2);
    client.write_message("alarm-2", &after).await?;
    assert_eq!(next(&mut rx).await?, after.message_id(), "recovered");
    cancel.cancel();
    running.await??;
    Ok(())
}

#[tokio::test]
async fn a_handler_error_stops_the_subscription_and_is_reported() -> anyhow::Result<()> {
    let (_db, client) = setup().await?;
    client.write_message("mail-1", &deposit(1)).await?;
    let dropped = Arc::new(Mutex::new(0));
    let seen = dropped.clone();
    let err = tokio::time::timeout(
        DEADLINE,
        client
            .subscribe_category("mail")
            .polling(FAST)
            .on_dropped(move |_| *seen.lock().unwrap() += 1)
            .run(|_: Message| async { Err(anyhow::anyhow!("smtp down")) }),
    )
    .await?
    .unwrap_err();
    assert!(matches!(err, SubscriptionError::Handler(_)), "{err:?}");
    assert_eq!(*dropped.lock().unwrap(), 1);
    Ok(())
}

#[tokio::test]
async fn consumer_group_subscriptions_split_a_category() -> anyhow::Result<()> {
    let (_db, client) = setup().await?;
    let mut written = BTreeSet::new();
    for i in 0..60u32 {
        let m = deposit(i);
        written.insert(m.message_id());
        client
            .write_message(&format!("shipment-{}", i % 20), &m)
            .await?;
    }
    let mut streams_of = Vec::new();
    let mut union = BTreeSet::new();
    for member in 0..2 {
        let cancel = CancellationToken::new();
        let mut stream = Box::pin(
            client
                .subscribe_category("shipment")
                .consumer_group(member, 2)
                .polling(FAST)
                .cancellation(cancel.clone())
                .into_stream(),
        );
        let expected = written.len() - union.len();
        let mut streams = BTreeSet::new();
        let mut got = 0;
        // Member 0 takes what is its own; member 1 must take exactly the rest.
        let target = if member == 0 {
            client
                .get_category_messages("shipment", &CategoryReadOptions::new().consumer_group(0, 2))
                .await?
                .len()
        } else {
            expected
        };
        while got < target {
            let m = tokio::time::timeout(DEADLINE, stream.next())
                .await?
                .context("stream ended")??;
            assert!(union.insert(m.id), "a message went to both members");
            streams.insert(m.stream_name);
            got += 1;
        }
        cancel.cancel();
        streams_of.push(streams);
    }
    assert_eq!(union, written);
    assert!(streams_of[0].is_disjoint(&streams_of[1]));
    Ok(())
}

#[test]
fn the_install_script_explains_a_missing_npm_or_psql() -> anyhow::Result<()> {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/ensure-message-db.sh");
    let empty = std::env::temp_dir().join(format!("mdb-empty-{}", uuid::Uuid::new_v4().simple()));
    let bin = empty.join("bin");
    std::fs::create_dir_all(&bin)?;
    let run = |path: &std::path::Path| {
        std::process::Command::new("/bin/bash")
            .arg(&script)
            .env("PATH", path)
            .env("MESSAGE_DB_HOME", empty.join("home"))
            .output()
    };
    // No psql at all.
    let out = run(&bin)?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("psql is missing"));
    // psql but no npm, and no package yet.
    let psql = std::process::Command::new("/bin/bash")
        .args(["-c", "command -v psql"])
        .output()?;
    let psql = String::from_utf8(psql.stdout)?;
    std::os::unix::fs::symlink(psql.trim(), bin.join("psql"))?;
    let out = run(&bin)?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("npm is missing"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&empty)?;
    Ok(())
}
