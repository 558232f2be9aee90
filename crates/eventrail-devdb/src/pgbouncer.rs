//! A throwaway PgBouncer in transaction pooling mode, in front of a PostgreSQL server.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use tracing::{info, warn};

use crate::{DevDbError, accepts_connections, io, is_root};

/// The command that installs PgBouncer on Debian and Ubuntu.
pub const PGBOUNCER_INSTALL: &str = "apt-get install -y pgbouncer";

/// A PgBouncer process started by [`start_pgbouncer`]; stopped when dropped.
#[derive(Debug)]
pub struct PgBouncer {
    dir: PathBuf,
    port: u16,
    pid: u32,
    password: Option<String>,
    user: String,
}

impl PgBouncer {
    /// Its port on `127.0.0.1`.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `dbname` through this PgBouncer.
    #[must_use]
    pub fn url(&self, dbname: &str) -> String {
        let password = self
            .password
            .as_deref()
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        format!(
            "postgres://{}{password}@127.0.0.1:{}/{dbname}",
            self.user, self.port
        )
    }

    /// Its log file (connections, errors).
    #[must_use]
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("pgbouncer.log")
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // Ends only the process this helper started, by its pid.
        match Command::new("kill").arg(self.pid.to_string()).status() {
            // Its files go too (best effort: it may still be closing its log).
            Ok(s) if s.success() => drop(fs::remove_dir_all(&self.dir)),
            other => warn!(pid = self.pid, ?other, "could not stop PgBouncer"),
        }
    }
}

/// Finds the `pgbouncer` binary: on `PATH`, else `/usr/sbin/pgbouncer` (Debian's package).
#[must_use]
pub fn pgbouncer_bin() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("pgbouncer"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let debian = PathBuf::from("/usr/sbin/pgbouncer");
        debian.is_file().then_some(debian)
    })
}

/// Starts PgBouncer on `127.0.0.1:port` in front of the server of `upstream_url` (every database
/// of it, same names), with its files in `dir`: `pool_mode = transaction`, at most `pool_size`
/// server connections per database and user, handed out round robin (so consecutive
/// transactions of one client land on different server connections, as they do under load),
/// `auth_type = trust`. Runs as `postgres` when this process is root (PgBouncer refuses root).
///
/// # Errors
/// [`DevDbError::NoPgBouncer`] when it is not installed, [`DevDbError::BadUrl`],
/// [`DevDbError::Io`] when its files cannot be written, [`DevDbError::Command`] when it does not
/// start, [`DevDbError::NotReady`] when it does not accept connections.
pub async fn start_pgbouncer(
    upstream_url: &str,
    dir: &Path,
    port: u16,
    pool_size: u32,
) -> Result<PgBouncer, DevDbError> {
    let bin = pgbouncer_bin().ok_or(DevDbError::NoPgBouncer {
        install: PGBOUNCER_INSTALL,
    })?;
    let upstream = tokio_postgres::Config::from_str(upstream_url).map_err(DevDbError::BadUrl)?;
    let host = match upstream.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let upstream_port = upstream.get_ports().first().copied().unwrap_or(5432);
    let user = upstream.get_user().unwrap_or("postgres").to_owned();
    let password = upstream
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let bouncer = {
        let dir = dir.to_path_buf();
        let (host, user, password) = (host.clone(), user.clone(), password.clone());
        tokio::task::spawn_blocking(move || {
            start_blocking(
                &bin,
                &dir,
                port,
                pool_size,
                &host,
                upstream_port,
                user,
                password,
            )
        })
        .await
        .map_err(|e| DevDbError::Io {
            what: "joining the PgBouncer start task".into(),
            source: std::io::Error::other(e),
        })??
    };
    let url = bouncer.url("postgres");
    for _ in 0..50 {
        if accepts_connections(&url).await {
            return Ok(bouncer);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(DevDbError::NotReady(url))
}

#[expect(
    clippy::too_many_arguments,
    reason = "a private step of start_pgbouncer"
)]
fn start_blocking(
    bin: &Path,
    dir: &Path,
    port: u16,
    pool_size: u32,
    host: &str,
    upstream_port: u16,
    user: String,
    password: Option<String>,
) -> Result<PgBouncer, DevDbError> {
    fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let quoted = |s: &str| s.replace('\'', "''");
    let upstream_password = password
        .as_deref()
        .map(|p| format!(" password='{}'", quoted(p)))
        .unwrap_or_default();
    let d = dir.display();
    let config = format!(
        "[databases]\n\
         * = host={host} port={upstream_port}{upstream_password}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_type = trust\n\
         auth_file = {d}/userlist.txt\n\
         pool_mode = transaction\n\
         default_pool_size = {pool_size}\n\
         min_pool_size = 0\n\
         reserve_pool_size = 0\n\
         server_round_robin = 1\n\
         max_client_conn = 500\n\
         ignore_startup_parameters = extra_float_digits\n\
         logfile = {d}/pgbouncer.log\n\
         pidfile = {d}/pgbouncer.pid\n"
    );
    fs::write(dir.join("pgbouncer.ini"), config).map_err(io("writing pgbouncer.ini"))?;
    fs::write(
        dir.join("userlist.txt"),
        format!("\"{}\" \"\"\n", user.replace('"', "\"\"")),
    )
    .map_err(io("writing userlist.txt"))?;
    let pidfile = dir.join("pgbouncer.pid");
    let _ = fs::remove_file(&pidfile);
    let ini = dir.join("pgbouncer.ini");
    let mut command = if is_root() {
        crate::chown_to_postgres(dir)?;
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    command.arg("-d").arg(&ini);
    info!(port, "starting a throwaway PgBouncer");
    let output = command.output().map_err(io("running pgbouncer"))?;
    let shown = format!("{} -d {}", bin.display(), ini.display());
    if !output.status.success() {
        let log = fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default();
        return Err(DevDbError::Command {
            command: shown,
            output: format!(
                "{}{}{log}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }
    // The daemon writes its pid file after the parent has exited.
    let mut pid = None;
    for _ in 0..100 {
        pid = fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        if pid.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = pid.ok_or_else(|| DevDbError::Command {
        command: shown,
        output: format!(
            "no pid in {}: {}",
            pidfile.display(),
            fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default()
        ),
    })?;
    Ok(PgBouncer {
        dir: dir.to_path_buf(),
        port,
        pid,
        password,
        user,
    })
}
