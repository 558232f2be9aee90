//! Command handling: a bank account whose commands are decided on state folded from its stream,
//! with typed rejections, retries when other writers append concurrently, and snapshots.
//!
//! Run it with `cargo run -p example-commands` (it finds or starts a PostgreSQL; set
//! `DATABASE_URL` to use yours). It works in a database of its own, `eventrail_commands`, created
//! afresh on every run.

use std::fmt;
use std::sync::Arc;

use anyhow::Context;
use eventrail::postgres::PgEventStore;
use eventrail::{
    CommandError, CommandHandler, Event, EventRegistry, EventStore, Snapshots, StreamName,
};
use serde::{Deserialize, Serialize};

/// The account's events: the `type` field carries the event type.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: u64 },
    Withdrawn { amount: u64 },
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

/// The state commands are decided on; serde because it is snapshotted.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Account {
    owner: Option<String>,
    balance: u64,
}

fn evolve(mut account: Account, event: &AccountEvent) -> Account {
    match event {
        AccountEvent::Opened { owner } => account.owner = Some(owner.clone()),
        AccountEvent::Deposited { amount } => account.balance += amount,
        AccountEvent::Withdrawn { amount } => account.balance -= amount,
    }
    account
}

/// Why a command is refused.
#[derive(Debug)]
enum Refused {
    NotOpen,
    AlreadyOpen,
    Insufficient { balance: u64 },
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotOpen => f.write_str("the account is not open"),
            Self::AlreadyOpen => f.write_str("the account is already open"),
            Self::Insufficient { balance } => write!(f, "insufficient funds: balance {balance}"),
        }
    }
}

/// The commands, each a pure `decide` over the current state.
enum Command {
    Open { owner: String },
    Deposit { amount: u64 },
    Withdraw { amount: u64 },
}

impl Command {
    fn decide(&self, account: &Account) -> Result<Vec<AccountEvent>, Refused> {
        match self {
            Self::Open { owner } if account.owner.is_none() => Ok(vec![AccountEvent::Opened {
                owner: owner.clone(),
            }]),
            Self::Open { .. } => Err(Refused::AlreadyOpen),
            _ if account.owner.is_none() => Err(Refused::NotOpen),
            Self::Deposit { amount } => Ok(vec![AccountEvent::Deposited { amount: *amount }]),
            Self::Withdraw { amount } if *amount > account.balance => Err(Refused::Insufficient {
                balance: account.balance,
            }),
            Self::Withdraw { amount } => Ok(vec![AccountEvent::Withdrawn { amount: *amount }]),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin_url = eventrail_devdb::database_url().await?;
    let url = eventrail_devdb::recreate_database(&admin_url, "eventrail_commands")
        .await
        .context("creating the example database")?;
    let store = Arc::new(PgEventStore::connect(&url)?);
    store.migrate().await?;
    let accounts = Arc::new(
        CommandHandler::new(
            EventRegistry::<AccountEvent>::new(),
            Account::default,
            evolve,
        )
        .retries(50)
        .snapshots(Snapshots::every(50)),
    );
    let account: StreamName = "account-ada".parse()?;

    let handle = {
        let (store, accounts, account) =
            (Arc::clone(&store), Arc::clone(&accounts), account.clone());
        move |command: Command| {
            let (store, accounts, account) =
                (Arc::clone(&store), Arc::clone(&accounts), account.clone());
            async move {
                accounts
                    .handle(&*store, &account, |state: &Account| command.decide(state))
                    .await
            }
        }
    };

    match handle(Command::Deposit { amount: 10 }).await {
        Err(CommandError::Rejected(why)) => println!("deposit before opening refused: {why}"),
        other => anyhow::bail!("a deposit to a closed account should be refused: {other:?}"),
    }
    handle(Command::Open {
        owner: "Ada".into(),
    })
    .await?;
    println!("opened {account}");

    // 100 deposits from 4 concurrent tasks: each conflict is folded in and decided again.
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let handle = handle.clone();
            tokio::spawn(async move {
                let mut retried = 0;
                for _ in 0..25 {
                    retried += handle(Command::Deposit { amount: 1 }).await?.attempts - 1;
                }
                Ok::<_, CommandError<Refused>>(retried)
            })
        })
        .collect();
    let mut retried = 0;
    for task in tasks {
        retried += task.await??;
    }
    let loaded = accounts.load(&*store, &account).await?;
    println!(
        "100 concurrent deposits: balance {}, {retried} retries after concurrent appends",
        loaded.state.balance
    );
    anyhow::ensure!(loaded.state.balance == 100, "no deposit may be lost");
    println!(
        "loading read the snapshot at version {:?} and {} events after it (of {} in the stream)",
        loaded.snapshot_version,
        loaded.events_read,
        loaded.version.map_or(0, |v| v + 1)
    );

    match handle(Command::Withdraw { amount: 500 }).await {
        Err(CommandError::Rejected(why)) => println!("withdrawing 500 refused: {why}"),
        other => anyhow::bail!("an overdraft should be refused: {other:?}"),
    }
    let done = handle(Command::Withdraw { amount: 30 }).await?;
    println!(
        "withdrew 30: balance {}, stream version {:?}",
        done.state.balance, done.stream_version
    );
    anyhow::ensure!(
        store.stream_version(&account).await? == done.stream_version,
        "the outcome names the stream's version"
    );
    Ok(())
}
