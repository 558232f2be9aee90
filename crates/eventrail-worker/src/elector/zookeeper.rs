//! Leader election on ZooKeeper: each candidate creates an ephemeral sequential node
//! `<path>/n-<number>` in its own session; the lowest number leads and is the fencing token.
//! A follower watches only the node just below its own (no herd on every change).
//!
//! Leadership holds only while the session is connected: `Disconnected` suspends it at once (the
//! session may still be alive, but another candidate may be elected if it expires while we
//! cannot hear about it), `SyncConnected` lets it resume after a fresh look at the children, and
//! `Expired` ends the session (its node is gone): the worker starts a new session and a new node.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn};
use zookeeper_client::{Acls, Client, CreateMode, SessionState};

use super::{External, Grant, back_off, check_prefix, default_prefix, publish, suspend_after};
use crate::WorkerError;
use crate::runtime::Shared;

/// Leader election on ZooKeeper (feature `zookeeper`), for
/// [`LeaderMode::ZooKeeper`](crate::LeaderMode::ZooKeeper).
///
/// ```
/// # use std::time::Duration;
/// use eventrail_worker::{LeaderMode, WorkerOptions, ZooKeeperElection};
/// let options = WorkerOptions::new().leader_mode(LeaderMode::ZooKeeper(
///     ZooKeeperElection::new("127.0.0.1:2181").session_timeout(Duration::from_secs(6)),
/// ));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct ZooKeeperElection {
    connect: String,
    path: Option<String>,
    session_timeout: Duration,
}

impl ZooKeeperElection {
    /// Election on the ensemble of `connect` (`host:port[,host:port...]`), with a 6 s session
    /// timeout and the election node `/eventrail/<schema>/worker/leader`.
    pub fn new(connect: impl Into<String>) -> Self {
        Self {
            connect: connect.into(),
            path: None,
            session_timeout: Duration::from_secs(6),
        }
    }

    /// The prefix of the fleet's nodes (default `/eventrail/<schema>/worker`, namespaced by the
    /// store's schema); candidates are the children of `<prefix>/leader`.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.path = Some(prefix.into());
        self
    }

    /// The session timeout asked of the server (default 6 s; the server bounds it between 2 and
    /// 20 ticks): a killed or frozen leader is replaced after about this long.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// The connect string.
    #[must_use]
    pub fn connect_string(&self) -> &str {
        &self.connect
    }
}

struct Campaign {
    connect: String,
    /// The election node (the candidates' parent).
    path: String,
    value: String,
    session_timeout: Duration,
    suspend: Duration,
    options: std::sync::Arc<crate::WorkerOptions>,
}

fn failed(e: impl Into<eventrail_core::BoxError>) -> WorkerError {
    WorkerError::Election {
        service: "zookeeper",
        source: e.into(),
    }
}

/// Starts campaigning.
pub(super) fn start(
    shared: &Shared,
    settings: &ZooKeeperElection,
) -> Result<External, WorkerError> {
    if settings.connect.trim().is_empty() {
        return Err(WorkerError::InvalidElection {
            reason: "ZooKeeper election needs a connect string",
        });
    }
    let prefix = check_prefix(settings.path.as_deref().unwrap_or(&default_prefix(shared)))?;
    let campaign = Campaign {
        connect: settings.connect.clone(),
        path: format!("{prefix}/leader"),
        value: shared.id.to_string(),
        session_timeout: settings.session_timeout,
        suspend: suspend_after(settings.session_timeout),
        options: shared.options.clone(),
    };
    let span = info_span!("zookeeper_election", path = %campaign.path);
    Ok(External::spawn(span, |state, stop| {
        run(campaign, state, stop)
    }))
}

async fn run(c: Campaign, state: watch::Sender<Option<Grant>>, stop: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let outcome = session(&c, &state, &stop).await;
        state.send_replace(None);
        match outcome {
            Ok(()) => return,
            Err(e) => {
                if back_off(&e, &mut failures, &c.options, &stop).await {
                    return;
                }
            }
        }
    }
}

/// The sequence number of a candidate node named `n-<number>`.
fn sequence(name: &str) -> Option<i64> {
    name.strip_prefix("n-")?.parse().ok()
}

