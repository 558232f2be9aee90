//! The event store against PostgreSQL: conformance, races, transactions, notifications, codecs.

use std::collections::HashSet;
use std::sync::Arc;

use eventrail_core::{
    AppendRequest, BincodeCodec, Category, Event, EventRegistry, EventStore, ExpectedPosition,
    ExpectedVersion, NewEvent, ReadAllOptions, ReadStreamOptions, StoreError, StreamName,
};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::Barrier;

use crate::harness::TestDb;
use eventrail_store_postgres::PgEventStore;

fn event(n: usize) -> NewEvent {
    NewEvent::json("Happened", serde_json::json!({ "n": n }))
}

#[tokio::test]
async fn conformance_suite() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    eventrail_core::conformance::run(&db.store()).await;
    Ok(())
}

#[tokio::test]
async fn the_in_memory_store_passes_the_same_suite() {
    eventrail_core::conformance::run(&eventrail_core::InMemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_tasks_racing_on_one_stream() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    sixteen_tasks_race_on("race-1".parse()?, &db.store()).await
}

/// Sixteen tasks expect a new `stream` (one wins), then append five events each with exact
/// expectations, retrying on conflicts: every version once, no append written twice.
pub(crate) async fn sixteen_tasks_race_on(
    stream: StreamName,
    store: &eventrail_store_postgres::PgEventStore,
) -> anyhow::Result<()> {
    // Round 1: all expect a new stream; exactly one wins.
    let barrier = Arc::new(Barrier::new(16));
    let mut tasks = Vec::new();
    for n in 0..16 {
        let (store, stream, barrier) = (store.clone(), stream.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store
                .append(AppendRequest::new(
                    stream,
                    ExpectedVersion::NoStream,
                    vec![event(n)],
                ))
                .await
        }));
    }
    let mut winners = 0;
    for t in tasks {
        match t.await? {
            Ok(out) => {
                winners += 1;
                assert_eq!(out.stream_version, 0);
            }
            Err(StoreError::WrongExpectedVersion {
                expected: ExpectedVersion::NoStream,
                actual: Some(0),
                ..
            }) => {}
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(winners, 1, "exactly one NoStream append wins");

    // Round 2: each task appends 5 events with exact expectations, retrying on conflict.
    let barrier = Arc::new(Barrier::new(16));
    let mut tasks = Vec::new();
    for task in 0..16 {
        let (store, stream, barrier) = (store.clone(), stream.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let (mut done, mut conflicts) = (0, 0);
            while done < 5 {
                let version = store.stream_version(&stream).await?.expect("stream exists");
                let req = AppendRequest::new(
                    stream.clone(),
                    ExpectedVersion::Exact(version),
                    vec![event(task * 100 + done)],
                );
                match store.append(req).await {
                    Ok(out) => {
                        assert_eq!(out.stream_version, version + 1);
                        done += 1;
                    }
                    Err(StoreError::WrongExpectedVersion {
                        actual: Some(actual),
                        ..
                    }) => {
                        assert!(actual > version, "a conflict reports a newer version");
                        conflicts += 1;
                    }
                    Err(other) => return Err(anyhow::Error::from(other)),
                }
            }
            anyhow::Ok(conflicts)
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await??;
    }
    let events = store
        .read_stream(&stream, ReadStreamOptions::default().max_count(1000))
        .await?;
    let versions: Vec<u64> = events.iter().map(|e| e.stream_version).collect();
    assert_eq!(
        versions,
        (0..=80).collect::<Vec<_>>(),
        "versions are contiguous"
    );
    let payloads: HashSet<String> = events
        .iter()
        .skip(1)
        .map(|e| match &e.data {
            eventrail_core::EventData::Json(v) => v
                .value()
                .map_or_else(|e| e.to_string(), ToString::to_string),
            eventrail_core::EventData::Binary(_) => String::new(),
        })
        .collect();
    assert_eq!(
        payloads.len(),
        80,
        "80 distinct payloads: no append was written twice"
    );
    assert!(
        conflicts > 0,
        "the race produced conflicts (losers got the typed error)"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn position_preconditions_do_not_race() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = db.store();
    let category: Category = "ledger".parse()?;
    for round in 0..5 {
        let head = store
            .read_category(&category, ReadAllOptions::default().max_count(10_000))
            .await?
            .last()
            .map(|e| e.global_position);
        let barrier = Arc::new(Barrier::new(8));
        let mut tasks = Vec::new();
        for n in 0..8 {
            let (store, category, barrier) = (store.clone(), category.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let stream = StreamName::new("ledger", &format!("{round}x{n}")).expect("valid");
                store
                    .append(
                        AppendRequest::new(stream, ExpectedVersion::Any, vec![event(n)])
                            .with_expected_position(ExpectedPosition::category(category, head)),
                    )
                    .await
            }));
        }
        let mut wins = 0;
        for t in tasks {
            match t.await? {
                Ok(_) => wins += 1,
                Err(StoreError::PositionConflict { head: h, .. }) => assert!(Some(h) > head),
                Err(other) => panic!("unexpected: {other}"),
            }
        }
        assert_eq!(
            wins, 1,
            "round {round}: exactly one writer may move the category past {head:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn append_in_a_caller_transaction_commits_or_rolls_back_with_it() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = db.store();
    let mut client = db.pool.get().await?;
    client
        .batch_execute("CREATE TABLE orders (id text PRIMARY KEY)")
        .await?;
    let stream: StreamName = "order-1".parse()?;

    let tx = client.transaction().await?;
    tx.execute("INSERT INTO orders VALUES ('1')", &[]).await?;
    store
        .append_in(
            &tx,
            AppendRequest::new(stream.clone(), ExpectedVersion::NoStream, vec![event(1)]),
        )
        .await?;
    drop(tx); // rolled back
    assert_eq!(
        store.stream_version(&stream).await?,
        None,
        "events rolled back with the business write"
    );
    assert!(
        client
            .query_opt("SELECT 1 FROM orders", &[])
            .await?
            .is_none()
    );

    let tx = client.transaction().await?;
    tx.execute("INSERT INTO orders VALUES ('1')", &[]).await?;
    store
        .append_in(
            &tx,
            AppendRequest::new(stream.clone(), ExpectedVersion::NoStream, vec![event(1)]),
        )
        .await?;
    // A wrong expectation is a typed error and leaves the transaction usable.
    let err = store
        .append_in(
            &tx,
            AppendRequest::new(stream.clone(), ExpectedVersion::NoStream, vec![event(2)]),
        )
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::WrongExpectedVersion {
            actual: Some(0),
            ..
        }
    ));
    tx.commit().await?;
    assert_eq!(store.stream_version(&stream).await?, Some(0));
    assert!(
        client
            .query_opt("SELECT 1 FROM orders", &[])
            .await?
            .is_some()
    );
    Ok(())
}

#[tokio::test]
async fn every_append_notifies_its_last_position_and_never_data() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = db.store();
    let (client, mut connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    client.batch_execute("LISTEN eventrail_events").await?;
    let out = store
        .append(AppendRequest::new(
            "note-1".parse()?,
            ExpectedVersion::Any,
            vec![event(1), event(2)],
        ))
        .await?;
    let (channel, payload) = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await?
        .expect("a notification");
    assert_eq!(channel, "eventrail_events");
    assert_eq!(payload, out.last_position().to_string());

    // A store configured without notifications sends none: the next notification seen is
    // the one of a store that does notify.
    let quiet = db.store_with(eventrail_store_postgres::PgStoreOptions::new().without_notify());
    quiet
        .append(AppendRequest::new(
            "note-2".parse()?,
            ExpectedVersion::Any,
            vec![event(3)],
        ))
        .await?;
    let loud = store
        .append(AppendRequest::new(
            "note-3".parse()?,
            ExpectedVersion::Any,
            vec![event(4)],
        ))
        .await?;
    let (_, payload) = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await?
        .expect("notification");
    assert_eq!(payload, loud.last_position().to_string());
    Ok(())
}

#[tokio::test]
async fn large_reads_stream_in_pages() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = db.store();
    let mut positions = Vec::new();
    for i in 0..5 {
        let events = (0..5).map(|n| event(i * 5 + n)).collect();
        let stream = StreamName::new(if i % 2 == 0 { "even" } else { "odd" }, &i.to_string())?;
        positions.extend(
            store
                .append(AppendRequest::new(stream, ExpectedVersion::Any, events))
                .await?
                .positions,
        );
    }
    let all: Vec<_> = store
        .stream_all(ReadAllOptions::default().page_size(4))
        .try_collect()
        .await?;
    assert_eq!(
        all.iter().map(|e| e.global_position).collect::<Vec<_>>(),
        positions
    );
    let even: Category = "even".parse()?;
    let evens: Vec<_> = store
        .stream_category(&even, ReadAllOptions::default().page_size(2))
        .try_collect()
        .await?;
    assert_eq!(evens.len(), 15);
    assert!(evens.iter().all(|e| e.stream.category() == "even"));
    let capped: Vec<_> = store
        .stream_all(ReadAllOptions::default().page_size(4).max_count(6))
        .try_collect()
        .await?;
    assert_eq!(
        capped.iter().map(|e| e.global_position).collect::<Vec<_>>(),
        positions[..6],
        "max_count caps the whole stream, page_size only the queries"
    );
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Account {
    Opened { owner: String },
    Deposited { cents: u64 },
}

impl Event for Account {
    const EVENT_TYPES: &'static [&'static str] = &["Opened", "Deposited"];
    fn event_type(&self) -> &'static str {
        match self {
            Self::Opened { .. } => "Opened",
            Self::Deposited { .. } => "Deposited",
        }
    }
}

