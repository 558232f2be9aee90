//! Every connection eventrail opens goes through here: TLS from the URL's `sslmode` (rustls),
//! connect and pool acquire timeouts, an optional statement timeout, an `application_name` per
//! component, and the one reconnecting LISTEN helper ([`PgListener`]).

mod listen;
mod params;
mod tls;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

pub use listen::{ListenEvent, PgListener};

use crate::ConnectError;

/// Connect timeout when neither the URL (`connect_timeout`) nor the code sets one.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long taking a connection from a pool may wait, unless set.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections of a pool built here, unless set.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;

/// The TLS stream of a connection opened here.
pub type PgTlsStream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;
/// A connection opened by [`PgConnectOptions::connect`]: drive it (spawn it, or poll its
/// messages for LISTEN) for its [`Client`] to work.
pub type PgConnection = tokio_postgres::Connection<Socket, PgTlsStream>;

/// libpq's `sslmode`: whether to encrypt, and what to check of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum SslMode {
    /// Never encrypt.
    Disable,
    /// Encrypt when the server offers TLS, else go on in plain text; the certificate is not
    /// checked (libpq's default).
    #[default]
    Prefer,
    /// Encrypt or fail. The certificate is checked only when `sslrootcert` names a CA (then as
    /// `verify-ca`), as libpq does.
    Require,
    /// Encrypt, and the server's certificate must lead to a trusted CA; its host name is not
    /// compared.
    VerifyCa,
    /// Encrypt, the certificate must lead to a trusted CA and be issued for the host connected
    /// to.
    VerifyFull,
}

impl SslMode {
    /// libpq's name of the mode.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    fn tokio(self) -> tokio_postgres::config::SslMode {
        match self {
            Self::Disable => tokio_postgres::config::SslMode::Disable,
            Self::Prefer => tokio_postgres::config::SslMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = ConnectError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => {
                return Err(ConnectError::InvalidParameter {
                    name: "sslmode",
                    value: s.to_owned(),
                    reason: "use disable, prefer, require, verify-ca or verify-full",
                });
            }
        })
    }
}

/// Where the trusted CA certificates come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SslRootCert {
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// The operating system's trust store (`sslrootcert=system`, as in libpq 16).
    System,
}

/// A client certificate and its key (`sslcert`, `sslkey`), both PEM files; the key unencrypted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct SslClientCert {
    /// The certificate (chain) file.
    pub cert: PathBuf,
    /// The private key file.
    pub key: PathBuf,
}

impl SslClientCert {
    /// A certificate file and its key file.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
        }
    }
}

/// How to connect to PostgreSQL: the server and credentials, TLS, timeouts and the pool size.
///
/// Parse it from a URL or a `key=value` string as libpq takes them, including `sslmode`
/// (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`), `sslrootcert` (a PEM file, or
/// `system`), `sslcert` and `sslkey` (a client certificate, both or neither), `connect_timeout`
/// (seconds) and `application_name`:
///
/// ```
/// # fn main() -> Result<(), eventrail_store_postgres::ConnectError> {
/// use eventrail_store_postgres::{PgConnectOptions, SslMode};
/// let options: PgConnectOptions =
///     "postgres://app@db.example/app?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem".parse()?;
/// assert_eq!(options.get_ssl_mode(), SslMode::VerifyFull);
/// # Ok(()) }
/// ```
///
/// Under `verify-ca` and `verify-full` without `sslrootcert`, libpq's default file
/// `~/.postgresql/root.crt` is used when it exists, else the system's trust store (libpq would
/// refuse; managed databases are mostly signed by public CAs).
///
/// Every component opens its connections with [`connect`](Self::connect) or
/// [`pool`](Self::pool), naming itself: the name becomes the session's `application_name`
/// (visible in `pg_stat_activity`) unless the URL or [`application_name`](Self::application_name)
/// sets one. A value, cheap to clone: one configuration can hold it for every component.
#[derive(Clone)]
pub struct PgConnectOptions {
    config: tokio_postgres::Config,
    ssl_mode: SslMode,
    ssl_root_cert: Option<SslRootCert>,
    ssl_client_cert: Option<SslClientCert>,
    connect_timeout: Duration,
    acquire_timeout: Duration,
    statement_timeout: Option<Duration>,
    max_connections: usize,
}

