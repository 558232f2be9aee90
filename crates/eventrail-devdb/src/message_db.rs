//! Message DB from its published npm package, for tests, examples and benchmarks.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::DevDbError;

/// The published Message DB package the tests, the example and the benchmark install.
pub const MESSAGE_DB_PACKAGE: &str = "@eventide/message-db@1.3.1";

/// The repository's `scripts/ensure-message-db.sh`.
fn ensure_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ensure-message-db.sh")
}

fn command_error(shown: String, output: &std::process::Output) -> DevDbError {
    DevDbError::Command {
        command: shown,
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// Makes sure the package is unpacked (running `scripts/ensure-message-db.sh`, which fetches it
/// with npm when missing) and returns its folder: `$MESSAGE_DB_HOME` (default
/// `$HOME/.cache/eventrail/message-db`)`/node_modules/@eventide/message-db`.
///
/// # Errors
/// [`DevDbError::Command`] with the script's explanation (npm or psql missing, npm failing).
pub fn message_db_package() -> Result<PathBuf, DevDbError> {
    let home = match std::env::var_os("MESSAGE_DB_HOME") {
        Some(home) => PathBuf::from(home),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/eventrail/message-db"),
    };
    let script = ensure_script();
    let shown = format!("bash {}", script.display());
    let output = Command::new("bash")
        .arg(&script)
        .env("MESSAGE_DB_HOME", &home)
        .output()
        .map_err(crate::io(format!("running {shown}")))?;
    if !output.status.success() {
        return Err(command_error(shown, &output));
    }
    Ok(home.join("node_modules/@eventide/message-db"))
}

/// Installs Message DB into the existing database `dbname` on the server of `url`, with the
/// package's own `database/install.sh` (as the user of `url`). `install.sh` also creates the
/// cluster-wide role `message_store` when missing; run installs one at a time (the test harness
/// holds an advisory lock).
///
/// # Errors
/// [`DevDbError::BadUrl`] for a bad URL; [`DevDbError::Command`] when the package cannot be had
/// or `install.sh` fails.
pub fn install_message_db(url: &str, dbname: &str) -> Result<(), DevDbError> {
    let package = message_db_package()?;
    let config: tokio_postgres::Config = url.parse().map_err(DevDbError::BadUrl)?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let script = package.join("database/install.sh");
    let shown = format!("DATABASE_NAME={dbname} bash {}", script.display());
    let mut command = Command::new("bash");
    command
        .arg(&script)
        .env("DATABASE_NAME", dbname)
        .env("CREATE_DATABASE", "off")
        .env("PGHOST", host)
        .env("PGPORT", port.to_string())
        .env("PGUSER", config.get_user().unwrap_or("postgres"));
    if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        // A server that accepts only TLS (`hostssl`).
        command.env("PGSSLMODE", "require");
    }
    if let Some(password) = config.get_password() {
        command.env("PGPASSWORD", String::from_utf8_lossy(password).into_owned());
    }
    let output = command
        .output()
        .map_err(crate::io(format!("running {shown}")))?;
    if !output.status.success() {
        return Err(command_error(shown, &output));
    }
    Ok(())
}