#[tokio::test]
async fn typed_events_round_trip_with_json_and_bincode() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = db.store();
    let values = vec![
        Account::Opened {
            owner: "ada".into(),
        },
        Account::Deposited { cents: 250 },
    ];

    let json = EventRegistry::<Account>::new();
    let stream: StreamName = "account-json".parse()?;
    store
        .append(AppendRequest::new(
            stream.clone(),
            ExpectedVersion::NoStream,
            json.encode_all(&values)?,
        ))
        .await?;
    let read = store
        .read_stream(&stream, ReadStreamOptions::default())
        .await?;
    assert_eq!(
        read.iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        ["Opened", "Deposited"]
    );
    let back: Vec<Account> = read
        .iter()
        .map(|e| json.decode(e))
        .collect::<Result<_, _>>()?;
    assert_eq!(back, values);

    let binary = EventRegistry::<Account, BincodeCodec>::with_codec(BincodeCodec);
    let stream: StreamName = "account-bin".parse()?;
    store
        .append(AppendRequest::new(
            stream.clone(),
            ExpectedVersion::NoStream,
            binary.encode_all(&values)?,
        ))
        .await?;
    let read = store
        .read_stream(&stream, ReadStreamOptions::default())
        .await?;
    assert!(
        read.iter()
            .all(|e| matches!(e.data, eventrail_core::EventData::Binary(_)))
    );
    let back: Vec<Account> = read
        .iter()
        .map(|e| binary.decode(e))
        .collect::<Result<_, _>>()?;
    assert_eq!(back, values);
    // Reading binary data with the JSON registry is a typed error.
    assert!(matches!(
        json.decode(&read[0]),
        Err(eventrail_core::DecodeError::Codec { .. })
    ));
    // The stored JSON column is queryable.
    let client = db.client().await?;
    let row = client
        .query_one("SELECT data->'Deposited'->>'cents' FROM eventrail.events WHERE stream_name = 'account-json' AND event_type = 'Deposited'", &[])
        .await?;
    assert_eq!(row.get::<_, String>(0), "250");
    Ok(())
}

