//! Migrations, schemas, immutability, roles and summary views.

use eventrail_core::{AppendRequest, EventStore, ExpectedVersion, NewEvent, StreamName};
use eventrail_store_postgres::{
    ConfigError, MigrationError, MigrationState, Migrator, PgEventStore, PgStoreOptions,
};
use tokio_postgres::error::SqlState;

use crate::harness::TestDb;

fn event(t: &str) -> NewEvent {
    NewEvent::json(t, serde_json::json!({}))
}

#[tokio::test]
async fn concurrent_runners_apply_each_migration_once_and_a_changed_one_is_refused()
-> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let mut runners = Vec::new();
    for _ in 0..4 {
        let url = db.url.clone();
        runners.push(tokio::spawn(async move {
            let mut client = crate::harness::connect(&url).await?;
            anyhow::Ok(Migrator::new("tenant_a")?.run(&mut client).await?)
        }));
    }
    let mut applied = Vec::new();
    for r in runners {
        applied.extend(r.await??);
    }
    assert_eq!(
        applied,
        [1, 6, 7, 13, 14],
        "one runner applied the store's migrations, the others found them applied"
    );

    let mut client = db.client().await?;
    client
        .execute(
            "UPDATE tenant_a.eventrail_migrations SET checksum = 'edited' WHERE version = 1",
            &[],
        )
        .await?;
    match Migrator::new("tenant_a")?.run(&mut client).await {
        Err(MigrationError::ChecksumMismatch { version: 1, .. }) => {}
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    // The lock was released even though the run failed: another run does not hang.
    client
        .execute(
            "UPDATE tenant_a.eventrail_migrations SET checksum = md5($1) WHERE version = 1",
            &[&Migrator::new("tenant_a")?.migrations()[0].template],
        )
        .await?;
    assert!(
        Migrator::new("tenant_a")?
            .run(&mut client)
            .await?
            .is_empty()
    );
    Ok(())
}

#[tokio::test]
async fn a_store_in_another_schema_is_separate() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let mut client = db.client().await?;
    Migrator::new("tenant_b")?.run(&mut client).await?;
    let tenant = db.store_with(PgStoreOptions::new().schema("tenant_b"));
    let stream: StreamName = "thing-1".parse()?;
    tenant
        .append(AppendRequest::new(
            stream.clone(),
            ExpectedVersion::NoStream,
            vec![event("A")],
        ))
        .await?;
    assert_eq!(tenant.stream_version(&stream).await?, Some(0));
    assert_eq!(
        db.store().stream_version(&stream).await?,
        None,
        "the default schema did not see it"
    );
    Ok(())
}

#[tokio::test]
async fn hostile_schema_and_channel_names_are_rejected_before_any_sql() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    for hostile in [
        "eventrail\"; DROP TABLE eventrail.events; --",
        "Eventrail",
        "a b",
        "",
        "pg_catalog",
        "x'y",
        "ünïcode",
    ] {
        assert!(
            matches!(
                Migrator::new(hostile),
                Err(ConfigError::InvalidIdentifier { .. })
            ),
            "{hostile:?}"
        );
        assert!(
            PgEventStore::with_options(db.pool.clone(), PgStoreOptions::new().schema(hostile))
                .is_err(),
            "{hostile:?}"
        );
        assert!(
            PgEventStore::with_options(
                db.pool.clone(),
                PgStoreOptions::new().notify_channel(hostile)
            )
            .is_err(),
            "{hostile:?}"
        );
    }
    assert!(
        Migrator::new("eventrail")?
            .roles_sql("x; DROP ROLE postgres")
            .is_err()
    );
    // The log is intact.
    db.client()
        .await?
        .query_one("SELECT count(*) FROM eventrail.events", &[])
        .await?;
    Ok(())
}

