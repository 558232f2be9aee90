//! A worker in its own OS process, for the failover tests: `test-worker <database-url> <name>
//! <consumers>`. Prints `worker <id>` once registered and runs until killed or stdin closes.

use eventrail_store_postgres::PgEventStore;
use eventrail_worker::{Worker, WorkerOptions};
use integration_tests::Recorder;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(name), Some(consumers)) = (args.next(), args.next(), args.next()) else {
        anyhow::bail!("usage: test-worker <database-url> <name> <consumers>");
    };
    let consumers: usize = consumers.parse()?;
    let store = PgEventStore::connect(&url)?;
    let mut builder = Worker::builder(store, url.parse()?).options(
        WorkerOptions::new()
            .name(name.clone())
            .heartbeat_interval(std::time::Duration::from_millis(200))
            .rebalance_interval(std::time::Duration::from_millis(200)),
    );
    for i in 0..consumers {
        builder = builder.consumer(Recorder::new(format!("c{i}"), name.clone()));
    }
    let worker = builder.build()?;
    println!("worker {}", worker.id());
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        // Stdin closing (the test dropping the pipe) asks for a graceful stop.
        while matches!(tokio::io::stdin().read(&mut buf).await, Ok(n) if n > 0) {}
        stop.cancel();
    });
    worker.run(shutdown).await?;
    Ok(())
}
