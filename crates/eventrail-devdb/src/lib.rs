//! Finds or starts a PostgreSQL for eventrail's tests, examples and benchmarks.
//!
//! [`database_url`] answers, in order:
//! 1. `DATABASE_URL`, when set;
//! 2. PostgreSQL on `127.0.0.1:5432` as user `postgres`, when it accepts a connection;
//! 3. a throwaway cluster it starts itself under `$TMPDIR/eventrail-dev-pg` on port 54329, with
//!    `initdb`/`pg_ctl` from `PATH` or `/usr/lib/postgresql/*/bin`, run as the `postgres` user when
//!    this process is root (PostgreSQL refuses to run as root). The cluster is reused by later
//!    processes; a file lock keeps two processes from starting it at once.
//!
//! When no PostgreSQL binaries exist, the error names the command that installs them.
//!
//! [`start_pgbouncer`] starts a throwaway PgBouncer in transaction pooling mode in front of it.
//!
//! [`install_message_db`] installs Message DB from its published npm package into a database.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;
use tracing::info;

mod message_db;
mod pgbouncer;
pub use message_db::{MESSAGE_DB_PACKAGE, install_message_db, message_db_package};
pub use pgbouncer::{PGBOUNCER_INSTALL, PgBouncer, pgbouncer_bin, start_pgbouncer};

/// Port of the throwaway cluster.
pub const THROWAWAY_PORT: u16 = 54329;

/// Why no database could be found or started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevDbError {
    /// No PostgreSQL server binaries on this machine: install them with the named command.
    #[error(
        "no PostgreSQL found: DATABASE_URL is unset, nothing listens on 127.0.0.1:5432, and no initdb/pg_ctl is installed; install it with `{install}` or set DATABASE_URL"
    )]
    NoPostgres {
        /// The command that installs PostgreSQL.
        install: &'static str,
    },
    /// `DATABASE_URL` does not parse.
    #[error("DATABASE_URL is not a valid PostgreSQL URL")]
    BadUrl(#[source] tokio_postgres::Error),
    /// A command that starts the cluster failed.
    #[error("`{command}` failed: {output}")]
    Command {
        /// The command.
        command: String,
        /// What it printed.
        output: String,
    },
    /// A file operation failed.
    #[error("{what}")]
    Io {
        /// What was attempted.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// PgBouncer is not installed: install it with the named command.
    #[error("no pgbouncer binary on PATH or in /usr/sbin; install it with `{install}`")]
    NoPgBouncer {
        /// The command that installs PgBouncer.
        install: &'static str,
    },
    /// The started cluster does not accept connections.
    #[error("the throwaway cluster at {0} did not accept connections")]
    NotReady(String),
    /// A database name that is not a plain lower-case identifier (`[a-z_][a-z0-9_]*`, at most
    /// 63 bytes).
    #[error("not a plain database name: {0:?}")]
    BadDatabaseName(String),
    /// The server refused a connection or a statement.
    #[error("PostgreSQL refused: {0}")]
    Database(#[source] tokio_postgres::Error),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DevDbError {
    let what = what.into();
    move |source| DevDbError::Io { what, source }
}

/// The URL of a PostgreSQL to work with (see the crate docs for the order of choices).
///
/// # Errors
/// [`DevDbError`] when none is reachable and none can be started.
pub async fn database_url() -> Result<String, DevDbError> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        tokio_postgres::Config::from_str(&url).map_err(DevDbError::BadUrl)?;
        return Ok(url);
    }
    let local = "postgres://postgres@127.0.0.1:5432/postgres";
    if accepts_connections(local).await {
        return Ok(local.to_owned());
    }
    let dir = std::env::temp_dir().join("eventrail-dev-pg");
    start_throwaway_cluster(&dir, THROWAWAY_PORT).await
}

/// Whether `url` accepts a connection within two seconds.
pub async fn accepts_connections(url: &str) -> bool {
    let Ok(config) = tokio_postgres::Config::from_str(url) else {
        return false;
    };
    let attempt = async {
        let (client, connection) = config.connect(NoTls).await.ok()?;
        tokio::spawn(connection);
        client.simple_query("SELECT 1").await.ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Some(_))
    )
}