impl fmt::Debug for PgConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // tokio-postgres's own Debug redacts the password.
        f.debug_struct("PgConnectOptions")
            .field("config", &self.config)
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("ssl_client_cert", &self.ssl_client_cert)
            .field("connect_timeout", &self.connect_timeout)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl FromStr for PgConnectOptions {
    type Err = ConnectError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_url(s)
    }
}

impl From<tokio_postgres::Config> for PgConnectOptions {
    /// Takes tokio-postgres's settings as they are (its `sslmode` knows no `verify-*`).
    fn from(config: tokio_postgres::Config) -> Self {
        let ssl_mode = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => SslMode::Disable,
            tokio_postgres::config::SslMode::Require => SslMode::Require,
            _ => SslMode::Prefer,
        };
        let connect_timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        Self {
            config,
            ssl_mode,
            ssl_root_cert: None,
            ssl_client_cert: None,
            connect_timeout,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            statement_timeout: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl From<&tokio_postgres::Config> for PgConnectOptions {
    fn from(config: &tokio_postgres::Config) -> Self {
        config.clone().into()
    }
}

impl From<&PgConnectOptions> for PgConnectOptions {
    fn from(options: &PgConnectOptions) -> Self {
        options.clone()
    }
}

impl PgConnectOptions {
    /// Parses a `postgres://` URL or a libpq `key=value` connection string.
    ///
    /// # Errors
    /// [`ConnectError::InvalidUrl`] when it does not parse (an unknown parameter, a bad port),
    /// [`ConnectError::InvalidParameter`] for an unknown `sslmode`, or `sslcert` without
    /// `sslkey` (or the other way round).
    pub fn from_url(url: &str) -> Result<Self, ConnectError> {
        let split = params::split(url).map_err(|e| ConnectError::InvalidUrl(e.into()))?;
        let config: tokio_postgres::Config = split
            .rest
            .parse()
            .map_err(|e: tokio_postgres::Error| ConnectError::InvalidUrl(e.into()))?;
        let mut options = Self::from(config);
        options.ssl_mode = match split.get("sslmode") {
            Some(mode) => mode.parse()?,
            None => SslMode::Prefer,
        };
        options.ssl_root_cert = match split.get("sslrootcert") {
            None | Some("") => None,
            Some("system") => Some(SslRootCert::System),
            Some(path) => Some(SslRootCert::File(PathBuf::from(path))),
        };
        let given = |name| split.get(name).filter(|v| !v.is_empty());
        options.ssl_client_cert = match (given("sslcert"), given("sslkey")) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(SslClientCert::new(cert, key)),
            (Some(_), None) => {
                return Err(ConnectError::InvalidParameter {
                    name: "sslkey",
                    value: String::new(),
                    reason: "sslcert needs the key file too",
                });
            }
            (None, Some(_)) => {
                return Err(ConnectError::InvalidParameter {
                    name: "sslcert",
                    value: String::new(),
                    reason: "sslkey needs the certificate file too",
                });
            }
        };
        Ok(options)
    }

    /// Sets the `sslmode`.
    #[must_use]
    pub fn ssl_mode(mut self, mode: SslMode) -> Self {
        self.ssl_mode = mode;
        self
    }

    /// Sets where trusted CA certificates come from (`sslrootcert`).
    #[must_use]
    pub fn ssl_root_cert(mut self, root: SslRootCert) -> Self {
        self.ssl_root_cert = Some(root);
        self
    }

    /// Presents a client certificate (`sslcert`, `sslkey`) when the connection is encrypted.
    #[must_use]
    pub fn ssl_client_cert(mut self, client: SslClientCert) -> Self {
        self.ssl_client_cert = Some(client);
        self
    }

    /// Sets the connect timeout: TCP, TLS and authentication together (default: the URL's
    /// `connect_timeout`, else 10 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets how long taking a connection from a pool built here may wait (default 30 s).
    #[must_use]
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Sets `statement_timeout` for every session opened here (default: the server's). It is
    /// sent in the startup packet's `options`, which PgBouncer refuses unless `options` is in its
    /// `ignore_startup_parameters`; behind PgBouncer, set it on the role instead
    /// (`ALTER ROLE .. SET statement_timeout`).
    #[must_use]
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = Some(timeout);
        self
    }

    /// Names every session opened here, instead of the component's name.
    #[must_use]
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.config.application_name(name.into());
        self
    }

