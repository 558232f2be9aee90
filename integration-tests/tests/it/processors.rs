//! Stateless processors in the append transaction: read models commit with the events, a veto
//! rolls back everything (events, read models, the caller's business writes).

use eventrail_core::{
    AppendRequest, EventData, EventStore, ExpectedVersion, NewEvent, ProcessorError, RecordedEvent,
    StatelessProcessor, StoreError, StreamName,
};
use eventrail_store_postgres::PgEventStore;
use tokio_postgres::Transaction;

use crate::harness::TestDb;

/// Keeps `balances` and refuses overdrafts.
struct Balances;

impl<'t> StatelessProcessor<Transaction<'t>> for Balances {
    fn name(&self) -> &str {
        "balances"
    }

    async fn process(
        &self,
        tx: &Transaction<'t>,
        events: &[RecordedEvent],
    ) -> Result<(), ProcessorError> {
        for e in events {
            let EventData::Json(data) = &e.data else {
                continue;
            };
            let data = data.value().map_err(ProcessorError::failed)?;
            let amount = data["amount"].as_i64().unwrap_or(0);
            let row = tx
                .query_one(
                    "INSERT INTO balances (account, balance) VALUES ($1, $2)
                     ON CONFLICT (account) DO UPDATE SET balance = balances.balance + $2
                     RETURNING balance",
                    &[&e.stream.id(), &amount],
                )
                .await
                .map_err(ProcessorError::failed)?;
            if row.get::<_, i64>(0) < 0 {
                return Err(ProcessorError::veto(format!(
                    "account {} would be overdrawn",
                    e.stream.id()
                )));
            }
        }
        Ok(())
    }
}

/// Writes an audit row per event (runs before `Balances`).
struct Audit;

impl<'t> StatelessProcessor<Transaction<'t>> for Audit {
    fn name(&self) -> &str {
        "audit"
    }

    async fn process(
        &self,
        tx: &Transaction<'t>,
        events: &[RecordedEvent],
    ) -> Result<(), ProcessorError> {
        for e in events {
            let position = i64::try_from(e.global_position).map_err(ProcessorError::failed)?;
            tx.execute("INSERT INTO audit (position) VALUES ($1)", &[&position])
                .await
                .map_err(ProcessorError::failed)?;
        }
        Ok(())
    }
}

fn amount(n: i64) -> NewEvent {
    NewEvent::json("Changed", serde_json::json!({ "amount": n }))
}

async fn setup() -> anyhow::Result<TestDb> {
    let db = TestDb::new().await?;
    db.client()
        .await?
        .batch_execute(
            "CREATE TABLE balances (account text PRIMARY KEY, balance bigint NOT NULL);
             CREATE TABLE audit (position bigint PRIMARY KEY);
             CREATE TABLE business (note text);",
        )
        .await?;
    Ok(db)
}

async fn count(db: &TestDb, sql: &str) -> anyhow::Result<i64> {
    Ok(db.client().await?.query_one(sql, &[]).await?.get(0))
}

#[tokio::test]
async fn read_models_commit_with_the_events_and_a_veto_rolls_everything_back() -> anyhow::Result<()>
{
    let db = setup().await?;
    let store = PgEventStore::builder(db.pool.clone())
        .processor(Audit)
        .processor(Balances)
        .build()?;
    let account: StreamName = "account-7".parse()?;
    store
        .append(AppendRequest::new(
            account.clone(),
            ExpectedVersion::NoStream,
            vec![amount(100), amount(-30)],
        ))
        .await?;
    assert_eq!(
        count(&db, "SELECT balance FROM balances WHERE account = '7'").await?,
        70
    );
    assert_eq!(count(&db, "SELECT count(*) FROM audit").await?, 2);

    let err = store
        .append(AppendRequest::new(
            account.clone(),
            ExpectedVersion::Exact(1),
            vec![amount(-50), amount(-50)],
        ))
        .await
        .unwrap_err();
    match err {
        StoreError::Vetoed { by, reason } => {
            assert_eq!(by, "balances");
            assert!(reason.contains("overdrawn"), "{reason}");
        }
        other => panic!("expected a veto, got {other}"),
    }
    assert_eq!(
        store.stream_version(&account).await?,
        Some(1),
        "vetoed events were not written"
    );
    assert_eq!(
        count(&db, "SELECT balance FROM balances WHERE account = '7'").await?,
        70,
        "read model unchanged"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM audit").await?,
        2,
        "the other processor's writes rolled back too"
    );
    Ok(())
}

#[tokio::test]
async fn a_veto_inside_the_callers_transaction_undoes_the_append_and_the_caller_rolls_back_its_writes()
-> anyhow::Result<()> {
    let db = setup().await?;
    let store = PgEventStore::builder(db.pool.clone())
        .processor(Audit)
        .processor(Balances)
        .build()?;
    let account: StreamName = "account-8".parse()?;
    let mut client = db.pool.get().await?;

    // The usual shape: `?` propagates the veto and the dropped transaction rolls back.
    let attempt = async {
        let tx = client.transaction().await?;
        tx.execute("INSERT INTO business VALUES ('withdrawal requested')", &[])
            .await?;
        store
            .append_in(
                &tx,
                AppendRequest::new(account.clone(), ExpectedVersion::Any, vec![amount(-5)]),
            )
            .await?;
        tx.commit().await?;
        anyhow::Ok(())
    };
    let err = attempt.await.unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<StoreError>(),
            Some(StoreError::Vetoed { .. })
        ),
        "{err:#}"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM business").await?,
        0,
        "business write rolled back"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM audit").await?, 0);
    assert_eq!(store.stream_version(&account).await?, None);

    // Even a caller that ignores the veto and commits cannot commit the vetoed events: the
    // append ran under a savepoint that was rolled back.
    let tx = client.transaction().await?;
    tx.execute("INSERT INTO business VALUES ('kept')", &[])
        .await?;
    let vetoed = store
        .append_in(
            &tx,
            AppendRequest::new(account.clone(), ExpectedVersion::Any, vec![amount(-5)]),
        )
        .await;
    assert!(matches!(vetoed, Err(StoreError::Vetoed { .. })));
    store
        .append_in(
            &tx,
            AppendRequest::new(account.clone(), ExpectedVersion::NoStream, vec![amount(9)]),
        )
        .await?;
    tx.commit().await?;
    assert_eq!(count(&db, "SELECT count(*) FROM business").await?, 1);
    assert_eq!(
        store.stream_version(&account).await?,
        Some(0),
        "only the accepted event is stored"
    );
    assert_eq!(
        count(&db, "SELECT balance FROM balances WHERE account = '8'").await?,
        9
    );
    assert_eq!(count(&db, "SELECT count(*) FROM audit").await?, 1);
    Ok(())
}

#[tokio::test]
async fn a_failing_processor_is_a_typed_error_and_writes_nothing() -> anyhow::Result<()> {
    let db = TestDb::new().await?; // no `balances` table: the processor's query fails
    let store = PgEventStore::builder(db.pool.clone())
        .processor(Balances)
        .build()?;
    let account: StreamName = "account-9".parse()?;
    let err = store
        .append(AppendRequest::new(
            account.clone(),
            ExpectedVersion::Any,
            vec![amount(1)],
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Processor { ref by, .. } if by == "balances"),
        "{err}"
    );
    assert_eq!(store.stream_version(&account).await?, None);
    Ok(())
}