/// The store's own appends hint after their commit, coalesced: a listener hears the newest
/// position, and a burst of appends sends far fewer hints than appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_appends_hint_after_commit_coalesced() -> anyhow::Result<()> {
    use futures::StreamExt;

    let db = TestDb::new().await?;
    let (client, mut connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    let store = db.store();
    let channel = store
        .notify_channel()
        .expect("a channel by default")
        .to_owned();
    client.batch_execute(&format!("LISTEN {channel}")).await?;
    let mut last = 0;
    for i in 0..200 {
        last = store
            .append(eventrail_core::AppendRequest::new(
                format!("hint-{}", i % 7).parse()?,
                eventrail_core::ExpectedVersion::Any,
                vec![eventrail_core::NewEvent::json("E", serde_json::json!({}))],
            ))
            .await?
            .last_position();
    }
    let mut hints = 0;
    let heard = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(payload) = rx.recv().await {
            hints += 1;
            if payload.parse::<u64>().is_ok_and(|p| p >= last) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(heard, "the newest position {last} was hinted");
    assert!(hints < 200, "{hints} hints for 200 appends: not coalesced");
    Ok(())
}

/// A COPY append whose future is dropped while it waits in its transaction (here for the lock
/// of a stream another transaction appends to) neither writes anything nor hands its connection
/// back to the pool mid-transaction: the next append on a pool of one connection commits at
/// once, while the other transaction still holds its stream.
#[tokio::test]
async fn a_copy_append_dropped_in_its_transaction_leaves_its_connection_to_nobody()
-> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = PgEventStore::new(eventrail_devdb::pool(&db.url, 1)?);
    let batch = |base: usize| -> Vec<NewEvent> { (0..40).map(|i| event(base + i)).collect() };
    // Statements prepared, layout known: the next COPY append goes straight to its transaction.
    store
        .append(AppendRequest::new(
            "bulk-1".parse()?,
            ExpectedVersion::Any,
            batch(0),
        ))
        .await?;

    let other = db.store();
    let mut holder = db.client().await?;
    let holding = holder.transaction().await?;
    let held = batch(100);
    let held_ids: Vec<uuid::Uuid> = held.iter().map(|e| e.id).collect();
    other
        .append_in(
            &holding,
            AppendRequest::new("bulk-2".parse()?, ExpectedVersion::Any, held),
        )
        .await?;
    let waiting = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .append(AppendRequest::new(
                    "bulk-2".parse()?,
                    ExpectedVersion::Any,
                    batch(200),
                ))
                .await
                .map_err(anyhow::Error::from)
        }
    });
    let watcher = db.client().await?;
    integration_tests::servers::eventually(
        10,
        "the COPY append waits for the stream lock",
        || async { Ok(TestDb::lock_waits(&watcher, "advisory").await? == 1) },
    )
    .await?;
    waiting.abort();
    assert!(waiting.await.is_err_and(|e| e.is_cancelled()));

    // The other transaction still holds bulk-2: an append to another stream on the only
    // connection of the pool commits at once.
    let next = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        store.append(AppendRequest::new(
            "bulk-3".parse()?,
            ExpectedVersion::NoStream,
            batch(300),
        )),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the next append waited behind the dropped one"))??;
    assert_eq!(next.stream_version, 39);
    assert_eq!(other.stream_version(&"bulk-3".parse()?).await?, Some(39));

    holding.commit().await?;
    let bulk_2 = other
        .read_stream(
            &"bulk-2".parse()?,
            ReadStreamOptions::default().max_count(1000),
        )
        .await?;
    let ids: Vec<uuid::Uuid> = bulk_2.iter().map(|e| e.id).collect();
    assert_eq!(ids, held_ids, "only the other transaction's events");
    store
        .append(AppendRequest::new(
            "bulk-2".parse()?,
            ExpectedVersion::Exact(39),
            batch(400),
        ))
        .await?;
    Ok(())
}

