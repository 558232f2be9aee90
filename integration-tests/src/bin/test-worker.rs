//! A worker in its own OS process, for the failover tests: see
//! [`integration_tests::worker_process`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    integration_tests::worker_process::run(std::env::args().skip(1)).await
}
