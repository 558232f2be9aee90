//! Servers of a test's own, which it may kill and restart: a throwaway PostgreSQL cluster, a
//! nats-server with JetStream, an etcd and a ZooKeeper server and a nisshi Kafka broker, each
//! on a free port (never the shared ones).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;
use uuid::Uuid;

/// Waits until `condition` holds, checking every 10 ms; fails after `seconds` with `what`.
///
/// # Errors
/// The condition's error, or a timeout naming `what`.
pub async fn eventually<F, Fut>(seconds: u64, what: &str, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        if condition().await? {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "timed out after {seconds} s waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A TCP port nobody listens on right now.
///
/// # Errors
/// When no local port can be bound.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A throwaway PostgreSQL cluster of its own, stopped and removed when dropped.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    /// URL of its `postgres` database.
    pub admin_url: String,
    /// Its port.
    pub port: u16,
}

impl Cluster {
    /// Initialises and starts a cluster on `port` (a free one when `None`).
    ///
    /// # Errors
    /// When PostgreSQL is not installed or does not start.
    pub async fn start(port: Option<u16>) -> anyhow::Result<Self> {
        let port = match port {
            Some(p) => p,
            None => free_port()?,
        };
        let dir = std::env::temp_dir()
            .join(format!("eventrail-cluster-{}", Uuid::new_v4().simple()))
            .join("data");
        let admin_url = eventrail_devdb::start_throwaway_cluster(&dir, port).await?;
        Ok(Self {
            dir,
            admin_url,
            port,
        })
    }

    /// `pg_ctl restart -m fast`: every session is cut, then the server accepts connections
    /// again on the same port.
    ///
    /// # Errors
    /// When `pg_ctl` fails.
    pub async fn restart(&self) -> anyhow::Result<()> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || eventrail_devdb::restart_throwaway_cluster(&dir))
            .await??;
        Ok(())
    }

    /// Its data folder.
    #[must_use]
    pub fn data(&self) -> &Path {
        &self.dir
    }

    /// Starts a hot standby of this cluster (a streaming replica from the same binaries) on a
    /// free port.
    ///
    /// # Errors
    /// When the base backup or the standby's start fails.
    pub async fn start_standby(&self) -> anyhow::Result<Standby> {
        let port = free_port()?;
        let dir = std::env::temp_dir()
            .join(format!("eventrail-standby-{}", Uuid::new_v4().simple()))
            .join("data");
        let admin_url = eventrail_devdb::start_throwaway_standby(self.port, &dir, port).await?;
        Ok(Standby {
            dir,
            admin_url,
            port,
        })
    }
}

/// A hot standby of a [`Cluster`], replaying its WAL as it streams; stopped and removed when
/// dropped.
#[derive(Debug)]
pub struct Standby {
    dir: PathBuf,
    /// URL of its `postgres` database (read-only).
    pub admin_url: String,
    /// Its port.
    pub port: u16,
}

impl Standby {
    /// The URL of its database `name` (read-only, replicated from the primary's).
    #[must_use]
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        let _ = eventrail_devdb::stop_throwaway_cluster(&self.dir);
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = eventrail_devdb::stop_throwaway_cluster(self.data());
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}

