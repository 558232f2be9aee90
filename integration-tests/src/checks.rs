//! What every fault test checks at the end: each consumer handled each committed event exactly
//! once, in position order.

use tokio_postgres::Client;

use crate::HANDLED_DDL;

/// Creates `handled` plus the order in which rows were written (`seq`), to check order.
///
/// # Errors
/// A database error.
pub async fn create_handled(client: &Client) -> anyhow::Result<()> {
    client.batch_execute(HANDLED_DDL).await?;
    client
        .batch_execute(
            "ALTER TABLE handled ADD COLUMN IF NOT EXISTS seq bigint GENERATED ALWAYS AS IDENTITY",
        )
        .await?;
    Ok(())
}

/// Every one of `consumers` consumers handled every committed event exactly once, in position
/// order (when `handled` has its `seq` column).
///
/// # Errors
/// Which invariant failed, with the figures.
pub async fn assert_exactly_once_in_order(client: &Client, consumers: usize) -> anyhow::Result<()> {
    let committed: i64 = client
        .query_one("SELECT count(*) FROM eventrail.events", &[])
        .await?
        .get(0);
    let rows = client
        .query("SELECT consumer, count(*), count(DISTINCT position) FROM handled GROUP BY consumer ORDER BY consumer", &[])
        .await?;
    anyhow::ensure!(
        rows.len() == consumers,
        "{} of {consumers} consumers handled events",
        rows.len()
    );
    for r in rows {
        let (consumer, n, distinct): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
        anyhow::ensure!(
            (n, distinct) == (committed, committed),
            "{consumer}: {n} rows for {distinct} events, but {committed} events committed"
        );
    }
    let strays: i64 = client
        .query_one("SELECT count(*) FROM handled h WHERE NOT EXISTS (SELECT 1 FROM eventrail.events e WHERE e.global_position = h.position)", &[])
        .await?
        .get(0);
    anyhow::ensure!(strays == 0, "{strays} handled positions hold no event");
    let has_seq: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_name = 'handled' AND column_name = 'seq')",
            &[],
        )
        .await?
        .get(0);
    if has_seq {
        let out_of_order: i64 = client
            .query_one(
                "SELECT count(*) FROM (SELECT position < lag(position) OVER (PARTITION BY consumer ORDER BY seq) AS back FROM handled) x WHERE back",
                &[],
            )
            .await?
            .get(0);
        anyhow::ensure!(
            out_of_order == 0,
            "{out_of_order} events handled out of order"
        );
    }
    Ok(())
}
