//! Quickstart: a bank account whose balance is kept by a stateless processor, in the same
//! transaction as the events, and which refuses overdrafts.
//!
//! Run it with `cargo run -p example-quickstart` (it finds or starts a PostgreSQL; set
//! `DATABASE_URL` to use yours). It works in a database of its own, `eventrail_quickstart`,
//! created afresh on every run.

use anyhow::Context;
use eventrail::postgres::PgConnectOptions;
use eventrail::postgres::PgEventStore;
use eventrail::postgres::tokio_postgres::Transaction;
use eventrail::{
    AppendRequest, Event, EventRegistry, EventStore, ExpectedVersion, ProcessorError,
    ReadStreamOptions, RecordedEvent, StatelessProcessor, StoreError, StreamName,
};
use serde::{Deserialize, Serialize};

/// The account's events: the `type` field carries the event type.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: i64 },
    Withdrawn { amount: i64 },
}

impl Event for AccountEvent {
    const EVENT_TYPES: &'static [&'static str] = &["Opened", "Deposited", "Withdrawn"];

    fn event_type(&self) -> &'static str {
        match self {
            Self::Opened { .. } => "Opened",
            Self::Deposited { .. } => "Deposited",
            Self::Withdrawn { .. } => "Withdrawn",
        }
    }
}

/// Keeps `balances` up to date inside the append transaction and vetoes overdrafts.
struct Balances {
    registry: EventRegistry<AccountEvent>,
}

impl<'t> StatelessProcessor<Transaction<'t>> for Balances {
    fn name(&self) -> &str {
        "balances"
    }

    async fn process(
        &self,
        tx: &Transaction<'t>,
        events: &[RecordedEvent],
    ) -> Result<(), ProcessorError> {
        for recorded in events {
            let change = match self
                .registry
                .decode(recorded)
                .map_err(ProcessorError::failed)?
            {
                AccountEvent::Opened { .. } => 0,
                AccountEvent::Deposited { amount } => amount,
                AccountEvent::Withdrawn { amount } => -amount,
            };
            let balance: i64 = tx
                .query_one(
                    "INSERT INTO balances (account, balance) VALUES ($1, $2)
                     ON CONFLICT (account) DO UPDATE SET balance = balances.balance + $2
                     RETURNING balance",
                    &[&recorded.stream.id(), &change],
                )
                .await
                .map_err(ProcessorError::failed)?
                .get(0);
            if balance < 0 {
                return Err(ProcessorError::veto(format!("balance would be {balance}")));
            }
        }
        Ok(())
    }
}

async fn fresh_database() -> anyhow::Result<String> {
    let admin_url = eventrail_devdb::database_url().await?;
    let url = eventrail_devdb::recreate_database(&admin_url, "eventrail_quickstart")
        .await
        .context("creating the example database")?;
    let (client, connection) = url
        .parse::<PgConnectOptions>()?
        .connect("example-quickstart")
        .await?;
    tokio::spawn(connection);
    client
        .batch_execute("CREATE TABLE balances (account text PRIMARY KEY, balance bigint NOT NULL)")
        .await?;
    Ok(url)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = fresh_database().await?;
    let registry = EventRegistry::<AccountEvent>::new();
    let pool = url.parse::<PgConnectOptions>()?.pool("quickstart")?;
    let store = PgEventStore::builder(pool)
        .processor(Balances {
            registry: EventRegistry::new(),
        })
        .build()?;
    store.migrate().await?;
    println!("event store ready in database eventrail_quickstart");

    let account: StreamName = "account-ada".parse()?;
    let opened = store
        .append(AppendRequest::new(
            account.clone(),
            ExpectedVersion::NoStream,
            registry.encode_all(&[
                AccountEvent::Opened {
                    owner: "Ada".into(),
                },
                AccountEvent::Deposited { amount: 100 },
            ])?,
        ))
        .await?;
    println!(
        "opened {account} with 100 (version {}, positions {:?})",
        opened.stream_version, opened.positions
    );

    let withdrawn = store
        .append(AppendRequest::new(
            account.clone(),
            ExpectedVersion::Exact(opened.stream_version),
            vec![registry.encode(&AccountEvent::Withdrawn { amount: 30 })?],
        ))
        .await?;
    println!("withdrew 30 (version {})", withdrawn.stream_version);

    match store
        .append(AppendRequest::new(
            account.clone(),
            ExpectedVersion::Exact(withdrawn.stream_version),
            vec![registry.encode(&AccountEvent::Withdrawn { amount: 500 })?],
        ))
        .await
    {
        Err(StoreError::Vetoed { by, reason }) => {
            println!("withdrawing 500 was refused by {by}: {reason}")
        }
        other => anyhow::bail!("the overdraft should have been vetoed, got {other:?}"),
    }

    match store
        .append(AppendRequest::new(
            account.clone(),
            ExpectedVersion::Exact(0),
            vec![registry.encode(&AccountEvent::Deposited { amount: 1 })?],
        ))
        .await
    {
        Err(e @ StoreError::WrongExpectedVersion { .. }) => {
            println!("a stale writer was refused: {e}")
        }
        other => anyhow::bail!("a stale expected version should conflict, got {other:?}"),
    }

    println!("\nhistory of {account}:");
    for recorded in store
        .read_stream(&account, ReadStreamOptions::default())
        .await?
    {
        println!(
            "  v{} @{}  {:?}",
            recorded.stream_version,
            recorded.global_position,
            registry.decode(&recorded)?
        );
    }
    let pool = store.pool().get().await?;
    let balance: i64 = pool
        .query_one("SELECT balance FROM balances WHERE account = 'ada'", &[])
        .await?
        .get(0);
    println!("balance of ada: {balance}");
    anyhow::ensure!(balance == 70, "the balance should be 70");
    Ok(())
}
