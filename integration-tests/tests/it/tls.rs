//! Connections: TLS from `sslmode` against a server that accepts only TLS, timeouts against a
//! server that never answers, `application_name` per component, statement and acquire
//! timeouts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use eventrail_core::StoreError;
use eventrail_message_db::{MessageDb, MessageDbError};
use eventrail_outbox::{
    InMemorySink, NatsSink, NewMessage, Outbox, OutboxError, OutboxOptions, Relay,
};
use eventrail_store_postgres::{
    ConnectError, GapWatch, ListenEvent, PgConnectOptions, PgEventStore,
};
use eventrail_worker::{
    Consumer, ConsumerScope, DispatcherStrategy, TableNames, Worker, WorkerError, WorkerOptions,
    wait_for,
};
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

use crate::harness::{TestDb, eventually};
use crate::worker::append;

/// A CA, a server certificate it signed for `localhost` and `127.0.0.1`, a client certificate it
/// signed for the role `eventrail_cert`, and an unrelated CA.
struct Certs {
    ca: PathBuf,
    other_ca: PathBuf,
    server_crt: PathBuf,
    server_key: PathBuf,
    client_crt: PathBuf,
    client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .context("running openssl")?;
    anyhow::ensure!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

fn make_certs(dir: &Path) -> anyhow::Result<Certs> {
    std::fs::create_dir_all(dir)?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (name, cn) in [
        ("ca", "eventrail test CA"),
        ("other-ca", "someone else's CA"),
    ] {
        let mut args = vec!["req", "-x509", "-days", "2"];
        args.extend(ec);
        let (key, crt, subj) = (
            format!("{name}.key"),
            format!("{name}.crt"),
            format!("/CN={cn}"),
        );
        args.extend([
            "-keyout",
            &key,
            "-out",
            &crt,
            "-subj",
            &subj,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(dir, &args)?;
    }
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(dir, &args)?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server.crt",
            "-extfile",
            "server.ext",
        ],
    )?;
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "client.key",
        "-out",
        "client.csr",
        "-subj",
        "/CN=eventrail_cert",
    ]);
    openssl(dir, &args)?;
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "client.crt",
            "-extfile",
            "client.ext",
        ],
    )?;
    Ok(Certs {
        client_crt: dir.join("client.crt"),
        client_key: dir.join("client.key"),
        ca: dir.join("ca.crt"),
        other_ca: dir.join("other-ca.crt"),
        server_crt: dir.join("server.crt"),
        server_key: dir.join("server.key"),
    })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The first [`ConnectError`] in an error's chain.
fn connect_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a ConnectError> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(c) = e.downcast_ref::<ConnectError>() {
            return Some(c);
        }
        next = e.source();
    }
    None
}

async fn one_connection(url: &str) -> Result<tokio_postgres::Client, ConnectError> {
    let (client, connection) = PgConnectOptions::from_url(url)?
        .connect("eventrail-test")
        .await?;
    tokio::spawn(connection);
    Ok(client)
}