/// The same for a one-statement append (autocommit) and one through `append_events` (in the
/// store's own transaction, here for a position precondition): dropped while its statement
/// waits for a stream lock, its connection is not handed to the next append, which would wait
/// behind it.
#[tokio::test]
async fn an_append_dropped_mid_statement_leaves_its_connection_to_nobody() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = PgEventStore::new(eventrail_devdb::pool(&db.url, 1)?);
    let other = db.store();
    let watcher = db.client().await?;
    for (round, precondition) in [(0, false), (1, true)] {
        let held: StreamName = format!("held-{round}").parse()?;
        let mut holder = db.client().await?;
        let holding = holder.transaction().await?;
        other
            .append_in(
                &holding,
                AppendRequest::new(held.clone(), ExpectedVersion::Any, vec![event(0)]),
            )
            .await?;
        let waiting = tokio::spawn({
            let (store, held) = (store.clone(), held.clone());
            async move {
                let mut request = AppendRequest::new(held, ExpectedVersion::Any, vec![event(1)]);
                if precondition {
                    request = request.with_expected_position(ExpectedPosition::category(
                        "elsewhere".parse()?,
                        None,
                    ));
                }
                store.append(request).await.map_err(anyhow::Error::from)
            }
        });
        integration_tests::servers::eventually(
            10,
            "the append waits for the stream lock",
            || async { Ok(TestDb::lock_waits(&watcher, "advisory").await? == 1) },
        )
        .await?;
        waiting.abort();
        assert!(waiting.await.is_err_and(|e| e.is_cancelled()));

        let free: StreamName = format!("free-{round}").parse()?;
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            store.append(AppendRequest::new(
                free.clone(),
                ExpectedVersion::NoStream,
                vec![event(2)],
            )),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!("round {round}: the next append waited behind the dropped one")
        })??;
        assert_eq!(other.stream_version(&free).await?, Some(0));
        holding.commit().await?;
    }
    Ok(())
}

