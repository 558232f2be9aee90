//! A message is sent when its key's progress passes it (migration 11): a settle writes one row
//! per key instead of each message's row, a key keeps its row only while it has unsent
//! messages, and an outbox filled before the migration keeps what it had sent, pending and dead.

use std::time::Duration;

use eventrail_outbox::{
    InMemorySink, NewMessage, OUTBOX_DESTINATIONS_MIGRATION, OUTBOX_MIGRATION, Outbox, OutboxAdmin,
    OutboxOptions, OutboxTables, Relay, outbox_migrator,
};
use eventrail_store_postgres::Migrator;

use crate::harness::{TestDb, connect};
use crate::outbox::{count, enqueue, fast};

/// `n` messages to "orders" over `keys` keys (`key-0`, …), message `i` on key `i % keys`.
pub(crate) fn messages(n: usize, keys: usize) -> Vec<NewMessage> {
    (0..n)
        .map(|i| {
            NewMessage::new(
                "orders",
                format!("key-{}", i % keys),
                i.to_be_bytes().to_vec(),
            )
        })
        .collect()
}

/// A relay with `options` and an in-memory sink, having relayed until a cycle claimed nothing.
async fn relayed(
    pool: &deadpool_postgres::Pool,
    options: OutboxOptions,
) -> anyhow::Result<(InMemorySink, Relay<InMemorySink>)> {
    let sink = InMemorySink::new();
    let relay = Relay::new(pool.clone(), sink.clone(), options)?;
    relay_all(&relay).await?;
    Ok((sink, relay))
}

/// Relays until a cycle claims nothing.
async fn relay_all(relay: &Relay<InMemorySink>) -> anyhow::Result<()> {
    while relay.relay_once().await?.claimed > 0 {}
    Ok(())
}

/// The payloads the sink received, as text, in order.
fn texts(sink: &InMemorySink) -> Vec<String> {
    sink.messages()
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}

/// Each key's payloads in the order the sink received them.
fn per_key(sink: &InMemorySink) -> std::collections::BTreeMap<String, Vec<Vec<u8>>> {
    let mut keys = std::collections::BTreeMap::<String, Vec<Vec<u8>>>::new();
    for m in sink.messages() {
        keys.entry(m.partition_key).or_default().push(m.payload);
    }
    keys
}

async fn key_rows(db: &TestDb) -> anyhow::Result<i64> {
    Ok(db
        .client()
        .await?
        .query_one("SELECT count(*) FROM eventrail.outbox_keys", &[])
        .await?
        .get(0))
}

/// Sending a run writes its key's row: the messages' rows keep the version their enqueue wrote,
/// but for each key's head, which its claim leased (read from `xmin`, the transaction that wrote
/// a row's current version).
#[tokio::test]
async fn sending_a_run_rewrites_no_message_but_its_head() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let outbox = Outbox::new(&OutboxOptions::new())?;
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    let enqueued_by: String = tx
        .query_one("SELECT txid_current()::text", &[])
        .await?
        .get(0);
    outbox.enqueue_batch(&tx, messages(200, 4)).await?;
    tx.commit().await?;

    let (sink, _) = relayed(&db.pool, fast().max_per_key(50)).await?;
    assert_eq!(sink.messages().len(), 200);
    for (key, payloads) in per_key(&sink) {
        let mut sorted = payloads.clone();
        sorted.sort();
        assert_eq!(payloads, sorted, "{key} in order");
    }
    assert_eq!(count(&db, "state = 'sent'").await?, 200);
    let rewritten: i64 = client
        .query_one(
            "SELECT count(*) FROM eventrail.outbox WHERE xmin::text <> $1",
            &[&enqueued_by],
        )
        .await?
        .get(0);
    assert!(
        rewritten <= 4,
        "{rewritten} of 200 rows rewritten: only the 4 heads are leased"
    );
    Ok(())
}

/// A key whose messages are all sent loses its row at the upkeep; a message enqueued later for
/// it starts the key's progress again just below itself, so the key's older messages stay sent
/// and only the new one is published.
#[tokio::test]
async fn a_key_without_unsent_messages_is_forgotten_and_starts_again_when_it_gets_one()
-> anyhow::Result<()> {
    let db = TestDb::new().await?;
    enqueue(&db, messages(30, 3)).await?;
    let (sink, relay) = relayed(&db.pool, fast().retention(Duration::from_secs(3600))).await?;
    assert_eq!(key_rows(&db).await?, 3, "kept until the upkeep");
    relay.cleanup().await?;
    assert_eq!(key_rows(&db).await?, 0, "forgotten");
    assert_eq!(count(&db, "state = 'sent'").await?, 30, "still sent");

    enqueue(
        &db,
        vec![NewMessage::new("orders", "key-1", b"late".to_vec())],
    )
    .await?;
    assert_eq!(count(&db, "state = 'pending'").await?, 1);
    assert_eq!(count(&db, "state = 'sent'").await?, 30);
    relay_all(&relay).await?;
    let delivered = sink.messages();
    assert_eq!(delivered.len(), 31, "the late one once, nothing again");
    assert_eq!(
        delivered.last().map(|m| m.payload.clone()),
        Some(b"late".to_vec())
    );
    let status = OutboxAdmin::new(db.pool.clone(), &OutboxOptions::new())?
        .status()
        .await?;
    assert_eq!((status.pending, status.sent), (0, 31), "{status:?}");
    Ok(())
}

