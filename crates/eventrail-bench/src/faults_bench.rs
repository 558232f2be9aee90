//! Consumer lag under churn and recovery after faults (`eventrail-bench faults`).
//!
//! Runs the torture driver of the integration tests (`integration_tests::torture`) on a
//! throwaway cluster and a nats-server of its own, with worker processes that are this binary
//! (`eventrail-bench worker-process`), all with the default worker options:
//! 1. lag under churn: 30 writers, transactions open up to 300 ms, 15 % rolled back, no faults;
//! 2. the same with a transaction left open in another database of the cluster;
//! 3. every fault kind `rounds` times, its recovery time.
//!
//! Targets (from the issue): lag p99 under churn ≤ 1 s; recovery ≤ 2 s after a leader SIGKILL,
//! ≤ heartbeat timeout + 1 s after a SIGSTOP, ≤ 5 s after the database accepts connections again.

use std::time::Duration;

use integration_tests::fleet::WorkerCommand;
use integration_tests::torture::{Fault, Report, Samples, TortureConfig, run as torture};

fn workers() -> anyhow::Result<WorkerCommand> {
    let mut command =
        WorkerCommand::new(std::env::current_exe()?).env("EVENTRAIL_TEST_DEFAULT_OPTIONS", 1);
    command.prefix = vec!["worker-process".into()];
    Ok(command)
}

fn churn(seconds: u64, elsewhere: bool) -> anyhow::Result<TortureConfig> {
    let mut config = TortureConfig::long(workers()?, 1);
    config.faults.clear();
    config.quiet = Duration::from_secs(seconds);
    config.long_transaction_elsewhere = elsewhere;
    // A measurement, not a check: the table shows the figure against its target.
    config.lag_bound = Duration::from_secs(3600);
    Ok(config)
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{} ms", d.as_millis()))
}

fn row(what: &str, s: &Samples, p50: &str, p99: &str, target: &str) {
    println!(
        "| {what} | {} | {} | {} | {} | {target} |",
        s.len(),
        if p50.is_empty() {
            ms(s.percentile(50.0))
        } else {
            p50.into()
        },
        if p99.is_empty() {
            ms(s.percentile(99.0))
        } else {
            p99.into()
        },
        ms(s.max()),
    );
}

/// Runs the three measurements and prints one table.
///
/// # Errors
/// A broken invariant of the torture run, or a server that cannot be started.
pub(crate) async fn run(seconds: u64, rounds: usize) -> anyhow::Result<()> {
    eprintln!("lag under churn, {seconds} s ...");
    let plain = torture(churn(seconds, false)?).await?;
    eprintln!("lag under churn with a long transaction in another database, {seconds} s ...");
    let elsewhere = torture(churn(seconds, true)?).await?;
    eprintln!("faults, {rounds} rounds with the default worker options ...");
    let mut config = TortureConfig::long(workers()?, 1);
    config.rounds = rounds;
    config.quiet = Duration::from_secs(5);
    config.lag_bound = Duration::from_secs(3600);
    let faults: Report = torture(config).await?;
    println!("{faults}");
    println!("| measure | samples | p50 | p99 | max | target |");
    println!("|---|--:|--:|--:|--:|---|");
    row("lag under churn", &plain.lag_quiet, "", "", "p99 ≤ 1 s");
    row(
        "lag under churn + long tx in another db",
        &elsewhere.lag_quiet,
        "",
        "",
        "p99 ≤ 1 s",
    );
    let empty = Samples::default();
    for (fault, target) in [
        (Fault::WorkerKilled, "≤ 2 s (leader or follower)"),
        (Fault::WorkerFrozen, "≤ 6 s (heartbeat timeout 5 s + 1 s)"),
        (Fault::SessionTerminated, "-"),
        (Fault::DatabaseRestarted, "≤ 5 s after it accepts again"),
        (Fault::RelayKilled, "- (the relay's lease)"),
        (Fault::BrokerRestarted, "-"),
    ] {
        let s = faults.recoveries.get(&fault).unwrap_or(&empty);
        row(&format!("recovery: {fault:?}"), s, "", "", target);
    }
    Ok(())
}