#[tokio::test]
async fn events_are_immutable() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    db.store()
        .append(AppendRequest::new(
            "fixed-1".parse()?,
            ExpectedVersion::Any,
            vec![event("A")],
        ))
        .await?;
    let client = db.client().await?;
    for sql in [
        "UPDATE eventrail.events SET event_type = 'B'",
        "DELETE FROM eventrail.events",
        "TRUNCATE eventrail.events",
    ] {
        let err = client.batch_execute(sql).await.expect_err(sql);
        assert_eq!(
            err.code(),
            Some(&SqlState::from_code("ER001")),
            "{sql}: {err}"
        );
    }
    let row = client
        .query_one(
            "SELECT count(*), min(event_type) FROM eventrail.events",
            &[],
        )
        .await?;
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, String>(1)),
        (1, "A".to_owned())
    );
    Ok(())
}

/// The roles of one prefix, and a login role in each, dropped when the test ends.
struct Roles {
    prefix: String,
    admin_url: String,
}

impl Roles {
    /// A prefix of its own, so that tests running at once never share roles.
    async fn new() -> anyhow::Result<Self> {
        Ok(Self {
            prefix: format!("r{}", &uuid::Uuid::new_v4().simple().to_string()[..10]),
            admin_url: eventrail_devdb::database_url().await?,
        })
    }

    /// Login roles `<prefix>_<group>_login`, members of each group role.
    async fn logins(&self, client: &tokio_postgres::Client) -> anyhow::Result<()> {
        for group in ["reader", "writer", "worker", "admin"] {
            client
                .batch_execute(&format!(
                    "CREATE ROLE {p}_{group}_login LOGIN IN ROLE {p}_{group}",
                    p = self.prefix
                ))
                .await?;
        }
        Ok(())
    }

    /// `url` with the login role of `group` as user.
    fn url(&self, url: &str, group: &str) -> String {
        url.replacen("postgres@", &format!("{}_{group}_login@", self.prefix), 1)
    }