/// A producer that inserts into the outbox with plain SQL (a service in another language, or an
/// older eventrail) gets its key's row from the outbox's trigger: its messages are relayed, for
/// a key whose row the upkeep forgot and for a new key.
#[tokio::test]
async fn messages_inserted_with_plain_sql_are_relayed() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    enqueue(&db, messages(3, 1)).await?;
    let (sink, relay) = relayed(&db.pool, fast()).await?;
    relay.cleanup().await?;
    assert_eq!(key_rows(&db).await?, 0);
    db.client()
        .await?
        .batch_execute(
            "INSERT INTO eventrail.outbox (message_id, partition_key, destination, payload, content_type)
             VALUES (gen_random_uuid(), 'key-0', 'orders', 'plain', 'text/plain'),
                    (gen_random_uuid(), 'key-9', 'orders', 'new', 'text/plain')",
        )
        .await?;
    assert_eq!(count(&db, "state = 'pending'").await?, 2);
    relay_all(&relay).await?;
    let mut late = texts(&sink).split_off(3);
    late.sort();
    assert_eq!(late, ["new", "plain"]);
    Ok(())
}

/// The upkeep never forgets a key whose enqueue is in flight: it takes the keys' enqueue locks
/// without waiting and skips a key whose lock a producer holds.
#[tokio::test]
async fn a_key_enqueued_while_the_upkeep_runs_keeps_its_row_and_is_relayed() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    enqueue(&db, messages(4, 1)).await?;
    let (sink, relay) = relayed(&db.pool, fast()).await?;

    // A producer's transaction enqueues for the key and stays open through the upkeep.
    let outbox = Outbox::new(&OutboxOptions::new())?;
    let mut producer = db.client().await?;
    let tx = producer.transaction().await?;
    outbox
        .enqueue(
            &tx,
            NewMessage::new("orders", "key-0", b"in flight".to_vec()),
        )
        .await?;
    relay.cleanup().await?;
    assert_eq!(key_rows(&db).await?, 1, "the key in flight kept its row");
    tx.commit().await?;
    relay_all(&relay).await?;
    assert_eq!(sink.messages().len(), 5);
    assert_eq!(
        sink.messages().last().map(|m| m.payload.clone()),
        Some(b"in flight".to_vec())
    );
    relay.cleanup().await?;
    assert_eq!(key_rows(&db).await?, 0);
    Ok(())
}