/// A pool on `url` (fast recycling: no query per checkout).
///
/// # Errors
/// [`DevDbError::BadUrl`] when the URL does not parse.
pub fn pool(url: &str, max_size: usize) -> Result<Pool, DevDbError> {
    let config = tokio_postgres::Config::from_str(url).map_err(DevDbError::BadUrl)?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(manager)
        .max_size(max_size)
        .build()
        .expect("a pool without a runtime setting always builds"))
}

/// The same server as `url`, with another database name.
///
/// # Errors
/// [`DevDbError::BadUrl`] when the URL does not parse.
pub fn with_database(url: &str, dbname: &str) -> Result<String, DevDbError> {
    let config = tokio_postgres::Config::from_str(url).map_err(DevDbError::BadUrl)?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    let password = config
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    Ok(format!(
        "postgres://{user}{password}@{host}:{port}/{dbname}"
    ))
}

/// Drops the database `name` on the server of `admin_url` (closing its sessions) and creates it
/// empty; returns its URL. For examples and benchmarks that start from nothing.
///
/// # Errors
/// [`DevDbError::BadDatabaseName`] for a name that is not a plain lower-case identifier,
/// [`DevDbError::BadUrl`], or [`DevDbError::Database`] when the server refuses.
pub async fn recreate_database(admin_url: &str, name: &str) -> Result<String, DevDbError> {
    let plain = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !plain {
        return Err(DevDbError::BadDatabaseName(name.to_owned()));
    }
    let config = tokio_postgres::Config::from_str(admin_url).map_err(DevDbError::BadUrl)?;
    let (admin, connection) = config.connect(NoTls).await.map_err(DevDbError::Database)?;
    tokio::spawn(connection);
    // Two statements: DROP DATABASE refuses to run in the implicit transaction of a batch.
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .map_err(DevDbError::Database)?;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .map_err(DevDbError::Database)?;
    with_database(admin_url, name)
}

/// Finds `initdb` and `pg_ctl`: on `PATH`, else the newest `/usr/lib/postgresql/<version>/bin`.
#[must_use]
pub fn postgres_bin_dir() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                // The folder the binaries really live in (a PATH entry may hold symlinks to a
                // few of them only), where pg_basebackup is too.
                return Some(
                    fs::canonicalize(dir.join("initdb"))
                        .ok()
                        .and_then(|initdb| initdb.parent().map(Path::to_path_buf))
                        .unwrap_or(dir),
                );
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs a PostgreSQL binary, as `postgres` through `runuser` when we are root.
fn run_pg(bin: &Path, args: &[&str]) -> Result<(), DevDbError> {
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    command.args(args);
    let shown = format!("{} {}", bin.display(), args.join(" "));
    let output = command.output().map_err(io(format!("running {shown}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(DevDbError::Command {
            command: shown,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        })
    }
}

/// Starts (or reuses) a throwaway cluster in `dir` listening on `127.0.0.1:port` with trust
/// authentication, and returns its URL.
///
/// # Errors
/// [`DevDbError::NoPostgres`] when no binaries are installed, [`DevDbError::Command`] when
/// `initdb` or `pg_ctl` fails.
pub async fn start_throwaway_cluster(dir: &Path, port: u16) -> Result<String, DevDbError> {
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    if accepts_connections(&url).await {
        return Ok(url);
    }
    let bin = installed_bin_dir()?;
    let dir = dir.to_path_buf();
    let url_for_task = url.clone();
    blocking("joining the start task", move || {
        start_blocking(&bin, &dir, port)
    })
    .await?;
    if accepts_connections(&url_for_task).await {
        Ok(url)
    } else {
        Err(DevDbError::NotReady(url))
    }
}

/// The installed PostgreSQL binaries' folder, or the typed error saying how to install them.
fn installed_bin_dir() -> Result<PathBuf, DevDbError> {
    postgres_bin_dir().ok_or(DevDbError::NoPostgres {
        install: "apt-get install -y postgresql",
    })
}

/// Runs `work` (commands and files) on the blocking pool; `what` names a failed join.
async fn blocking(
    what: &str,
    work: impl FnOnce() -> Result<(), DevDbError> + Send + 'static,
) -> Result<(), DevDbError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| DevDbError::Io {
            what: what.into(),
            source: std::io::Error::other(e),
        })?
}

/// The `pg_ctl -o` options of a throwaway server on `127.0.0.1:port` with its data in `dir`. The
/// socket goes in the data folder: it belongs to the server's user.
fn throwaway_options(port: u16, dir: &Path) -> String {
    format!(
        "-p {port} -c listen_addresses=127.0.0.1 -k {} -c max_connections=200 -c fsync=off",
        dir.to_string_lossy()
    )
}