    async fn drop_all(&self) -> anyhow::Result<()> {
        let client = crate::harness::connect(&self.admin_url).await?;
        let roles: Vec<String> = client
            .query(
                "SELECT rolname FROM pg_roles WHERE rolname LIKE $1 || '\\_%' ORDER BY rolname LIKE '%login' DESC",
                &[&self.prefix],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for db in client
            .query(
                "SELECT datname FROM pg_database WHERE datname LIKE 'eventrail_test%'",
                &[],
            )
            .await?
        {
            let name: String = db.get(0);
            let Ok(url) = eventrail_devdb::with_database(&self.admin_url, &name) else {
                continue;
            };
            if let Ok(c) = crate::harness::connect(&url).await {
                for role in &roles {
                    let _ = c.batch_execute(&format!("DROP OWNED BY {role}")).await;
                }
            }
        }
        for role in &roles {
            client
                .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
                .await?;
        }
        Ok(())
    }
}

fn refused(result: Result<impl std::fmt::Debug, tokio_postgres::Error>, what: &str) {
    match result {
        Err(e) => assert_eq!(
            e.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{what}: {e:?}"
        ),
        Ok(v) => panic!("{what} was allowed: {v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn least_privilege_roles_allow_what_each_needs_and_refuse_the_rest() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let roles = Roles::new().await?;
    let result = async {
        // Through the CLI, as a user would: every component's roles.
        crate::cli::eventrail(&["migrate", "--roles", &roles.prefix, "--database-url", &db.url])
            .await?;
        let owner = db.client().await?;
        roles.logins(&owner).await?;
        owner
            .batch_execute(&format!(
                "{}; GRANT SELECT, INSERT ON handled TO {p}_worker",
                integration_tests::HANDLED_DDL,
                p = roles.prefix
            ))
            .await?;
        let raw_insert = "INSERT INTO eventrail.events (stream_name, stream_version, event_id, event_type, schema_version, data, metadata)
                          VALUES ('raw-1', 0, gen_random_uuid(), 'Raw', 1, '{}', '{}')";

        // writer: appends through the API and enqueues outbox messages; no raw INSERT, no
        // UPDATE or DELETE of events, no outbox payloads, no worker tables.
        let writer_url = roles.url(&db.url, "writer");
        let writer = PgEventStore::new(eventrail_devdb::pool(&writer_url, 2)?);
        // Its plain appends (one statement, and COPY for a batch; each on a store of its own)
        // may not INSERT: they fall back to append_events.
        let single = writer
            .append(AppendRequest::new("role-3".parse()?, ExpectedVersion::NoStream, vec![event("A")]))
            .await?;
        let bulk = PgEventStore::new(eventrail_devdb::pool(&writer_url, 2)?)
            .append(AppendRequest::new(
                "role-4".parse()?,
                ExpectedVersion::NoStream,
                (0..50).map(|_| event("A")).collect(),
            ))
            .await?;
        assert_eq!((single.stream_version, bulk.stream_version), (0, 49));
        let outbox = eventrail_outbox::Outbox::new(&eventrail_outbox::OutboxOptions::new())?;
        let (appended, _) = outbox
            .append_and_enqueue(
                &writer,
                AppendRequest::new("role-1".parse()?, ExpectedVersion::NoStream, vec![event("A")]),
                vec![eventrail_outbox::NewMessage::new("orders", "k", b"secret".to_vec())],
            )
            .await?;
        let w = crate::harness::connect(&writer_url).await?;
        refused(w.execute(raw_insert, &[]).await, "a raw INSERT into events by the writer");
        refused(w.execute("UPDATE eventrail.events SET event_type = 'B'", &[]).await, "UPDATE events");
        refused(w.execute("DELETE FROM eventrail.events", &[]).await, "DELETE events");
        refused(w.query("SELECT payload FROM eventrail.outbox", &[]).await, "reading payloads");
        refused(
            w.execute("UPDATE eventrail.consumer_checkpoints SET position = 0", &[]).await,
            "moving checkpoints",
        );

        // reader: reads events and views; no append, no outbox payloads.
        let reader_url = roles.url(&db.url, "reader");
        let reader = PgEventStore::new(eventrail_devdb::pool(&reader_url, 2)?);
        let read = reader
            .read_stream(&"role-1".parse()?, eventrail_core::ReadStreamOptions::default())
            .await?;
        assert_eq!(read.len(), 1);
        let r = crate::harness::connect(&reader_url).await?;
        r.query("SELECT * FROM eventrail.events_by_type", &[]).await?;
        r.query("SELECT state, destination FROM eventrail.outbox", &[]).await?;
        refused(r.query("SELECT payload FROM eventrail.outbox", &[]).await, "a reader reading payloads");
        let denied = reader
            .append(AppendRequest::new(
                "role-2".parse()?,
                ExpectedVersion::Any,
                vec![event("A")],
            ))
            .await
            .expect_err("an append by the reader");
        assert_eq!(denied.code(), Some("42501"), "{denied:?}");
        assert!(!denied.is_retryable());
        refused(r.execute(raw_insert, &[]).await, "a raw INSERT by the reader");

        // worker: runs consumers to the head and relays the outbox; no appends, no event edits.
        let worker_url = roles.url(&db.url, "worker");
        let worker = eventrail_worker::Worker::builder(
            PgEventStore::new(eventrail_devdb::pool(&worker_url, 4)?),
            worker_url.parse::<eventrail_store_postgres::PgConnectOptions>()?,
        )
        .options(
            eventrail_worker::WorkerOptions::new()
                .heartbeat_interval(std::time::Duration::from_millis(100))
                .rebalance_interval(std::time::Duration::from_millis(100)),
        )
        .consumer(integration_tests::Recorder::new("c0", "w"))
        .build()?;
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(worker.run(stop.clone()));
        let admin = eventrail_worker::WorkerAdmin::new(
            eventrail_devdb::pool(&worker_url, 2)?,
            "eventrail",
            &eventrail_worker::TableNames::default(),
        )?;
        crate::harness::eventually(20, "the worker's consumer at the head", || async {
            Ok(admin
                .status()
                .await?
                .consumers
                .iter()
                .any(|c| c.position >= appended.last_position()))
        })
        .await?;
        stop.cancel();
        task.await??;
        let sink = eventrail_outbox::InMemorySink::new();
        let relay = eventrail_outbox::Relay::new(
            eventrail_devdb::pool(&worker_url, 2)?,
            sink.clone(),
            eventrail_outbox::OutboxOptions::new(),
        )?;
        let report = relay.relay_once().await?;
        assert_eq!(sink.messages().len(), 1, "{report:?}");
        let k = crate::harness::connect(&worker_url).await?;
        refused(k.execute(raw_insert, &[]).await, "a raw INSERT by the worker");
        refused(k.execute("UPDATE eventrail.events SET event_type = 'B'", &[]).await, "UPDATE events by the worker");

        // admin: operates consumers; still cannot rewrite history.
        let admin_url = roles.url(&db.url, "admin");
        crate::cli::eventrail(&["consumer", "rewind", "c0", "--to", "0", "--database-url", &admin_url])
            .await?;
        let a = crate::harness::connect(&admin_url).await?;
        refused(a.execute("UPDATE eventrail.events SET event_type = 'B'", &[]).await, "UPDATE events by the admin");
        refused(a.execute("DELETE FROM eventrail.events", &[]).await, "DELETE events by the admin");

        // A table a later migration adds is covered by the default privileges.
        owner.batch_execute("CREATE TABLE eventrail.added_later (x int)").await?;
        r.query("SELECT * FROM eventrail.added_later", &[]).await?;
        a.execute("INSERT INTO eventrail.added_later VALUES (1)", &[]).await?;
        anyhow::Ok(())
    }
    .await;
    roles.drop_all().await?;
    result
}

#[tokio::test]
async fn a_bad_role_prefix_is_refused_before_anything_is_applied() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let refused = crate::cli::eventrail(&[
        "migrate",
        "--schema",
        "untouched",
        "--roles",
        "Bad-Prefix",
        "--database-url",
        &db.url,
    ])
    .await;
    assert!(refused.is_err());
    let exists: bool = db
        .client()
        .await?
        .query_one("SELECT to_regnamespace('untouched') IS NOT NULL", &[])
        .await?
        .get(0);
    assert!(!exists, "nothing was applied");
    Ok(())
}

#[tokio::test]
async fn summary_views() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = db.store();
    store
        .append(AppendRequest::new(
            "shop-1".parse()?,
            ExpectedVersion::Any,
            vec![event("Added"), event("Added"), event("Paid")],
        ))
        .await?;
    store
        .append(AppendRequest::new(
            "shop-2".parse()?,
            ExpectedVersion::Any,
            vec![event("Added")],
        ))
        .await?;
    store
        .append(AppendRequest::new(
            "user-1".parse()?,
            ExpectedVersion::Any,
            vec![event("Joined")],
        ))
        .await?;
    let client = db.client().await?;
    let by_type: Vec<(String, i64)> = client
        .query(
            "SELECT event_type, events FROM eventrail.events_by_type ORDER BY event_type",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        by_type,
        [
            ("Added".into(), 3),
            ("Joined".into(), 1),
            ("Paid".into(), 1)
        ]
    );
    let shop: (i64, i64) = client
        .query_one(
            "SELECT streams, events FROM eventrail.events_by_category WHERE category = 'shop'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))?;
    assert_eq!(shop, (2, 4));
    let version: i64 = client
        .query_one(
            "SELECT stream_version FROM eventrail.events_by_stream WHERE stream_name = 'shop-1'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(version, 2);
    Ok(())
}

/// Runs `psql` on `url` with `sql` as a file, stopping at the first error.
fn psql(url: &str, sql: &str) -> anyhow::Result<()> {
    let file = std::env::temp_dir().join(format!("eventrail-{}.sql", uuid::Uuid::now_v7()));
    std::fs::write(&file, sql)?;
    let out = std::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f"])
        .arg(&file)
        .output()?;
    let _ = std::fs::remove_file(&file);
    anyhow::ensure!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn print_sql_applied_with_psql_is_accepted_by_migrate_and_listed_by_info()
-> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let sql = crate::cli::eventrail(&["migrate", "--print-sql", "--schema", "by_psql"]).await?;
    psql(&db.url, &sql)?;
    // A later `eventrail migrate` finds everything applied, with the right checksums.
    let out = crate::cli::eventrail(&["migrate", "--schema", "by_psql", "--database-url", &db.url])
        .await?;
    assert!(out.contains("up to date"), "{out}");
    let info = Migrator::new("by_psql")?.info(&db.client().await?).await?;
    assert_eq!(
        info.iter()
            .map(|m| (m.version, m.state))
            .collect::<Vec<_>>(),
        [
            (1, MigrationState::Applied),
            (2, MigrationState::OtherComponent),
            (3, MigrationState::OtherComponent),
            (4, MigrationState::OtherComponent),
            (5, MigrationState::OtherComponent),
            (6, MigrationState::Applied),
            (7, MigrationState::Applied),
            (8, MigrationState::OtherComponent),
            (9, MigrationState::OtherComponent),
            (11, MigrationState::OtherComponent),
            (12, MigrationState::OtherComponent),
            (13, MigrationState::Applied),
            (14, MigrationState::Applied),
        ],
        "the CLI printed every component's migrations: {info:?}"
    );
    assert!(
        info.iter()
            .filter(|m| m.state == MigrationState::Applied)
            .all(|m| m.applied_checksum == m.checksum)
    );
    let out = crate::cli::eventrail(&[
        "migrate",
        "info",
        "--schema",
        "by_psql",
        "--database-url",
        &db.url,
    ])
    .await?;
    assert!(
        out.contains("event_log") && out.contains("applied"),
        "{out}"
    );
    Ok(())
}

#[tokio::test]
async fn a_database_holding_an_unknown_migration_is_refused_and_info_names_it() -> anyhow::Result<()>
{
    let db = TestDb::new().await?;
    let mut client = db.client().await?;
    // A newer eventrail applied a migration this binary does not know.
    client
        .execute(
            "INSERT INTO eventrail.eventrail_migrations (version, name, checksum) VALUES (99, 'from_the_future', 'x')",
            &[],
        )
        .await?;
    match Migrator::new("eventrail")?.run(&mut client).await {
        Err(MigrationError::UnknownMigration { version: 99, name }) => {
            assert_eq!(name, "from_the_future");
        }
        other => panic!("expected an unknown migration, got {other:?}"),
    }
    // Migrations of the other eventrail components are known, not unknown.
    let info = Migrator::new("eventrail")?.info(&client).await?;
    let states: Vec<(i32, MigrationState)> = info.iter().map(|m| (m.version, m.state)).collect();
    assert_eq!(
        states,
        [
            (1, MigrationState::Applied),
            (2, MigrationState::OtherComponent),
            (3, MigrationState::OtherComponent),
            (4, MigrationState::OtherComponent),
            (5, MigrationState::OtherComponent),
            (6, MigrationState::Applied),
            (7, MigrationState::Applied),
            (8, MigrationState::OtherComponent),
            (9, MigrationState::OtherComponent),
            (11, MigrationState::OtherComponent),
            (12, MigrationState::OtherComponent),
            (13, MigrationState::Applied),
            (14, MigrationState::Applied),
            (99, MigrationState::Unknown),
        ]
    );
    let out = crate::cli::eventrail(&["migrate", "info", "--database-url", &db.url]).await?;
    assert!(
        out.contains("from_the_future") && out.contains("unknown"),
        "{out}"
    );
    Ok(())
}

#[tokio::test]
async fn a_migrator_waiting_for_the_lock_names_its_holder() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let holder = crate::harness::connect(&format!("{}?application_name=deploy-7", db.url)).await?;
    let pid: i32 = holder
        .query_one(
            "SELECT pg_backend_pid() FROM (SELECT pg_advisory_lock(1701147136, hashtext('eventrail'))) l",
            &[],
        )
        .await?
        .get(0);
    let mut client = db.client().await?;
    let waited = Migrator::new("eventrail")?
        .lock_timeout(std::time::Duration::from_millis(300))
        .run(&mut client)
        .await;
    match waited {
        Err(MigrationError::Locked {
            pid: Some(p),
            application_name: Some(app),
        }) => {
            assert_eq!(p, pid);
            assert_eq!(app, "deploy-7");
        }
        other => panic!("expected the lock holder to be named, got {other:?}"),
    }
    drop(holder);
    assert!(
        Migrator::new("eventrail")?
            .lock_timeout(std::time::Duration::from_secs(10))
            .run(&mut client)
            .await?
            .is_empty()
    );
    Ok(())
}

#[tokio::test]
async fn least_privilege_roles_work_on_a_partitioned_log() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let roles = Roles::new().await?;
    let result = async {
        crate::cli::eventrail(&[
            "migrate", "--roles", &roles.prefix, "--partition-size", "20", "--database-url", &db.url,
        ])
        .await?;
        let owner = db.client().await?;
        roles.logins(&owner).await?;
        // writer: appends through append_events, past the attached partitions (it may attach).
        let writer_url = roles.url(&db.url, "writer");
        let writer = PgEventStore::new(eventrail_devdb::pool(&writer_url, 2)?);
        let single = writer
            .append(AppendRequest::new("role-1".parse()?, ExpectedVersion::NoStream, vec![event("A")]))
            .await?;
        let bulk = writer
            .append(AppendRequest::new(
                "role-1".parse()?,
                ExpectedVersion::Exact(0),
                (0..70).map(|_| event("A")).collect(),
            ))
            .await?;
        assert_eq!((single.stream_version, bulk.stream_version), (0, 70));
        let w = crate::harness::connect(&writer_url).await?;
        refused(w.execute("UPDATE eventrail.streams SET version = 0", &[]).await, "moving a stream's version");
        refused(w.execute("DELETE FROM eventrail.event_ids", &[]).await, "forgetting event ids");
        // reader: reads streams (their first position prunes the read) but appends nothing.
        let reader = PgEventStore::new(eventrail_devdb::pool(&roles.url(&db.url, "reader"), 2)?);
        let read = reader
            .read_stream(&"role-1".parse()?, eventrail_core::ReadStreamOptions::default())
            .await?;
        assert_eq!(read.len(), 71);
        // admin: still cannot rewrite history or its bookkeeping.
        let a = crate::harness::connect(&roles.url(&db.url, "admin")).await?;
        refused(a.execute("UPDATE eventrail.streams SET version = 0", &[]).await, "UPDATE streams by the admin");
        refused(a.execute("DELETE FROM eventrail.event_ids", &[]).await, "DELETE event ids by the admin");
        refused(a.execute("UPDATE eventrail.events SET event_type = 'B'", &[]).await, "UPDATE events by the admin");
        // Nor write to a partition directly, bypassing the parent's trigger: neither one that
        // existed when the roles were made nor one attached since.
        let newest: String = owner
            .query_one(
                "SELECT max(inhrelid::regclass::text) FROM pg_inherits WHERE inhparent = 'eventrail.events'::regclass",
                &[],
            )
            .await?
            .get(0);
        for partition in ["eventrail.events_p000000", newest.as_str()] {
            let insert = format!(
                "INSERT INTO {partition} (global_position, stream_name, stream_version, event_id, event_type, data)
                 VALUES (1000000, 'raw-1', 0, gen_random_uuid(), 'Raw', '{{}}')"
            );
            refused(a.execute(insert.as_str(), &[]).await, "an INSERT into a partition by the admin");
        }
        assert_ne!(newest, "eventrail.events_p000000", "partitions were attached since");
        anyhow::Ok(())
    }
    .await;
    roles.drop_all().await?;
    result
}
