//! What the relay's statements cost as PostgreSQL runs them, read from the plans `auto_explain`
//! logs on a cluster of their own: no JIT compilation of a claim, however many keys it takes,
//! and statistics that read the backlog, not the history the retention keeps.

use eventrail_outbox::{InMemorySink, OutboxOptions, Relay};

use crate::harness::{TestDb, eventually, logged_plans, plan_buffers};
use crate::outbox::{check_order, count, enqueue, fast, start};
use crate::outbox_progress::messages;

/// Relays with `options` until `sent` messages are marked sent, then stops; returns what the
/// sink received.
async fn relay_until_sent(
    db: &TestDb,
    options: OutboxOptions,
    sent: i64,
) -> anyhow::Result<InMemorySink> {
    let sink = InMemorySink::new();
    let relay = start(Relay::connect(&db.config().into(), sink.clone(), options)?);
    eventually(120, "everything is sent", || async {
        Ok(count(db, "state = 'sent'").await? == sent)
    })
    .await?;
    relay.stop().await?;
    Ok(sink)
}

/// A claim of a few thousand keys (a relay's first claim, or any claim of keys with one message
/// each) is estimated dear enough for PostgreSQL's JIT compilation (`jit_above_cost`, 100,000 by
/// default), which takes far longer than the claim itself: hundreds of milliseconds for a
/// statement that runs in tens. The relay's statements run without it.
#[tokio::test]
async fn a_claim_of_thousands_of_keys_is_not_jit_compiled() -> anyhow::Result<()> {
    let cluster = integration_tests::servers::Cluster::start(None).await?;
    let db = TestDb::on(&cluster.admin_url).await?;
    let jit: bool = db
        .client()
        .await?
        .query_one("SELECT pg_jit_available()", &[])
        .await?
        .get(0);
    assert!(
        jit,
        "this PostgreSQL can compile with JIT (else nothing is tested)"
    );
    enqueue(&db, messages(4000, 4000)).await?;
    db.client()
        .await?
        .batch_execute("ANALYZE eventrail.outbox, eventrail.outbox_keys")
        .await?;
    db.log_plans().await?;
    // One claim takes every key.
    let sink = relay_until_sent(&db, fast().batch_size(10_000), 4000).await?;
    let times = check_order(&sink.messages());
    assert!(times.len() == 4000 && times.values().all(|&n| n == 1));

    let log = std::fs::read_to_string(cluster.data().join("server.log"))?;
    let claims = logged_plans(&log, "WITH runs AS");
    assert!(!claims.is_empty(), "the claims' plans were logged");
    let compiled: Vec<&&str> = claims.iter().filter(|p| p.contains("JIT:")).collect();
    assert!(
        compiled.is_empty(),
        "{} of {} claims compiled with JIT, the first:\n{}",
        compiled.len(),
        claims.len(),
        compiled.first().map_or("", |p| **p)
    );
    Ok(())
}

/// The pending-messages gauges are read every few seconds by every relay. A message sent stays
/// in the outbox for the retention (a week by default): counting the unsent ones must not read
/// those. With 30,000 messages sent and kept and 20 pending, the statistics read a few pages
/// per key, not the outbox's every page.
#[tokio::test]
async fn relay_statistics_read_the_backlog_not_the_kept_history() -> anyhow::Result<()> {
    let cluster = integration_tests::servers::Cluster::start(None).await?;
    let db = TestDb::on(&cluster.admin_url).await?;
    enqueue(&db, messages(30_000, 20)).await?;
    relay_until_sent(&db, fast().batch_size(5_000), 30_000).await?;
    enqueue(&db, messages(20, 20)).await?;
    let client = db.client().await?;
    client
        .batch_execute("ANALYZE eventrail.outbox, eventrail.outbox_keys")
        .await?;
    let pages: i64 = client
        .query_one(
            "SELECT pg_relation_size('eventrail.outbox') / current_setting('block_size')::int8",
            &[],
        )
        .await?
        .get(0);
    db.log_plans().await?;
    relay_until_sent(&db, fast(), 30_020).await?;

    let log = std::fs::read_to_string(cluster.data().join("server.log"))?;
    let stats = logged_plans(&log, "SELECT count(*), coalesce(extract(epoch");
    assert!(!stats.is_empty(), "the statistics' plans were logged");
    for plan in stats {
        let buffers = plan_buffers(plan)?;
        assert!(
            buffers * 2 < u64::try_from(pages)?,
            "the statistics touched {buffers} buffers of an outbox of {pages} pages:\n{plan}"
        );
    }
    Ok(())
}