fn start_blocking(bin: &Path, dir: &Path, port: u16) -> Result<(), DevDbError> {
    let parent = dir.parent().unwrap_or(Path::new("/tmp"));
    fs::create_dir_all(parent).map_err(io("creating the cluster's parent folder"))?;
    // One process starts the cluster; the others wait here, then find it running.
    let lock_path = parent.join(format!(".eventrail-dev-pg-{port}.lock"));
    let lock = File::create(&lock_path).map_err(io(format!("creating {}", lock_path.display())))?;
    lock.lock().map_err(io("locking the cluster start"))?;
    let root = is_root();
    if !dir.join("PG_VERSION").exists() {
        fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        if root {
            chown_to_postgres(dir)?;
        }
        initdb(bin, dir)?;
    }
    let options = throwaway_options(port, dir);
    info!(port, "starting the throwaway PostgreSQL cluster");
    let started = pg_ctl_start(bin, dir, &options);
    drop(lock);
    started
}

/// Starts a hot standby of the throwaway cluster on `127.0.0.1:primary_port` in `dir`, listening
/// on `127.0.0.1:port`: a base backup (`pg_basebackup -R`, streaming its WAL) started with the
/// same binaries, read-only and replaying the primary's WAL as it streams. Returns its URL. Stop
/// it with [`stop_throwaway_cluster`].
///
/// # Errors
/// [`DevDbError::NoPostgres`] when no binaries are installed, [`DevDbError::Command`] when
/// `pg_basebackup` or `pg_ctl` fails, [`DevDbError::NotReady`] when it does not accept
/// connections.
pub async fn start_throwaway_standby(
    primary_port: u16,
    dir: &Path,
    port: u16,
) -> Result<String, DevDbError> {
    let bin = installed_bin_dir()?;
    let dir = dir.to_path_buf();
    blocking("joining the standby's start task", move || {
        let parent = dir.parent().unwrap_or(Path::new("/tmp"));
        fs::create_dir_all(parent).map_err(io("creating the standby's parent folder"))?;
        if is_root() {
            chown_to_postgres(parent)?;
        }
        info!(
            primary_port,
            port, "taking a base backup for a throwaway standby"
        );
        run_pg(
            &bin.join("pg_basebackup"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary_port.to_string(),
                "-U",
                "postgres",
                "-D",
                &dir.to_string_lossy(),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
        )?;
        let options = format!(
            "{} -c hot_standby=on -c hot_standby_feedback=on",
            throwaway_options(port, &dir)
        );
        pg_ctl_start(&bin, &dir, &options)
    })
    .await?;
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    if accepts_connections(&url).await {
        Ok(url)
    } else {
        Err(DevDbError::NotReady(url))
    }
}

/// Starts a new throwaway cluster in `dir` (stopping and removing one found there) that accepts
/// TCP connections only over TLS: `ssl = on` with the PEM server certificate and key given, and
/// a `pg_hba.conf` whose only TCP lines are `hostssl` (trust). Unix-socket connections (in
/// `dir`) stay open for tools. With `client_ca`, the server also trusts client certificates
/// signed by that CA, and the role `eventrail_cert` (create it) may log in over TCP only with a
/// client certificate whose common name is its name (`cert` authentication). Returns its URL
/// (without `sslmode`).
///
/// # Errors
/// [`DevDbError::NoPostgres`] when no binaries are installed, [`DevDbError::Io`] when the files
/// cannot be written, [`DevDbError::Command`] when `initdb` or `pg_ctl` fails.
pub async fn start_throwaway_tls_cluster(
    dir: &Path,
    port: u16,
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<String, DevDbError> {
    let bin = installed_bin_dir()?;
    let (dir, cert, key) = (dir.to_path_buf(), cert.to_path_buf(), key.to_path_buf());
    let client_ca = client_ca.map(Path::to_path_buf);
    blocking("joining the start task", move || {
        start_tls_blocking(&bin, &dir, port, (&cert, &key), client_ca.as_deref())
    })
    .await?;
    Ok(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
}

/// Gives `path` (recursively) to the `postgres` user, which the server and PgBouncer run as
/// when we are root.
pub(crate) fn chown_to_postgres(path: &Path) -> Result<(), DevDbError> {
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .status()
        .map_err(io("chown"))?;
    if status.success() {
        Ok(())
    } else {
        Err(DevDbError::Command {
            command: "chown".into(),
            output: format!("exit {status}"),
        })
    }
}

/// Starts the cluster in `dir` with server `options`, logging to its `server.log`, and waits
/// (up to 60 s) until it accepts connections.
fn pg_ctl_start(bin: &Path, dir: &Path, options: &str) -> Result<(), DevDbError> {
    run_pg(
        &bin.join("pg_ctl"),
        &[
            "-D",
            &dir.to_string_lossy(),
            "-o",
            options,
            "-l",
            &dir.join("server.log").to_string_lossy(),
            "-w",
            "-t",
            "60",
            "start",
        ],
    )
}

/// A new cluster in `dir`: trust authentication, UTF-8, no fsync of the new files.
fn initdb(bin: &Path, dir: &Path) -> Result<(), DevDbError> {
    info!(dir = %dir.display(), "initialising a throwaway PostgreSQL cluster");
    run_pg(
        &bin.join("initdb"),
        &[
            "-D",
            &dir.to_string_lossy(),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        ],
    )
}

fn start_tls_blocking(
    bin: &Path,
    dir: &Path,
    port: u16,
    (cert, key): (&Path, &Path),
    client_ca: Option<&Path>,
) -> Result<(), DevDbError> {
    if dir.join("PG_VERSION").exists() {
        // Left by an earlier run: it may still run.
        let _ = stop_throwaway_cluster(dir);
        fs::remove_dir_all(dir).map_err(io(format!("removing {}", dir.display())))?;
    }
    fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let root = is_root();
    let chown = |path: &Path| {
        if root {
            chown_to_postgres(path)
        } else {
            Ok(())
        }
    };
    chown(dir)?;
    initdb(bin, dir)?;
    let dir_s = dir.to_string_lossy();
    fs::copy(cert, dir.join("server.crt")).map_err(io("copying the server certificate"))?;
    fs::copy(key, dir.join("server.key")).map_err(io("copying the server key"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir.join("server.key"), fs::Permissions::from_mode(0o600))
            .map_err(io("protecting the server key"))?;
    }
    let mut hba = String::from("local all all trust\n");
    let mut ssl_ca = String::new();
    if let Some(ca) = client_ca {
        fs::copy(ca, dir.join("root.crt")).map_err(io("copying the client CA"))?;
        ssl_ca = " -c ssl_ca_file=root.crt".to_owned();
        hba.push_str("hostssl all eventrail_cert 127.0.0.1/32 cert\n");
    }
    hba.push_str("hostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n");
    fs::write(dir.join("pg_hba.conf"), hba).map_err(io("writing pg_hba.conf"))?;
    chown(dir)?;
    let options = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -k {dir_s} -c max_connections=100 -c fsync=off \
         -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key{ssl_ca}"
    );
    info!(
        port,
        "starting a throwaway PostgreSQL cluster with TLS only"
    );
    pg_ctl_start(bin, dir, &options)
}

/// Stops a throwaway cluster started by [`start_throwaway_cluster`].
///
/// # Errors
/// [`DevDbError::Command`] when `pg_ctl stop` fails.
pub fn stop_throwaway_cluster(dir: &Path) -> Result<(), DevDbError> {
    let bin = installed_bin_dir()?;
    run_pg(
        &bin.join("pg_ctl"),
        &["-D", &dir.to_string_lossy(), "-m", "fast", "-w", "stop"],
    )
}

/// Restarts a throwaway cluster started by [`start_throwaway_cluster`] (`pg_ctl restart -m
/// fast`): every session is terminated, then the server accepts connections again on the same
/// port with the same settings. For tests of what survives a database restart.
///
/// # Errors
/// [`DevDbError::Command`] when `pg_ctl restart` fails.
pub fn restart_throwaway_cluster(dir: &Path) -> Result<(), DevDbError> {
    let bin = installed_bin_dir()?;
    let log = dir.join("server.log");
    run_pg(
        &bin.join("pg_ctl"),
        &[
            "-D",
            &dir.to_string_lossy(),
            "-l",
            &log.to_string_lossy(),
            "-m",
            "fast",
            "-w",
            "-t",
            "60",
            "restart",
        ],
    )
}
