//! The payments service of the remote-step tests, in its own OS process: see
//! [`integration_tests::saga_participant`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    integration_tests::saga_participant::run(std::env::args().skip(1)).await
}