/// Plain appends of many events go by binary COPY: the same outcomes as the one-statement path
/// (contiguous versions, positions in version order, typed conflicts and duplicates, binary
/// payloads), also when eight tasks race on one stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_batches_by_copy_keep_versions_positions_and_typed_errors() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = db.store();
    let stream: StreamName = "bulk-1".parse()?;
    let batch = |base: usize| -> Vec<NewEvent> { (0..100).map(|i| event(base + i)).collect() };

    // Eight tasks, each 5 batches of 100 with Any: all land, versions contiguous, each batch's
    // positions increase with its versions and interleave with no other batch of the stream.
    let barrier = Arc::new(Barrier::new(8));
    let mut tasks = Vec::new();
    for task in 0..8 {
        let (store, stream, barrier) = (store.clone(), stream.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut outcomes = Vec::new();
            for round in 0..5 {
                let out = store
                    .append(AppendRequest::new(
                        stream.clone(),
                        ExpectedVersion::Any,
                        batch(task * 1000 + round * 100),
                    ))
                    .await?;
                outcomes.push(out);
            }
            anyhow::Ok(outcomes)
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.extend(t.await??);
    }
    let events = store
        .read_stream(&stream, ReadStreamOptions::default().max_count(10_000))
        .await?;
    let versions: Vec<u64> = events.iter().map(|e| e.stream_version).collect();
    assert_eq!(
        versions,
        (0..4000).collect::<Vec<_>>(),
        "versions are contiguous"
    );
    let positions: Vec<u64> = events.iter().map(|e| e.global_position).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions increase with stream versions"
    );
    for out in &outcomes {
        let in_stream: Vec<u64> = out
            .positions
            .iter()
            .map(|p| {
                events
                    .iter()
                    .find(|e| e.global_position == *p)
                    .map(|e| e.stream_version)
            })
            .collect::<Option<_>>()
            .ok_or_else(|| anyhow::anyhow!("an outcome's position is not in the stream"))?;
        assert_eq!(in_stream.len(), 100);
        assert_eq!(in_stream.last().copied(), Some(out.stream_version));
        assert!(
            in_stream.windows(2).all(|w| w[1] == w[0] + 1),
            "{in_stream:?}"
        );
    }

    // An exact expectation that does not hold writes nothing and names the actual version.
    match store
        .append(AppendRequest::new(
            stream.clone(),
            ExpectedVersion::Exact(10),
            batch(90_000),
        ))
        .await
    {
        Err(StoreError::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, Some(3999)),
        other => panic!("expected a wrong expected version, got {other:?}"),
    }
    let out = store
        .append(AppendRequest::new(
            stream.clone(),
            ExpectedVersion::Exact(3999),
            batch(91_000),
        ))
        .await?;
    assert_eq!(out.stream_version, 4099);

    // A duplicate id in a large batch: nothing of it is written, the id is named.
    let dup = events[5].id;
    let mut with_dup = batch(92_000);
    with_dup[50] = with_dup[50].clone().with_id(dup);
    match store
        .append(AppendRequest::new(
            "bulk-2".parse()?,
            ExpectedVersion::Any,
            with_dup,
        ))
        .await
    {
        Err(StoreError::DuplicateEventId { event_id }) => assert_eq!(event_id, Some(dup)),
        other => panic!("expected a duplicate id, got {other:?}"),
    }
    assert_eq!(store.stream_version(&"bulk-2".parse()?).await?, None);

    // Binary payloads round-trip.
    let binary: Vec<NewEvent> = (0..40u8)
        .map(|i| NewEvent::new("Blob", eventrail_core::EventData::Binary(vec![i; 3])))
        .collect();
    store
        .append(AppendRequest::new(
            "bulk-3".parse()?,
            ExpectedVersion::NoStream,
            binary,
        ))
        .await?;
    let read = store
        .read_stream(&"bulk-3".parse()?, ReadStreamOptions::default())
        .await?;
    assert_eq!(read.len(), 40);
    assert!(read.iter().enumerate().all(|(i, e)| e.data
        == eventrail_core::EventData::Binary(vec![u8::try_from(i).unwrap_or_default(); 3])));
    Ok(())
}