/// A nats-server with JetStream of its own, on a free port, with its store in a temporary
/// folder, so that a test can kill and restart it.
#[derive(Debug)]
pub struct NatsServer {
    port: u16,
    store: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts one and waits until it accepts connections.
    ///
    /// # Errors
    /// When nats-server is not installed or does not start.
    pub async fn start() -> anyhow::Result<Self> {
        let store = std::env::temp_dir().join(format!("eventrail-nats-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&store)?;
        let mut server = Self {
            port: free_port()?,
            store,
            child: None,
        };
        server.restart().await?;
        Ok(server)
    }

    /// Its URL.
    #[must_use]
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again, on the same port and store) and waits until it accepts.
    ///
    /// # Errors
    /// When it cannot be started or does not accept within 30 s.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("nats-server");
        let child = Command::new(binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("nats-server must be installed (scripts/ensure-brokers.sh installs it)")?;
        self.child = Some(child);
        let address = format!("127.0.0.1:{}", self.port);
        eventually(30, "the nats-server accepting connections", || async {
            Ok(tokio::net::TcpStream::connect(&address).await.is_ok())
        })
        .await
    }

    /// SIGKILLs the server: the broker is gone, as in a crash.
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// Sends `signal` (`STOP`, `CONT`) to a server's process.
fn signal(child: Option<&Child>, what: &str, signal: &str) -> anyhow::Result<()> {
    let child = child.ok_or_else(|| anyhow::anyhow!("{what} is not running"))?;
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {what} failed");
    Ok(())
}

/// SIGKILLs a server (resumed first, in case a test left it frozen), then reaps it.
fn kill_child(child: Option<Child>) -> anyhow::Result<()> {
    if let Some(mut child) = child {
        let _ = Command::new("kill")
            .args(["-CONT", &child.id().to_string()])
            .status();
        child.kill()?;
        child.wait()?;
    }
    Ok(())
}

/// Waits until `port` on 127.0.0.1 accepts connections.
async fn accepting(what: &str, port: u16) -> anyhow::Result<()> {
    let address = format!("127.0.0.1:{port}");
    eventually(30, &format!("{what} accepting connections"), || async {
        Ok(tokio::net::TcpStream::connect(&address).await.is_ok())
    })
    .await
}

/// An etcd server of its own (one member), on free ports, with its data in a temporary
/// folder, so that a test can freeze, kill and restart it (never the shared one).
#[derive(Debug)]
pub struct EtcdServer {
    port: u16,
    peer_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl EtcdServer {
    /// Starts one and waits until it accepts connections.
    ///
    /// # Errors
    /// When etcd is not installed or does not start.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("eventrail-etcd-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&dir)?;
        let mut server = Self {
            port: free_port()?,
            peer_port: free_port()?,
            dir,
            child: None,
        };
        server.restart().await?;
        Ok(server)
    }

    /// Its client endpoint.
    #[must_use]
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again, on the same ports and data) and waits until it accepts.
    ///
    /// # Errors
    /// When it cannot be started or does not accept within 30 s.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let client = self.endpoint();
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &format!("test={peer}"),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("etcd.log"))?)
            .spawn()
            .context("etcd must be installed (scripts/ensure-etcd.sh installs it)")?;
        self.child = Some(child);
        accepting("etcd", self.port).await
    }

    /// Sends `signal` (`STOP` freezes it with its connections open, `CONT` resumes it).
    ///
    /// # Errors
    /// When it is not running or the signal cannot be sent.
    pub fn signal(&self, sig: &str) -> anyhow::Result<()> {
        signal(self.child.as_ref(), "etcd", sig)
    }

    /// SIGKILLs the server, as in a crash.
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        kill_child(self.child.take())
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A standalone ZooKeeper server of its own (Debian's `zookeeperd` jars), on a free port with
/// a 500 ms tick (session timeouts from 1 s), its data in a temporary folder, so that a test
/// can freeze, kill and restart it (never the shared one).
#[derive(Debug)]
pub struct ZooKeeperServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// Where Debian's `zookeeper` package puts its jar (its manifest names the dependencies).
pub const ZOOKEEPER_CLASSPATH: &str = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar";

impl ZooKeeperServer {
    /// Starts one and waits until it accepts connections.
    ///
    /// # Errors
    /// When ZooKeeper (and Java) are not installed or it does not start.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("eventrail-zookeeper-{}", Uuid::now_v7()));
        std::fs::create_dir_all(dir.join("data"))?;
        let port = free_port()?;
        std::fs::write(
            dir.join("zoo.cfg"),
            format!(
                "tickTime=500\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
                 minSessionTimeout=1000\nmaxSessionTimeout=30000\nadmin.enableServer=false\n",
                dir.join("data").display()
            ),
        )?;
        let mut server = Self {
            port,
            dir,
            child: None,
        };
        server.restart().await?;
        Ok(server)
    }

    /// Its connect string.
    #[must_use]
    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the server (again, on the same port and data) and waits until it accepts.
    ///
    /// # Errors
    /// When it cannot be started or does not accept within 30 s.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(
            Path::new("/usr/share/java/zookeeper.jar").exists(),
            "ZooKeeper must be installed (scripts/ensure-zookeeper.sh installs zookeeperd)"
        );
        let child = Command::new("java")
            .args(["-cp", ZOOKEEPER_CLASSPATH])
            .arg(format!("-Dzookeeper.log.dir={}", self.dir.display()))
            .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
            .arg(self.dir.join("zoo.cfg"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("zookeeper.log"))?)
            .spawn()
            .context("java must be installed (scripts/ensure-zookeeper.sh installs zookeeperd)")?;
        self.child = Some(child);
        accepting("ZooKeeper", self.port).await
    }

    /// Sends `signal` (`STOP` freezes it with its connections open, `CONT` resumes it).
    ///
    /// # Errors
    /// When it is not running or the signal cannot be sent.
    pub fn signal(&self, sig: &str) -> anyhow::Result<()> {
        signal(self.child.as_ref(), "ZooKeeper", sig)
    }

    /// SIGKILLs the server, as in a crash.
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        kill_child(self.child.take())
    }
}

impl Drop for ZooKeeperServer {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where `scripts/ensure-kafka.sh` installs nisshi: `$NISSHI`, else
/// `$HOME/.cache/eventrail/nisshi/bin/nisshi`, else `nisshi` on the `PATH`.
#[must_use]
pub fn nisshi_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NISSHI").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cache/eventrail/nisshi/bin/nisshi"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nisshi"))
}

/// A nisshi broker (Kafka's protocol) of its own on a free port, with memory storage: a test may
/// kill, freeze and restart it. Memory storage means a restarted broker starts empty (no topics,
/// no records), like a new cluster.
#[derive(Debug)]
pub struct KafkaServer {
    port: u16,
    child: Option<Child>,
}

impl KafkaServer {
    /// Starts one and waits until it accepts connections.
    ///
    /// # Errors
    /// When nisshi is not installed or does not start.
    pub async fn start() -> anyhow::Result<Self> {
        let mut server = Self {
            port: free_port()?,
            child: None,
        };
        server.restart().await?;
        Ok(server)
    }

    /// Its bootstrap servers (`127.0.0.1:port`).
    #[must_use]
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker (again, on the same port, empty) and waits until it accepts.
    ///
    /// # Errors
    /// When it cannot be started or does not accept within 30 s.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(nisshi_binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
            ])
            .arg(&url)
            .args(["--storage-engine", "memory://nisshi/"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("nisshi must be installed (scripts/ensure-kafka.sh installs it)")?;
        self.child = Some(child);
        let address = self.bootstrap();
        eventually(30, "the nisshi broker accepting connections", || async {
            Ok(tokio::net::TcpStream::connect(&address).await.is_ok())
        })
        .await
    }

    /// Sends `signal` (`STOP`, `CONT`) to the broker.
    ///
    /// # Errors
    /// When it is not running or the signal cannot be sent.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let child = self.child.as_ref().context("the broker is not running")?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} failed");
        Ok(())
    }

    /// SIGKILLs the broker: gone, as in a crash (and with memory storage, its records with it).
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for KafkaServer {
    fn drop(&mut self) {
        let _ = self.signal("CONT");
        let _ = self.kill();
    }
}
