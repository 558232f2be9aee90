//! The short torture run (see `integration_tests::torture`): writers with long transactions,
//! rollbacks and savepoint rollbacks; worker processes SIGKILLed, SIGSTOPped and their sessions
//! terminated; the database restarted; the relay killed and its broker restarted — then every
//! invariant checked. `just torture [minutes]` runs the long one.

use integration_tests::fleet::WorkerCommand;
use integration_tests::torture::{Fault, TortureConfig, run};

fn test_worker() -> WorkerCommand {
    WorkerCommand::new(env!("CARGO_BIN_EXE_test-worker"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn torture_short_every_fault_once_nothing_lost_duplicated_or_reordered() -> anyhow::Result<()>
{
    let report = run(TortureConfig::short(test_worker())).await?;
    eprintln!("{report}");
    for fault in Fault::ALL {
        anyhow::ensure!(
            report.recoveries.get(&fault).is_some_and(|s| s.len() == 1),
            "{fault:?} was not injected once"
        );
    }
    anyhow::ensure!(
        report.rolled_back > 0 && report.savepoint_rollbacks > 0 && report.messages > 0
    );
    Ok(())
}

/// `just torture [minutes]`: the long run, with the default worker options.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long: run with `just torture [minutes]`"]
async fn torture_long() -> anyhow::Result<()> {
    let minutes = std::env::var("EVENTRAIL_TORTURE_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(10);
    let report = run(TortureConfig::long(test_worker(), minutes)).await?;
    eprintln!("{report}");
    Ok(())
}
