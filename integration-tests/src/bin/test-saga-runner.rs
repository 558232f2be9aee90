//! A saga runner in its own OS process, for the crash tests: see
//! [`integration_tests::saga_process`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    integration_tests::saga_process::run(std::env::args().skip(1)).await
}