/// A reactor that counts what it saw.
#[derive(Clone, Default)]
struct Seen(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl eventrail_core::Reactor for Seen {
    fn name(&self) -> &str {
        "tls-reactor"
    }

    async fn react(
        &self,
        _event: &eventrail_core::RecordedEvent,
    ) -> Result<(), eventrail_core::BoxError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

fn reactor(seen: &Seen) -> impl Consumer {
    eventrail_worker::ReactorConsumer::new(seen.clone(), ConsumerScope::all())
}

fn fast_worker(name: &str) -> WorkerOptions {
    WorkerOptions::new()
        .name(name)
        .dispatcher(DispatcherStrategy::Notify)
        .heartbeat_interval(Duration::from_millis(100))
        .rebalance_interval(Duration::from_millis(100))
        .dispatcher_interval(Duration::from_secs(30))
}

async fn cli(url: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut argv = vec!["eventrail", "--database-url", url];
    argv.extend(args);
    let mut out = Vec::new();
    eventrail_cli::run(eventrail_cli::Cli::try_parse_from(argv)?, &mut out).await?;
    Ok(String::from_utf8(out)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_only_server_serves_every_component_with_verify_full() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let work = std::env::temp_dir().join(format!("eventrail-tls-{}", std::process::id()));
    let certs = make_certs(&work.join("certs"))?;
    let port = free_port()?;
    let cluster = work.join("pg");
    eventrail_devdb::start_throwaway_tls_cluster(
        &cluster,
        port,
        &certs.server_crt,
        &certs.server_key,
        Some(&certs.ca),
    )
    .await?;
    let result = serve_every_component(port, &certs).await;
    let _ = eventrail_devdb::stop_throwaway_cluster(&cluster);
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}

async fn serve_every_component(port: u16, certs: &Certs) -> anyhow::Result<()> {
    let ca = certs.ca.display().to_string();
    let url =
        |db: &str, params: &str| format!("postgres://postgres@127.0.0.1:{port}/{db}?{params}");
    let full = |db: &str| {
        url(
            db,
            &format!("sslmode=verify-full&sslrootcert={ca}&connect_timeout=5"),
        )
    };

    // `require` encrypts without a CA; the session is TLS.
    let admin = one_connection(&url("postgres", "sslmode=require")).await?;
    let ssl: bool = admin
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?
        .get(0);
    assert!(ssl, "require encrypts");
    // `prefer` encrypts when the server offers TLS.
    let preferred = one_connection(&url("postgres", "sslmode=prefer")).await?;
    let ssl: bool = preferred
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?
        .get(0);
    assert!(ssl, "prefer encrypts when it can");
    // verify-full without sslrootcert trusts the system's roots, which do not hold the test CA.
    let e = one_connection(&url("postgres", "sslmode=verify-full"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ConnectError::Tls(_) | ConnectError::NoSystemRoots { .. }),
        "{e:?}"
    );
    admin.batch_execute("CREATE DATABASE app").await?;
    admin.batch_execute("CREATE DATABASE msgdb").await?;

    // Plain text is refused by the server (hostssl only), as PostgreSQL says.
    let refused = one_connection(&url("app", "sslmode=disable"))
        .await
        .unwrap_err();
    assert!(matches!(refused, ConnectError::Refused(_)), "{refused:?}");
    assert_eq!(
        refused.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
    );
    assert!(
        !refused.is_retryable(),
        "pg_hba.conf will not change its mind"
    );
    assert!(
        eventrail_core::error_chain(&refused).contains("no encryption"),
        "{}",
        eventrail_core::error_chain(&refused)
    );
    // verify-full refuses a certificate that is not for the host name connected to.
    let wrong_host = format!(
        "postgres://postgres@db.invalid:{port}/app?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={ca}"
    );
    let e = one_connection(&wrong_host).await.unwrap_err();
    let chain = eventrail_core::error_chain(&e);
    assert!(matches!(e, ConnectError::Tls(_)), "{e:?}");
    assert!(chain.contains("not valid for name"), "{chain}");
    assert!(chain.contains("db.invalid"), "{chain}");
    // verify-ca checks the chain only: the same host name passes...
    let chain_only = wrong_host.replace("verify-full", "verify-ca");
    one_connection(&chain_only).await?;
    // ...but not a certificate from another CA, under verify-ca or require with that CA.
    let other = certs.other_ca.display().to_string();
    for mode in ["verify-ca", "require"] {
        let e = one_connection(&url("app", &format!("sslmode={mode}&sslrootcert={other}")))
            .await
            .unwrap_err();
        assert!(matches!(e, ConnectError::Tls(_)), "{mode}: {e:?}");
    }
    // An unreadable CA file is a typed error before anything connects.
    let e = one_connection(&url(
        "app",
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    ))
    .await
    .unwrap_err();
    assert!(matches!(e, ConnectError::RootCert { .. }), "{e:?}");

    // A role that must log in with a client certificate: refused without one, let in with it.
    admin
        .batch_execute("CREATE ROLE eventrail_cert LOGIN")
        .await?;
    let as_cert_user = |params: &str| {
        format!(
            "postgres://eventrail_cert@127.0.0.1:{port}/postgres?sslmode=verify-full&sslrootcert={ca}{params}"
        )
    };
    let e = one_connection(&as_cert_user("")).await.unwrap_err();
    assert!(matches!(e, ConnectError::Refused(_)), "{e:?}");
    let with_cert = as_cert_user(&format!(
        "&sslcert={}&sslkey={}",
        certs.client_crt.display(),
        certs.client_key.display()
    ));
    let user: String = one_connection(&with_cert)
        .await?
        .query_one("SELECT current_user::text", &[])
        .await?
        .get(0);
    assert_eq!(user, "eventrail_cert");

    // The CLI migrates over TLS.
    let out = cli(&full("app"), &["migrate"]).await?;
    assert!(out.contains("applied migrations"), "{out}");
    let info = cli(&full("app"), &["migrate", "info"]).await?;
    assert!(info.contains("applied"), "{info}");

    // The store appends and follows the log.
    let store = PgEventStore::connect(&full("app"))?;
    let first = append(&store, "order-1", 3).await?;
    let mut watch = GapWatch::new();
    let read = store.read_safe(&mut watch, 0, 100, None, None).await?;
    assert_eq!(read.events.len(), 3);
    assert_eq!(read.frontier.safe, first);

    // A worker (notify dispatcher) and wait_for.
    let options = PgConnectOptions::from_url(&full("app"))?;
    let seen = Seen::default();
    let worker = Worker::builder(store.clone(), &options)
        .options(fast_worker("tls-worker"))
        .consumer(reactor(&seen))
        .build()?;
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    let reached = wait_for(
        &options,
        "eventrail",
        &TableNames::default(),
        "tls-reactor",
        first,
        Duration::from_secs(30),
    )
    .await?;
    assert!(reached >= first);
    // A later append reaches the worker through the notify dispatcher (the reconciliation poll
    // is 30 s away).
    let last = append(&store, "order-2", 2).await?;
    wait_for(
        &options,
        "eventrail",
        &TableNames::default(),
        "tls-reactor",
        last,
        Duration::from_secs(10),
    )
    .await?;
    assert_eq!(seen.0.load(std::sync::atomic::Ordering::SeqCst), 5);
    // Every session of the worker is encrypted and named.
    let sessions: Vec<(String, bool)> = admin
        .query(
            "SELECT a.application_name, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.datname = 'app' AND a.application_name LIKE 'eventrail-%'",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        sessions
            .iter()
            .any(|(name, _)| name == "eventrail-worker/tls-worker"),
        "{sessions:?}"
    );
    assert!(sessions.iter().all(|(_, ssl)| *ssl), "{sessions:?}");

    // The CLI reads the status.
    let status = cli(&full("app"), &["status"]).await?;
    assert!(status.contains("tls-reactor"), "{status}");
    stop.cancel();
    running.await??;

    // The relay delivers to NATS, woken by its LISTEN connection.
    let nats = async_nats::connect(crate::outbox::nats_url())
        .await
        .context("NATS JetStream must be running for this test")?;
    let sink = NatsSink::new(nats);
    let stream_name = format!("tls_test_{}", uuid::Uuid::now_v7().simple());
    sink.jetstream()
        .create_stream(async_nats::jetstream::stream::Config {
            name: stream_name.clone(),
            subjects: vec![format!("{stream_name}.>")],
            ..Default::default()
        })
        .await?;
    let sink = sink.subject_prefix(format!("{stream_name}."));
    let relay = Relay::connect(
        &options,
        sink.clone(),
        OutboxOptions::new().poll_interval(Duration::from_secs(30)),
    )?;
    let relay_stop = CancellationToken::new();
    let relay_task = {
        let stop = relay_stop.clone();
        tokio::spawn(async move { relay.run(stop).await })
    };
    // Enqueue once its LISTEN connection is up (the poll is 30 s away).
    eventually(20, "the relay listening", || async {
        Ok(admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                 WHERE a.datname = 'app' AND a.application_name = 'eventrail-relay' AND s.ssl
                   AND a.query LIKE 'LISTEN%'",
                &[],
            )
            .await?
            .get::<_, i64>(0)
            == 1)
    })
    .await?;
    {
        let mut client = store.pool().get().await?;
        let tx = client.transaction().await?;
        Outbox::new(&OutboxOptions::new())?
            .enqueue(&tx, NewMessage::new("orders", "order-1", b"hello".to_vec()))
            .await?;
        tx.commit().await?;
    }
    eventually(20, "the message in JetStream", || async {
        let mut stream = sink.jetstream().get_stream(&stream_name).await?;
        Ok(stream.info().await?.state.messages == 1)
    })
    .await?;
    relay_stop.cancel();
    relay_task.await??;
    sink.jetstream().delete_stream(&stream_name).await?;

    // The Message DB client.
    eventrail_devdb::install_message_db(&url("msgdb", "sslmode=require"), "msgdb")?;
    let mdb = MessageDb::connect(&full("msgdb"))?;
    let position = mdb
        .write_message(
            "account-1",
            &eventrail_message_db::NewMessage::serialize(
                "Opened",
                &serde_json::json!({ "owner": "ada" }),
            )?,
        )
        .await?;
    assert_eq!(position, 0);
    assert_eq!(mdb.stream_version("account-1").await?, Some(0));
    let name: String = mdb
        .pool()
        .get()
        .await?
        .query_one(
            "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(name, "eventrail-message-db");
    Ok(())
}

/// Accepts TCP connections and never answers.
async fn silent_server() -> anyhow::Result<(u16, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    Ok((port, task))
}

fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(connect_error(error), Some(ConnectError::Timeout { .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_entry_point_times_out_on_a_server_that_never_answers() -> anyhow::Result<()> {
    let (port, server) = silent_server().await?;
    let url = format!("postgres://postgres@127.0.0.1:{port}/app?connect_timeout=1");
    let options = PgConnectOptions::from_url(&url)?;
    assert_eq!(options.get_connect_timeout(), Duration::from_secs(1));
    let limit = Duration::from_secs(6);

    // One connection.
    let started = Instant::now();
    let Err(e) = options.connect("eventrail-test").await else {
        anyhow::bail!("connected to a server that never answers");
    };
    assert!(matches!(e, ConnectError::Timeout { .. }), "{e:?}");
    assert!(e.is_retryable());
    assert!(started.elapsed() < limit);

    // The store's first query.
    let store = PgEventStore::connect(&url)?;
    let started = Instant::now();
    let e = append(&store, "order-1", 1).await.unwrap_err();
    let e = e.downcast_ref::<StoreError>().context("a store error")?;
    assert!(matches!(e, StoreError::Backend(_)) && timed_out(e), "{e:?}");
    assert!(started.elapsed() < limit);

    // A worker with a registration timeout.
    let worker = Worker::builder(store.clone(), &options)
        .options(fast_worker("silent").register_timeout(Duration::from_secs(2)))
        .consumer(reactor(&Seen::default()))
        .build()?;
    let started = Instant::now();
    let e = worker.run(CancellationToken::new()).await.unwrap_err();
    assert!(
        matches!(e, WorkerError::Connect(ConnectError::Timeout { .. })),
        "{e:?}"
    );
    assert!(started.elapsed() < limit, "{:?}", started.elapsed());

    // A worker without one keeps retrying, and still stops at once when asked.
    let worker = Worker::builder(store.clone(), &options)
        .options(fast_worker("silent"))
        .consumer(reactor(&Seen::default()))
        .build()?;
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!running.is_finished());
    let started = Instant::now();
    stop.cancel();
    running.await??;
    assert!(started.elapsed() < Duration::from_secs(2));

    // wait_for.
    let started = Instant::now();
    let e = wait_for(
        &options,
        "eventrail",
        &TableNames::default(),
        "anyone",
        1,
        Duration::from_secs(60),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, WorkerError::Connect(ConnectError::Timeout { .. })),
        "{e:?}"
    );
    assert!(started.elapsed() < limit);

    // The relay.
    let relay = Relay::connect(&options, InMemorySink::new(), OutboxOptions::new())?;
    let started = Instant::now();
    let e = relay.relay_once().await.unwrap_err();
    assert!(
        matches!(e, OutboxError::Connect(ConnectError::Timeout { .. })),
        "{e:?}"
    );
    assert!(started.elapsed() < limit);

    // The Message DB client.
    let mdb = MessageDb::connect(&url)?;
    let started = Instant::now();
    let e = mdb.stream_version("account-1").await.unwrap_err();
    assert!(
        matches!(e, MessageDbError::Connect(ConnectError::Timeout { .. })),
        "{e:?}"
    );
    assert!(started.elapsed() < limit);

    // The CLI, for a command on the pool and for migrate.
    for args in [&["status"][..], &["migrate"][..], &["migrate", "info"][..]] {
        let started = Instant::now();
        let e = cli(&url, args).await.unwrap_err();
        assert!(
            e.chain().any(|c| matches!(
                c.downcast_ref::<ConnectError>(),
                Some(ConnectError::Timeout { .. })
            )),
            "{args:?}: {e:#}"
        );
        assert!(started.elapsed() < limit);
    }
    server.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_are_named_per_component_and_pools_time_out() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let options = PgConnectOptions::from_url(&db.url)?;
    let store = PgEventStore::connect(&db.url)?;
    append(&store, "order-1", 1).await?;
    let worker = Worker::builder(store.clone(), &options)
        .options(fast_worker("names"))
        .consumer(reactor(&Seen::default()))
        .build()?;
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    let relay = Relay::connect(&options, InMemorySink::new(), OutboxOptions::new())?;
    let relay_task = {
        let stop = stop.clone();
        tokio::spawn(async move { relay.run(stop).await })
    };
    let client = db.client().await?;
    let names = || async {
        let rows = client
            .query(
                "SELECT DISTINCT application_name FROM pg_stat_activity WHERE datname = current_database()",
                &[],
            )
            .await?;
        anyhow::Ok(
            rows.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>(),
        )
    };
    eventually(20, "each component's sessions", || async {
        let names = names().await?;
        Ok([
            "eventrail-worker/names",
            "eventrail-relay",
            "eventrail-store",
        ]
        .iter()
        .all(|n| names.iter().any(|m| m == n)))
    })
    .await?;
    stop.cancel();
    running.await??;
    relay_task.await??;

    // A CA file that cannot be read ends a worker's start at once, and wait_for, with the cause.
    let unreadable = PgConnectOptions::from_url(&format!(
        "{}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        db.url
    ))?;
    let worker = Worker::builder(store.clone(), &unreadable)
        .options(fast_worker("no-ca"))
        .consumer(reactor(&Seen::default()))
        .build()?;
    let e = tokio::time::timeout(
        Duration::from_secs(10),
        worker.run(CancellationToken::new()),
    )
    .await?
    .unwrap_err();
    assert!(
        matches!(e, WorkerError::Connect(ConnectError::RootCert { .. })),
        "{e:?}"
    );
    let e = wait_for(
        &unreadable,
        "eventrail",
        &TableNames::default(),
        "tls-reactor",
        1,
        Duration::from_secs(10),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, WorkerError::Connect(ConnectError::RootCert { .. })),
        "{e:?}"
    );

    // A URL's application_name wins.
    let named = PgConnectOptions::from_url(&format!("{}?application_name=billing", db.url))?;
    let (c, connection) = named.connect("eventrail-store").await?;
    tokio::spawn(connection);
    let name: String = c.query_one("SHOW application_name", &[]).await?.get(0);
    assert_eq!(name, "billing");

    // The statement timeout applies to every session of the options.
    let limited = options
        .clone()
        .statement_timeout(Duration::from_millis(200));
    let (c, connection) = limited.connect("eventrail-store").await?;
    tokio::spawn(connection);
    let e = c.batch_execute("SELECT pg_sleep(5)").await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::QUERY_CANCELED));

    // A pool whose connections are all taken answers with a typed acquire timeout.
    let small = PgEventStore::connect_with(
        &options
            .clone()
            .max_connections(1)
            .acquire_timeout(Duration::from_millis(300)),
    )?;
    let held = small.pool().get().await?;
    let started = Instant::now();
    let e = append(&small, "order-2", 1).await.unwrap_err();
    let e = e.downcast_ref::<StoreError>().context("a store error")?;
    assert!(
        matches!(
            connect_error(e),
            Some(ConnectError::AcquireTimeout { after: Some(after) }) if *after == Duration::from_millis(300)
        ),
        "{e:?}"
    );
    assert!(e.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(held);
    append(&small, "order-2", 1).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_reconnects_and_says_notifications_may_be_lost() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let options = PgConnectOptions::from_url(&db.url)?;
    assert!(
        options
            .listener("eventrail-test", &["no such; channel"])
            .is_err(),
        "channels are identifiers"
    );
    let mut listener = options
        .listener("eventrail-test-listener", &["test_a", "test_b"])?
        .max_backoff(Duration::from_millis(200));
    let deadline = Duration::from_secs(10);
    let event = tokio::time::timeout(deadline, listener.recv()).await??;
    assert!(
        matches!(event, ListenEvent::Listening { reconnected: false }),
        "{event:?}"
    );
    let client = db.client().await?;
    client
        .execute("SELECT pg_notify('test_b', 'one')", &[])
        .await?;
    match tokio::time::timeout(deadline, listener.recv()).await?? {
        ListenEvent::Notification(n) => {
            assert_eq!((n.channel(), n.payload()), ("test_b", "one"));
        }
        other => anyhow::bail!("expected a notification, got {other:?}"),
    }
    let pid: i32 = listener
        .client()
        .context("listening")?
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    let name: String = client
        .query_one(
            "SELECT application_name FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await?
        .get(0);
    assert_eq!(name, "eventrail-test-listener");
    client
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await?;
    // The loss, with the server's reason, then the reconnection, flagged as such.
    let lost = tokio::time::timeout(deadline, listener.recv())
        .await?
        .unwrap_err();
    assert!(matches!(lost, ConnectError::Lost(_)), "{lost:?}");
    assert_eq!(lost.code(), Some(&SqlState::ADMIN_SHUTDOWN));
    assert!(!listener.is_listening());
    let event = tokio::time::timeout(deadline, listener.recv()).await??;
    assert!(
        matches!(event, ListenEvent::Listening { reconnected: true }),
        "{event:?}"
    );
    client
        .execute("SELECT pg_notify('test_a', 'two')", &[])
        .await?;
    match tokio::time::timeout(deadline, listener.recv()).await?? {
        ListenEvent::Notification(n) => assert_eq!(n.payload(), "two"),
        other => anyhow::bail!("expected a notification, got {other:?}"),
    }
    Ok(())
}