/// An outbox filled before migration 11 (sent, pending and dead messages, marked in their rows)
/// keeps them: the sent ones are not published again, the pending ones are, in order, and a
/// dead one still parks its key.
#[tokio::test]
async fn an_outbox_filled_before_the_migration_keeps_what_it_sent_and_what_it_parked()
-> anyhow::Result<()> {
    let admin_url = eventrail_devdb::database_url().await?;
    let url =
        eventrail_devdb::recreate_database(&admin_url, "eventrail_outbox_before_keys").await?;
    let mut client = connect(&url).await?;
    let tables = OutboxTables::default();
    Migrator::new("eventrail")?
        .with_migrations(&[OUTBOX_MIGRATION, OUTBOX_DESTINATIONS_MIGRATION])
        .with_replacement(
            "{outbox_destinations}",
            "\"eventrail\".\"outbox_destinations\"",
        )
        .with_replacement("{outbox}", "\"eventrail\".\"outbox\"")
        .with_replacement("{inbox}", "\"eventrail\".\"inbox\"")
        .run(&mut client)
        .await?;
    // Key a: two sent, two pending. Key b: one sent, one dead, one pending behind it. Key c:
    // everything sent.
    client
        .batch_execute(
            "INSERT INTO eventrail.outbox (message_id, partition_key, destination, payload, content_type, state, sent_at, attempts)
             SELECT gen_random_uuid(), k, 'orders', convert_to(p, 'UTF8'), 'text/plain', s,
                    CASE WHEN s = 'sent' THEN now() END, CASE WHEN s = 'pending' THEN 0 ELSE 1 END
             FROM (VALUES (1, 'a', 'a1', 'sent'), (2, 'b', 'b1', 'sent'), (3, 'a', 'a2', 'sent'),
                          (4, 'c', 'c1', 'sent'), (5, 'b', 'b2', 'dead'), (6, 'a', 'a3', 'pending'),
                          (7, 'b', 'b3', 'pending'), (8, 'a', 'a4', 'pending')) AS m(n, k, p, s)
             ORDER BY n",
        )
        .await?;
    outbox_migrator("eventrail", &tables)?
        .run(&mut client)
        .await?;

    let pool = eventrail_devdb::pool(&url, 4)?;
    let status = OutboxAdmin::new(pool.clone(), &OutboxOptions::new())?
        .status()
        .await?;
    assert_eq!(
        (status.sent, status.pending, status.blocked),
        (4, 3, 1),
        "{status:?}"
    );
    let (sink, relay) = relayed(&pool, fast()).await?;
    let published = texts(&sink);
    assert_eq!(
        published,
        ["a3", "a4"],
        "only what was pending and not parked"
    );
    let admin = OutboxAdmin::new(pool, &OutboxOptions::new())?;
    assert_eq!(admin.requeue(None).await?, 1);
    relay_all(&relay).await?;
    let published = texts(&sink);
    assert_eq!(published, ["a3", "a4", "b2", "b3"]);
    let status = admin.status().await?;
    assert_eq!((status.sent, status.pending), (8, 0), "{status:?}");
    relay.cleanup().await?;
    assert_eq!(
        client
            .query_one("SELECT count(*) FROM eventrail.outbox_keys", &[])
            .await?
            .get::<_, i64>(0),
        0
    );
    Ok(())
}

/// Producers enqueue one message per transaction on three keys, some rolled back, while two
/// relays send and forget idle keys every few milliseconds: every committed message is
/// published, each key in order, and no key keeps a row once everything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_forgotten_while_producers_enqueue_lose_nothing() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let sink = InMemorySink::new();
    let options = fast()
        .stats_interval(Duration::from_millis(5))
        .max_per_key(4);
    let stop = tokio_util::sync::CancellationToken::new();
    let relays: Vec<_> = (0..2)
        .map(|_| {
            let relay = Relay::new(db.pool.clone(), sink.clone(), options.clone());
            let stop = stop.clone();
            tokio::spawn(async move { anyhow::Ok(relay?.run(stop).await?) })
        })
        .collect();
    let producers: Vec<_> = (0..4u32)
        .map(|p| {
            let pool = db.pool.clone();
            tokio::spawn(async move {
                let outbox = Outbox::new(&OutboxOptions::new())?;
                let mut committed = Vec::new();
                for i in 0..150u32 {
                    let mut client = pool.get().await?;
                    let tx = client.transaction().await?;
                    let key = format!("key-{}", i % 3);
                    let payload = format!("{p}/{i}").into_bytes();
                    outbox
                        .enqueue(&tx, NewMessage::new("orders", &key, payload.clone()))
                        .await?;
                    if i % 7 == 3 {
                        tx.rollback().await?;
                    } else {
                        tx.commit().await?;
                        committed.push((key, payload));
                    }
                }
                anyhow::Ok(committed)
            })
        })
        .collect();
    let mut committed = Vec::new();
    for p in producers {
        committed.extend(p.await??);
    }
    crate::harness::eventually(30, "every committed message to be published", || async {
        Ok(sink.messages().len() >= committed.len())
    })
    .await?;
    crate::harness::eventually(10, "every key's row to be forgotten", || async {
        Ok(key_rows(&db).await? == 0)
    })
    .await?;
    stop.cancel();
    for r in relays {
        r.await??;
    }
    let delivered = sink.messages();
    assert_eq!(delivered.len(), committed.len(), "each once");
    let mut wanted: Vec<_> = committed.clone();
    wanted.sort();
    let mut got: Vec<_> = delivered
        .iter()
        .map(|m| (m.partition_key.clone(), m.payload.clone()))
        .collect();
    got.sort();
    assert_eq!(got, wanted, "exactly the committed messages");
    // Each producer's messages of a key in the order it committed them.
    for (key, payloads) in per_key(&sink) {
        for p in 0..4 {
            let prefix = format!("{p}/");
            let seen: Vec<u32> = payloads
                .iter()
                .map(|x| String::from_utf8_lossy(x).into_owned())
                .filter_map(|x| x.strip_prefix(&prefix).and_then(|n| n.parse().ok()))
                .collect();
            let mut sorted = seen.clone();
            sorted.sort_unstable();
            assert_eq!(seen, sorted, "{key}, producer {p}: in order");
        }
    }
    Ok(())
}
