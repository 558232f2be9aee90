//! Message DB from Rust: writes with expected versions, reads a stream back, then splits a
//! category between two consumer group members.
//!
//! Run with `cargo run -p example-message-db`. It installs Message DB from its npm package
//! (`scripts/ensure-message-db.sh`, needs npm and psql) into a fresh database
//! `eventrail_message_db_example` on the PostgreSQL that `eventrail-devdb` finds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use eventrail::message_db::{
    CancellationToken, CategoryReadOptions, ExpectedVersion, ExponentialBackoff, Message,
    MessageDb, MessageDbError, NewMessage, StreamReadOptions,
};
use serde::{Deserialize, Serialize};

const DATABASE: &str = "eventrail_message_db_example";

#[derive(Debug, Serialize, Deserialize)]
struct Deposited {
    amount: u32,
}

/// Creates the example database afresh and installs Message DB into it with the package's own
/// `database/install.sh`.
async fn install_message_db() -> anyhow::Result<String> {
    let admin_url = eventrail_devdb::database_url().await?;
    let url = eventrail_devdb::recreate_database(&admin_url, DATABASE).await?;
    eventrail_devdb::install_message_db(&admin_url, DATABASE)?;
    Ok(url)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = install_message_db().await?;
    let db = MessageDb::connect(&url)?;
    println!("Message DB {}", db.message_store_version().await?);

    // 1. Writes with expected versions.
    let account = "account-1";
    let mut version = ExpectedVersion::NoStream;
    for amount in [10, 20, 5] {
        let message =
            NewMessage::serialize("Deposited", &Deposited { amount })?.expected_version(version);
        let position = db.write_message(account, &message).await?;
        println!("wrote Deposited {amount} at {account}/{position}");
        version = ExpectedVersion::Exact(position);
    }
    let stale = NewMessage::serialize("Deposited", &Deposited { amount: 1 })?
        .expected_version(ExpectedVersion::Exact(0));
    match db.write_message(account, &stale).await {
        Err(MessageDbError::WrongExpectedVersion {
            expected, actual, ..
        }) => println!(
            "a stale writer expecting version {expected} is refused: the stream is at {actual:?}"
        ),
        other => anyhow::bail!("the stale write was not refused: {other:?}"),
    }

    // 2. Read it back.
    let balance: u32 = db
        .get_stream_messages(account, &StreamReadOptions::new())
        .await?
        .iter()
        .map(|m| m.data::<Deposited>().map(|d| d.amount))
        .sum::<Result<_, _>>()?;
    println!("{account} read back: balance {balance}");

    // 3. More accounts, then two consumer group members share the category.
    for id in 2..=8 {
        for amount in [1, 2] {
            let message = NewMessage::serialize("Deposited", &Deposited { amount })?;
            db.write_message(&format!("account-{id}"), &message).await?;
        }
    }
    let total = db
        .get_category_messages("account", &CategoryReadOptions::new())
        .await?
        .len();
    let seen: Arc<Mutex<BTreeMap<u64, BTreeSet<String>>>> = Arc::default();
    let count = Arc::new(Mutex::new(0usize));
    let cancel = CancellationToken::new();
    let mut members = Vec::new();
    for member in 0..2u64 {
        let (seen, count, cancel_all) = (seen.clone(), count.clone(), cancel.clone());
        let subscription = db
            .subscribe_category("account")
            .consumer_group(member, 2)
            .polling(ExponentialBackoff::new(
                Duration::from_millis(10),
                Duration::from_millis(200),
                2.0,
            )?)
            .cancellation(cancel.clone());
        members.push(tokio::spawn(subscription.run(move |m: Message| {
            let (seen, count, cancel_all) = (seen.clone(), count.clone(), cancel_all.clone());
            async move {
                seen.lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .entry(member)
                    .or_default()
                    .insert(m.stream_name);
                let mut count = count.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                *count += 1;
                if *count == total {
                    cancel_all.cancel();
                }
                anyhow::Ok(())
            }
        })));
    }
    tokio::time::timeout(Duration::from_secs(30), async {
        for member in members {
            member.await??;
        }
        anyhow::Ok(())
    })
    .await
    .context("the members did not read the category in 30 s")??;
    let seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    for (member, streams) in seen.iter() {
        println!(
            "member {member} of 2 handled {}",
            streams.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    println!("{total} messages, each handled by exactly one member");
    Ok(())
}
