//! `eventrail-bench peers`: the append peers of issue 13, measured on the same server with the
//! same small JSON payload, one event per transaction, with 1, 4 and 16 writers: Message DB's
//! `write_message` and Python `eventsourcing` (`scripts/peers/append_peers.py`, installed from
//! PyPI when missing) and Emmett (`scripts/peers/emmett_append.mjs`, installed from npm into
//! `~/.cache/eventrail/peers-node` when missing). Run `eventrail-bench append` beside it for
//! eventrail's own rows.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/peers");

fn json_lines(output: &std::process::Output, what: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    anyhow::ensure!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).context("a peer's result line"))
        .collect()
}

/// Installs Emmett into the cache folder when missing; returns that folder.
fn emmett_home() -> anyhow::Result<PathBuf> {
    let home =
        PathBuf::from(std::env::var("HOME").context("HOME")?).join(".cache/eventrail/peers-node");
    let package = home.join("node_modules/@event-driven-io/emmett-postgresql");
    if !package.exists() {
        std::fs::create_dir_all(&home)?;
        eprintln!(
            "peers: installing Emmett 0.42 from npm into {}",
            home.display()
        );
        if !home.join("package.json").exists() {
            std::fs::write(
                home.join("package.json"),
                "{\"name\": \"eventrail-peers\", \"private\": true}\n",
            )?;
        }
        let status = Command::new("npm")
            .current_dir(&home)
            .args([
                "install",
                "--silent",
                "@event-driven-io/emmett@0.42.0",
                "@event-driven-io/emmett-postgresql@0.42.0",
            ])
            .status()
            .context("npm (Node.js) is needed for the Emmett peer")?;
        anyhow::ensure!(status.success(), "npm install of Emmett failed");
    }
    // Node resolves packages next to the script: run a copy from the cache folder.
    std::fs::copy(
        format!("{SCRIPTS}/emmett_append.mjs"),
        home.join("emmett_append.mjs"),
    )?;
    Ok(home)
}

/// Runs the peers: one JSON object per peer and writer count (`system`, `writers`,
/// `events_per_second`).
///
/// # Errors
/// A database, install or peer failure.
pub(crate) async fn measure(
    seconds: u64,
    writers: &[usize],
) -> anyhow::Result<Vec<serde_json::Value>> {
    let admin_url = eventrail_devdb::database_url().await?;
    let mdb = eventrail_devdb::recreate_database(&admin_url, "eventrail_bench_peers_mdb").await?;
    let install_url = admin_url.clone();
    tokio::task::spawn_blocking(move || {
        eventrail_devdb::install_message_db(&install_url, "eventrail_bench_peers_mdb")
    })
    .await??;
    let es = eventrail_devdb::recreate_database(&admin_url, "eventrail_bench_peers_es").await?;
    let emmett =
        eventrail_devdb::recreate_database(&admin_url, "eventrail_bench_peers_emmett").await?;
    let counts: Vec<String> = writers.iter().map(ToString::to_string).collect();
    let mut rows = json_lines(
        &Command::new("python3")
            .arg(format!("{SCRIPTS}/append_peers.py"))
            .args([&mdb, &es, &seconds.to_string()])
            .args(&counts)
            .output()
            .context("python3 is needed for the Message DB and eventsourcing peers")?,
        "append_peers.py",
    )?;
    let home = emmett_home()?;
    rows.extend(json_lines(
        &Command::new("node")
            .current_dir(&home)
            .args(["emmett_append.mjs", &emmett, &seconds.to_string()])
            .args(&counts)
            .output()
            .context("node is needed for the Emmett peer")?,
        "emmett_append.mjs",
    )?);
    Ok(rows)
}

/// Runs the peers and prints their table.
///
/// # Errors
/// A database, install or peer failure.
pub(crate) async fn run(seconds: u64, writers: &[usize]) -> anyhow::Result<()> {
    let rows = measure(seconds, writers).await?;
    println!(
        "\nPeers appending one small JSON event per transaction, {seconds} s per row, same server"
    );
    println!("| peer | writers | events/s |");
    println!("|---|--:|--:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} |",
            r["system"].as_str().unwrap_or("?"),
            r["writers"],
            r["events_per_second"].as_f64().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}
