//! `eventrail-bench table`: every row of the performance table in one run on the same server,
//! each beside its raw twin, then the peers appending the same payload.

use anyhow::Context;

use crate::{Row, append_rows, outbox_bench, peers_bench, print_rows, scale_bench, worker_bench};

/// Runs of the catch-up and relay rows, averaged (the append and standby rows alternate as
/// many rounds on their own).
const ROUNDS: usize = 3;

/// Runs every measurement and prints one table (and the peers' table under it).
pub(crate) async fn run(
    seconds: u64,
    events: usize,
    messages: usize,
    peers: bool,
    scale_sizes: &[u64],
) -> anyhow::Result<()> {
    let mut rows = append_rows(seconds, false).await.context("appends")?;
    let admin_url = eventrail_devdb::database_url().await?;
    // Three consumers with the default options, each right after its COPY TO.
    let (copy, rates) = worker_bench::catch_up(&admin_url, events, &[None; ROUNDS], false)
        .await
        .context("catch-up")?;
    rows.push(Row {
        scenario: format!("catch-up, one consumer vs COPY TO ({events})"),
        raw: copy,
        eventrail: rates.iter().sum::<f64>() / rates.len().max(1) as f64,
        target: 0.6,
    });
    let (standby_copy, standby_rate) = worker_bench::catch_up_on_standby(events / 4)
        .await
        .context("catch-up on a standby")?;
    rows.push(Row {
        scenario: format!("catch-up on a hot standby vs its COPY TO ({})", events / 4),
        raw: standby_copy,
        eventrail: standby_rate,
        target: 0.6,
    });
    let load = outbox_bench::Load {
        messages,
        keys: 2_000,
        relays: 2,
        batch: 10_000,
        parked_keys: 0,
    };
    // The relay benchmark run ROUNDS times (each bare loop right before its relays), averaged.
    let mut runs = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        runs.push(outbox_bench::measure(load, false).await.context("relay")?);
    }
    let relay = outbox_bench::RelayFigures::mean(&runs).context("no relay run")?;
    rows.push(Row {
        scenario: "relay → NATS JetStream vs bare publish loop".into(),
        raw: relay.nats_bare,
        eventrail: relay.nats_relay,
        target: 0.6,
    });
    rows.push(Row {
        scenario: "relay → NATS, retention 0 (settle deletes)".into(),
        raw: relay.nats_bare,
        eventrail: relay.nats_relay_deleting,
        target: 0.6,
    });
    rows.push(Row {
        scenario: "relay → RabbitMQ vs bare loop (confirms)".into(),
        raw: relay.amqp_bare,
        eventrail: relay.amqp_relay,
        target: 0.7,
    });
    rows.push(Row {
        scenario: "relay → RabbitMQ, retention 0 (settle deletes)".into(),
        raw: relay.amqp_bare,
        eventrail: relay.amqp_relay_deleting,
        target: 0.7,
    });
    println!();
    print_rows("events/s; relay rows in messages/s", &rows);
    outbox_bench::print_cpu(&relay.cpu, messages);
    let scale_sizes: Vec<u64> = scale_sizes.iter().copied().filter(|s| *s > 0).collect();
    if !scale_sizes.is_empty() {
        let scale = scale_bench::measure(&scale_sizes, 2000, None)
            .await
            .context("latency as the log grows")?;
        println!("\nAppend and read latency as the log grows (a throwaway cluster, fsync off)");
        scale_bench::print(&scale);
    }
    if peers {
        let peers = peers_bench::measure(seconds, &[1, 4, 16])
            .await
            .context("peers")?;
        println!(
            "\nPeers appending the same payload, one event per transaction ({seconds} s a row)"
        );
        println!("| peer | 1 writer | 4 writers | 16 writers |");
        println!("|---|--:|--:|--:|");
        let mut systems: Vec<&str> = Vec::new();
        for system in peers.iter().filter_map(|r| r["system"].as_str()) {
            if !systems.contains(&system) {
                systems.push(system);
            }
        }
        for system in systems {
            let rate = |writers: u64| {
                peers
                    .iter()
                    .find(|r| r["system"] == system && r["writers"] == writers)
                    .and_then(|r| r["events_per_second"].as_f64())
                    .map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"))
            };
            println!("| {system} | {} | {} | {} |", rate(1), rate(4), rate(16));
        }
        let eventrail: Vec<String> = rows
            .iter()
            .take(3)
            .map(|r| format!("{:.0}", r.eventrail))
            .collect();
        println!("| eventrail (above) | {} |", eventrail.join(" | "));
    }
    Ok(())
}