/// One session's campaign. `Ok` when stopped (its node deleted); an error ends the session.
async fn session(
    c: &Campaign,
    state: &watch::Sender<Option<Grant>>,
    stop: &CancellationToken,
) -> Result<(), WorkerError> {
    let connect = Client::connector()
        .with_session_timeout(c.session_timeout)
        .with_connection_timeout(c.suspend)
        .connect(&c.connect);
    let client = tokio::select! {
        () = stop.cancelled() => return Ok(()),
        client = tokio::time::timeout(c.session_timeout, connect) => client.map_err(failed)?.map_err(failed)?,
    };
    let mut states = client.state_watcher();
    client
        .mkdir(
            &c.path,
            &CreateMode::Persistent.with_acls(Acls::anyone_all()),
        )
        .await
        .map_err(failed)?;
    let (_, created) = client
        .create(
            &format!("{}/n-", c.path),
            c.value.as_bytes(),
            &CreateMode::EphemeralSequential.with_acls(Acls::anyone_all()),
        )
        .await
        .map_err(failed)?;
    let token = created.into_i64();
    let mine = format!("{}/n-{created}", c.path);
    debug!(node = %mine, "candidate node created");
    let mut connected = true;
    let mut leading = false;
    loop {
        let mut below = None;
        if connected {
            match look(&client, c, token).await {
                Ok(Position::Leads) => {
                    if !leading {
                        info!(token, "elected leader on ZooKeeper");
                    }
                    leading = true;
                    publish(
                        state,
                        Some(Grant {
                            token,
                            valid_until: None,
                        }),
                    );
                }
                Ok(Position::Follows(watcher)) => {
                    leading = false;
                    publish(state, None);
                    if watcher.is_none() {
                        // The candidate below went between the listing and the watch.
                        continue;
                    }
                    below = watcher;
                }
                Ok(Position::Gone) => {
                    return Err(failed("our candidate node is gone (the session expired)"));
                }
                Err(e) => {
                    // A lost connection shows as a state change below; meanwhile, no leadership.
                    leading = false;
                    publish(state, None);
                    debug!(error = %crate::error::chain(&e), "reading the candidates failed");
                }
            }
        }
        let below_gone = async {
            match below {
                Some(w) => {
                    w.changed().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => {
                state.send_replace(None);
                // Deleting the node lets the next candidate lead at once; closing the session
                // (the client's drop) would delete it too.
                if tokio::time::timeout(c.suspend, client.delete(&mine, None)).await.is_err() {
                    debug!("deleting the candidate node timed out; it goes with the session");
                }
                return Ok(());
            }
            now = states.changed() => match now {
                SessionState::SyncConnected => {
                    info!("ZooKeeper connection back: checking the candidates again");
                    connected = true;
                }
                SessionState::Disconnected | SessionState::ConnectedReadOnly => {
                    if leading {
                        warn!(token, "ZooKeeper disconnected: leadership suspended");
                    }
                    connected = false;
                    leading = false;
                    state.send_replace(None);
                }
                other => return Err(failed(format!("ZooKeeper session ended: {other:?}"))),
            },
            () = below_gone => {}
            // A fresh look now and then: a missed watch costs at most this long.
            () = tokio::time::sleep(c.session_timeout) => {}
        }
    }
}

enum Position {
    Leads,
    /// Watching the candidate just below (or nothing, when it vanished meanwhile: look again).
    Follows(Option<zookeeper_client::OneshotWatcher>),
    Gone,
}

async fn look(client: &Client, c: &Campaign, token: i64) -> Result<Position, WorkerError> {
    let mut candidates: Vec<i64> = client
        .list_children(&c.path)
        .await
        .map_err(failed)?
        .iter()
        .filter_map(|n| sequence(n))
        .collect();
    candidates.sort_unstable();
    if !candidates.contains(&token) {
        return Ok(Position::Gone);
    }
    let Some(&below) = candidates.iter().rev().find(|&&n| n < token) else {
        return Ok(Position::Leads);
    };
    let name = candidates_name(&c.path, below);
    let (stat, watcher) = client.check_and_watch_stat(&name).await.map_err(failed)?;
    Ok(Position::Follows(stat.map(|_| watcher)))
}

/// The path of the candidate with `number` (ZooKeeper pads it to ten digits, or nineteen past
/// `i32::MAX`).
fn candidates_name(path: &str, number: i64) -> String {
    if number <= i64::from(i32::MAX) {
        format!("{path}/n-{number:010}")
    } else {
        format!("{path}/n-{number:019}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_names_round_trip() {
        assert_eq!(sequence("n-0000000042"), Some(42));
        assert_eq!(sequence("x-1"), None);
        assert_eq!(candidates_name("/a", 42), "/a/n-0000000042");
        assert_eq!(sequence(&candidates_name("/a", 42)[3..]), Some(42));
    }
}
