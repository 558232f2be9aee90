//! What the relay's statements cost as PostgreSQL runs them, read from the plans `auto_explain`
//! logs on a cluster of their own: no JIT compilation of a claim or of the statistics, however
//! many keys they look at, and statistics that read the backlog, not the history the retention
//! keeps.

use std::path::Path;
use std::time::Duration;

use eventrail_outbox::{InMemorySink, OutboxMessage, OutboxOptions, Relay, Sink, SinkError};

use crate::harness::{TestDb, eventually, logged_plans, plan_buffers};
use crate::outbox::{count, enqueue, fast, start};
use crate::outbox_progress::messages;

/// The start of the claim's second statement, as logged.
const CLAIM: &str = "WITH runs AS";

/// A sink whose publishes never end: what a relay claims stays claimed until it stops.
struct Stalled;

impl Sink for Stalled {
    async fn publish(&self, _: &OutboxMessage) -> Result<(), SinkError> {
        std::future::pending().await
    }
}

/// The start of the statistics' statement, as logged.
const STATS: &str = "SELECT count(*), coalesce(extract(epoch";

/// Relays with `options` to an in-memory sink until `sent` messages are marked sent (and, with
/// `log`, until the statistics' plan is in that server log: the upkeep ran at least once), then
/// stops.
async fn relay_until_sent(
    db: &TestDb,
    options: OutboxOptions,
    sent: i64,
    log: Option<&Path>,
) -> anyhow::Result<()> {
    let relay = start(Relay::connect(
        &db.config().into(),
        InMemorySink::new(),
        options,
    )?);
    eventually(120, "everything is sent", || async {
        Ok(count(db, "state = 'sent'").await? == sent)
    })
    .await?;
    if let Some(log) = log {
        eventually(30, "the statistics to be taken", || async {
            Ok(!logged_plans(&std::fs::read_to_string(log)?, STATS).is_empty())
        })
        .await?;
    }
    relay.stop().await?;
    Ok(())
}

/// Statistics every 100 ms (a relay takes its first one an interval after it starts).
fn frequent_stats(options: OutboxOptions) -> OutboxOptions {
    options.stats_interval(Duration::from_millis(100))
}

/// A claim of a few thousand keys (a relay's first claim, or any claim of keys with a message or
/// two each) is estimated dear enough for PostgreSQL's JIT compilation (`jit_above_cost`, 100,000 by
/// default), which takes far longer than the claim itself: hundreds of milliseconds for a
/// statement that runs in tens. So are the statistics, which look up every key's backlog. The
/// relay's statements run without it.
#[tokio::test]
async fn claims_and_statistics_over_thousands_of_keys_are_not_jit_compiled() -> anyhow::Result<()> {
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
    // 32,000 messages over 8,000 keys, and a sink that never answers, so that the whole
    // backlog stays while the relay claims every key once (one claim of all of it) and takes
    // its statistics over all of it.
    enqueue(&db, messages(32_000, 8_000)).await?;
    db.client()
        .await?
        .batch_execute("ANALYZE eventrail.outbox, eventrail.outbox_keys")
        .await?;
    db.log_plans().await?;
    let log = cluster.data().join("server.log");
    let options = frequent_stats(fast().batch_size(32_000).claims_in_flight(1))
        .shutdown_timeout(Duration::from_millis(100));
    let relay = start(Relay::connect(&db.config().into(), Stalled, options)?);
    eventually(60, "a claim and the statistics", || async {
        let log = std::fs::read_to_string(&log)?;
        Ok(!logged_plans(&log, CLAIM).is_empty() && !logged_plans(&log, STATS).is_empty())
    })
    .await?;
    relay.stop().await?;
    assert_eq!(
        count(&db, "state = 'pending' AND lease_owner IS NULL").await?,
        32_000,
        "what the relay held went back at shutdown"
    );

    let log = std::fs::read_to_string(log)?;
    for (what, query) in [("claims", CLAIM), ("statistics", STATS)] {
        let plans = logged_plans(&log, query);
        assert!(!plans.is_empty(), "the {what}' plans were logged");
        let compiled: Vec<&&str> = plans.iter().filter(|p| p.contains("JIT:")).collect();
        assert!(
            compiled.is_empty(),
            "{} of {} {what} compiled with JIT, the first:\n{}",
            compiled.len(),
            plans.len(),
            compiled.first().map_or("", |p| **p)
        );
    }
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
    relay_until_sent(&db, fast().batch_size(5_000), 30_000, None).await?;
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
    let log = cluster.data().join("server.log");
    relay_until_sent(&db, frequent_stats(fast()), 30_020, Some(&log)).await?;

    let log = std::fs::read_to_string(log)?;
    let stats = logged_plans(&log, STATS);
    for plan in stats {
        let buffers = plan_buffers(plan)?;
        assert!(
            buffers * 2 < u64::try_from(pages)?,
            "the statistics touched {buffers} buffers of an outbox of {pages} pages:\n{plan}"
        );
    }
    Ok(())
}