/// Index scans and index entries read on `index` of the events table.
async fn index_reads(db: &TestDb, index: &str) -> anyhow::Result<(i64, i64)> {
    let row = db
        .client()
        .await?
        .query_one(
            "SELECT idx_scan, idx_tup_read FROM pg_stat_user_indexes
              WHERE schemaname = 'eventrail' AND indexrelname = $1",
            &[&index],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

const STREAM_INDEX: &str = "events_stream_version_key";
const CATEGORY_INDEX: &str = "events_category_position_idx";

/// Index entries read per probe of the stream index (the version) and of the category index
/// (with `with_position`, the category's last position), on a stream that grew after the
/// log was analyzed (the statistics estimate it at a row or two): 300 one-event streams,
/// analyzed; then 3,000 events of stream `long-1` by `COPY`; then, on a session of its own, 40
/// one-event appends and 10 of 100 events, each expecting the last version, and with
/// `with_position` each also expecting the category's last position (which goes through
/// `append_events`). A session's statistics reach the views when it ends: each phase runs on a
/// pool of its own, closed after it.
async fn probe_reads(with_position: bool) -> anyhow::Result<(i64, i64)> {
    let db = TestDb::new().await?;
    let store = db.store();
    for i in 0..300 {
        store
            .append(AppendRequest::new(
                format!("short-{i}").parse()?,
                ExpectedVersion::NoStream,
                vec![event(i)],
            ))
            .await?;
    }
    db.client()
        .await?
        .batch_execute("ANALYZE eventrail.events")
        .await?;
    let long: StreamName = "long-1".parse()?;
    let own = PgEventStore::new(eventrail_devdb::pool(&db.url, 1)?);
    let mut last = own
        .append(AppendRequest::new(
            long.clone(),
            ExpectedVersion::NoStream,
            (0..500).map(event).collect(),
        ))
        .await?;
    for _ in 1..6 {
        last = own
            .append(AppendRequest::new(
                long.clone(),
                ExpectedVersion::Exact(last.stream_version),
                (0..500).map(event).collect(),
            ))
            .await?;
    }
    drop(own);
    integration_tests::servers::eventually(20, "the set-up's statistics", || async {
        Ok(index_reads(&db, STREAM_INDEX).await?.0 >= 306)
    })
    .await?;
    let before = (
        index_reads(&db, STREAM_INDEX).await?,
        index_reads(&db, CATEGORY_INDEX).await?,
    );

    let own = PgEventStore::new(eventrail_devdb::pool(&db.url, 1)?);
    for n in 0..50 {
        let size = if n % 5 == 4 { 100 } else { 1 };
        let mut request = AppendRequest::new(
            long.clone(),
            ExpectedVersion::Exact(last.stream_version),
            (0..size).map(event).collect(),
        );
        if with_position {
            request = request.with_expected_position(ExpectedPosition::category(
                long.category().parse()?,
                Some(last.last_position()),
            ));
        }
        last = own.append(request).await?;
    }
    drop(own);
    assert_eq!(last.stream_version, 2999 + 40 + 10 * 100);
    integration_tests::servers::eventually(20, "the appends' statistics", || async {
        Ok(index_reads(&db, STREAM_INDEX).await?.0 >= before.0.0 + 50)
    })
    .await?;
    let per_probe = |(scans, read): (i64, i64), (scans_after, read_after): (i64, i64)| {
        (read_after - read) / (scans_after - scans).max(1)
    };
    Ok((
        per_probe(before.0, index_reads(&db, STREAM_INDEX).await?),
        per_probe(before.1, index_reads(&db, CATEGORY_INDEX).await?),
    ))
}

/// A stream that grew after the log was analyzed keeps appends that read one entry of the stream
/// index, whatever its length: the version probe descends to the stream's newest version.
/// PostgreSQL plans a `max(stream_version)` of a stream it estimates at a row or two as an
/// aggregate over all of the stream's index entries, so that appends read the whole stream.
#[tokio::test]
async fn appends_to_a_long_stream_read_one_entry_of_the_stream_index() -> anyhow::Result<()> {
    let (per_probe, _) = probe_reads(false).await?;
    assert!(
        per_probe <= 2,
        "each version probe read {per_probe} entries of the stream index (the stream holds 3,000 to 4,000 events)"
    );
    Ok(())
}

/// The same through `append_events` (appends with a position precondition), whose probe of the
/// category's last position reads one entry of the category index too.
#[tokio::test]
async fn appends_with_a_position_precondition_to_a_long_stream_read_one_entry_of_each_index()
-> anyhow::Result<()> {
    let (per_version_probe, per_category_probe) = probe_reads(true).await?;
    assert!(
        per_version_probe <= 2,
        "each version probe read {per_version_probe} entries of the stream index (the stream holds 3,000 to 4,000 events)"
    );
    assert!(
        per_category_probe <= 2,
        "each category probe read {per_category_probe} entries of the category index (the category holds 3,000 to 4,000 events)"
    );
    Ok(())
}
