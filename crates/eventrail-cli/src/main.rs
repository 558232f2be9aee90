//! The `eventrail` operator command.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = eventrail_cli::Cli::parse();
    let mut out = std::io::stdout().lock();
    eventrail_cli::run(cli, &mut out).await
}