    /// Sets the size of pools built here (default 16).
    #[must_use]
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Turns on TCP keepalives, probing after `idle` and every `idle` after that, `retries`
    /// times.
    #[must_use]
    pub fn tcp_keepalives(mut self, idle: Duration, retries: u32) -> Self {
        self.config
            .keepalives(true)
            .keepalives_idle(idle)
            .keepalives_interval(idle)
            .keepalives_retries(retries);
        self
    }

    /// The `sslmode`.
    #[must_use]
    pub fn get_ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// The CA certificates' source, when set.
    #[must_use]
    pub fn get_ssl_root_cert(&self) -> Option<&SslRootCert> {
        self.ssl_root_cert.as_ref()
    }

    /// The client certificate, when set.
    #[must_use]
    pub fn get_ssl_client_cert(&self) -> Option<&SslClientCert> {
        self.ssl_client_cert.as_ref()
    }

    /// The connect timeout.
    #[must_use]
    pub fn get_connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The pool acquire timeout.
    #[must_use]
    pub fn get_acquire_timeout(&self) -> Duration {
        self.acquire_timeout
    }

    /// The statement timeout, when set.
    #[must_use]
    pub fn get_statement_timeout(&self) -> Option<Duration> {
        self.statement_timeout
    }

    /// The pool size.
    #[must_use]
    pub fn get_max_connections(&self) -> usize {
        self.max_connections
    }

    /// The tokio-postgres settings (without TLS, which is configured here).
    #[must_use]
    pub fn tokio_config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The `application_name` a session of `component` gets.
    #[must_use]
    pub fn application_name_for<'a>(&'a self, component: &'a str) -> &'a str {
        self.config.get_application_name().unwrap_or(component)
    }

    /// The tokio-postgres settings of a session of `component`.
    fn session_config(&self, component: &str) -> tokio_postgres::Config {
        let mut config = self.config.clone();
        config.ssl_mode(self.ssl_mode.tokio());
        config.connect_timeout(self.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name(component);
        }
        if let Some(timeout) = self.statement_timeout {
            let setting = format!("-c statement_timeout={}", timeout.as_millis());
            let options = match config.get_options() {
                Some(given) if !given.trim().is_empty() => format!("{given} {setting}"),
                _ => setting,
            };
            config.options(options);
        }
        config
    }

    /// Checks the TLS settings (reads the CA file) without connecting.
    ///
    /// # Errors
    /// [`ConnectError::RootCert`], [`ConnectError::ClientCert`], [`ConnectError::NoSystemRoots`],
    /// [`ConnectError::TlsConfig`].
    pub fn tls(&self) -> Result<MakeRustlsConnect, ConnectError> {
        tls::connector(
            self.ssl_mode,
            self.ssl_root_cert.as_ref(),
            self.ssl_client_cert.as_ref(),
        )
    }

    /// Opens one connection for `component` (its `application_name` unless one is set), within
    /// the connect timeout. The caller drives the returned connection (`tokio::spawn` it).
    ///
    /// # Errors
    /// [`ConnectError::Timeout`], [`ConnectError::Tls`], [`ConnectError::Refused`],
    /// [`ConnectError::Failed`], or a TLS setting's error (see [`tls`](Self::tls)).
    pub async fn connect(&self, component: &str) -> Result<(Client, PgConnection), ConnectError> {
        let tls = self.tls()?;
        let config = self.session_config(component);
        match tokio::time::timeout(self.connect_timeout, config.connect(tls)).await {
            Ok(Ok(connected)) => Ok(connected),
            Ok(Err(e)) => Err(ConnectError::from_connect(e)),
            Err(_) => Err(ConnectError::Timeout {
                after: self.connect_timeout,
            }),
        }
    }

    /// A pool of connections for `component`: at most [`max_connections`](Self::max_connections),
    /// each made within the connect timeout, taken within the acquire timeout. Nothing connects
    /// yet.
    ///
    /// # Errors
    /// A TLS setting's error (see [`tls`](Self::tls)), [`ConnectError::Pool`].
    pub fn pool(&self, component: &str) -> Result<deadpool_postgres::Pool, ConnectError> {
        self.pool_with(self.session_config(component))
    }

    /// [`pool`](Self::pool) with the session settings changed by `adjust` (for example a
    /// `search_path` in `options`).
    ///
    /// # Errors
    /// As [`pool`](Self::pool).
    pub fn pool_adjusted(
        &self,
        component: &str,
        adjust: impl FnOnce(&mut tokio_postgres::Config),
    ) -> Result<deadpool_postgres::Pool, ConnectError> {
        let mut config = self.session_config(component);
        adjust(&mut config);
        self.pool_with(config)
    }

    fn pool_with(
        &self,
        config: tokio_postgres::Config,
    ) -> Result<deadpool_postgres::Pool, ConnectError> {
        let manager = deadpool_postgres::Manager::from_config(
            config,
            self.tls()?,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        deadpool_postgres::Pool::builder(manager)
            .max_size(self.max_connections)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .create_timeout(Some(self.connect_timeout))
            .recycle_timeout(Some(self.connect_timeout))
            .wait_timeout(Some(self.acquire_timeout))
            .build()
            .map_err(|e| ConnectError::Pool(e.into()))
    }

    /// A reconnecting listener on `channels` for `component` (see [`PgListener`]).
    ///
    /// # Errors
    /// [`ConfigError`](crate::ConfigError) for a channel that is not a plain identifier.
    pub fn listener(
        &self,
        component: &str,
        channels: &[&str],
    ) -> Result<PgListener, crate::ConfigError> {
        PgListener::new(self.clone(), component, channels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libpq_parameters() {
        let o: PgConnectOptions =
            "postgres://u:secret@h:5433/db?sslmode=verify-ca&sslrootcert=%2Fca.pem&connect_timeout=3&application_name=me"
                .parse()
                .unwrap();
        assert_eq!(o.get_ssl_mode(), SslMode::VerifyCa);
        assert_eq!(
            o.get_ssl_root_cert(),
            Some(&SslRootCert::File("/ca.pem".into()))
        );
        assert_eq!(o.get_connect_timeout(), Duration::from_secs(3));
        assert_eq!(o.application_name_for("eventrail-store"), "me");
        assert!(!format!("{o:?}").contains("secret"));
        let o: PgConnectOptions = "host=h user=u sslrootcert=system".parse().unwrap();
        assert_eq!(o.get_ssl_mode(), SslMode::Prefer);
        assert_eq!(o.get_ssl_root_cert(), Some(&SslRootCert::System));
        assert_eq!(o.get_connect_timeout(), DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(o.application_name_for("eventrail-store"), "eventrail-store");
    }

    #[test]
    fn refuses_bad_parameters_with_typed_errors() {
        assert!(matches!(
            "postgres://h/db?sslmode=verify".parse::<PgConnectOptions>(),
            Err(ConnectError::InvalidParameter {
                name: "sslmode",
                ..
            })
        ));
        assert!(matches!(
            "postgres://h/db?sslcert=/c.pem".parse::<PgConnectOptions>(),
            Err(ConnectError::InvalidParameter { name: "sslkey", .. })
        ));
        let o: PgConnectOptions = "postgres://h/db?sslcert=/c.pem&sslkey=/k.pem"
            .parse()
            .unwrap();
        assert_eq!(
            o.get_ssl_client_cert(),
            Some(&SslClientCert::new("/c.pem", "/k.pem"))
        );
        assert!(matches!(
            "postgres://h:notaport/db".parse::<PgConnectOptions>(),
            Err(ConnectError::InvalidUrl(_))
        ));
        let e = "postgres://u:hunter2@h/db?nonsense=1"
            .parse::<PgConnectOptions>()
            .unwrap_err();
        assert!(!eventrail_core::error_chain(&e).contains("hunter2"));
    }

    #[test]
    fn session_settings() {
        let o: PgConnectOptions =
            "postgres://h/db?options=-c%20search_path%3Dx&sslmode=verify-full"
                .parse()
                .unwrap();
        let o = o.statement_timeout(Duration::from_millis(1500));
        let c = o.session_config("eventrail-cli");
        assert_eq!(c.get_application_name(), Some("eventrail-cli"));
        assert_eq!(
            c.get_options(),
            Some("-c search_path=x -c statement_timeout=1500")
        );
        assert_eq!(c.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        assert_eq!(c.get_connect_timeout(), Some(&DEFAULT_CONNECT_TIMEOUT));
    }
}
