//! Leader election on etcd: a lease that this worker owns and keeps alive itself (the
//! server-side session is not kept alive for us), and one leader key `<prefix>/leader` created
//! only when absent and attached to the lease. The fencing token is that key's create revision.
//!
//! Every tick (a ninth of the session timeout) the task sends a keep-alive and campaigns with a
//! compare-and-create; a follower thus takes over within a tick of the old key's deletion (the
//! old lease revoked on shutdown, or expired after a kill or a freeze). Leadership is granted
//! until the earlier of the lease's end as of the last answered keep-alive (measured from when
//! it was sent) and a third of the session timeout after the last answer: an etcd that stops
//! answering suspends the leader long before its lease could expire on the server.

use std::collections::VecDeque;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn};

use super::{External, Grant, back_off, check_prefix, default_prefix, publish, suspend_after};
use crate::WorkerError;
use crate::runtime::Shared;

/// Leader election on etcd (feature `etcd`), for
/// [`LeaderMode::Etcd`](crate::LeaderMode::Etcd).
///
/// ```
/// # use std::time::Duration;
/// use eventrail_worker::{EtcdElection, LeaderMode, WorkerOptions};
/// let options = WorkerOptions::new().leader_mode(LeaderMode::Etcd(
///     EtcdElection::new(["http://127.0.0.1:2379"]).session_timeout(Duration::from_secs(5)),
/// ));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct EtcdElection {
    endpoints: Vec<String>,
    key_prefix: Option<String>,
    session_timeout: Duration,
}

impl EtcdElection {
    /// Election on the etcd cluster at `endpoints` (`http://127.0.0.1:2379`), with a 5 s session
    /// timeout and the key prefix `/eventrail/<schema>/worker`.
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            key_prefix: None,
            session_timeout: Duration::from_secs(5),
        }
    }

    /// The prefix of the fleet's keys (default `/eventrail/<schema>/worker`, namespaced by the
    /// store's schema); the leader key is `<prefix>/leader`. Fleets that share an etcd cluster
    /// and a schema name must set different prefixes.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = Some(prefix.into());
        self
    }

    /// The lease's time to live (rounded up to whole seconds, at least 2 s; default 5 s): a
    /// killed or frozen leader is replaced after about this long. A third of it without an answer
    /// from etcd suspends leadership.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// The endpoints.
    #[must_use]
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }
}

/// What the campaign task needs.
struct Campaign {
    endpoints: Vec<String>,
    key: String,
    /// The leader key's value: this worker's id.
    value: String,
    ttl_seconds: i64,
    suspend: Duration,
    tick: Duration,
    options: std::sync::Arc<crate::WorkerOptions>,
}

fn failed(e: impl Into<eventrail_core::BoxError>) -> WorkerError {
    WorkerError::Election {
        service: "etcd",
        source: e.into(),
    }
}

/// Starts campaigning.
pub(super) fn start(shared: &Shared, settings: &EtcdElection) -> Result<External, WorkerError> {
    if settings.endpoints.is_empty() {
        return Err(WorkerError::InvalidElection {
            reason: "etcd election needs at least one endpoint",
        });
    }
    let prefix = check_prefix(
        settings
            .key_prefix
            .as_deref()
            .unwrap_or(&default_prefix(shared)),
    )?;
    let ttl = settings.session_timeout.max(Duration::from_secs(2));
    let ttl_seconds =
        i64::try_from(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)).unwrap_or(i64::MAX);
    let suspend = suspend_after(ttl);
    let campaign = Campaign {
        endpoints: settings.endpoints.clone(),
        key: format!("{prefix}/leader"),
        value: shared.id.to_string(),
        ttl_seconds,
        suspend,
        tick: suspend / 3,
        options: shared.options.clone(),
    };
    let span = info_span!("etcd_election", key = %campaign.key);
    Ok(External::spawn(span, |state, stop| {
        run(campaign, state, stop)
    }))
}

/// Campaigns until `stop`, reconnecting with backoff; hands the lease back at the end.
async fn run(c: Campaign, state: watch::Sender<Option<Grant>>, stop: CancellationToken) {
    let mut lease: Option<i64> = None;
    let mut failures = 0u32;
    loop {
        let outcome = session(&c, &state, &mut lease, &stop).await;
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

/// One connection's campaign: keeps the lease alive, campaigns every tick, publishes the grant.
/// `Ok` when stopped (the lease revoked); an error suspends leadership and reconnects.
async fn session(
    c: &Campaign,
    state: &watch::Sender<Option<Grant>>,
    lease: &mut Option<i64>,
    stop: &CancellationToken,
) -> Result<(), WorkerError> {
    let options = ConnectOptions::new()
        .with_connect_timeout(c.suspend)
        .with_timeout(c.suspend)
        .with_keep_alive(c.tick, c.suspend);
    let mut client = tokio::time::timeout(c.suspend, Client::connect(&c.endpoints, Some(options)))
        .await
        .map_err(failed)?
        .map_err(failed)?;
    // The lease held before a reconnect may still be alive (and our key with it).
    let mut deadline = None;
    let mut keep_alive = None;
    if let Some(id) = *lease {
        let sent = Instant::now();
        // Opening the keep-alive stream renews the lease once (to its full time to live) and
        // fails with "lease not found" when it expired or was revoked meanwhile.
        match client.lease_keep_alive(id).await {
            Ok(k) => {
                deadline = Some(sent + seconds(c.ttl_seconds));
                keep_alive = Some(k);
                debug!(lease = id, "the lease outlived the reconnect");
            }
            // A new lease, a new campaign, a new token.
            Err(etcd_client::Error::LeaseKeepAliveError(_)) => *lease = None,
            Err(e) => return Err(failed(e)),
        }
    }
    let (id, (mut keeper, mut stream)) = match (*lease, keep_alive) {
        (Some(id), Some(k)) => (id, k),
        _ => {
            let sent = Instant::now();
            let granted = client
                .lease_grant(c.ttl_seconds, None)
                .await
                .map_err(failed)?;
            *lease = Some(granted.id());
            deadline = Some(sent + seconds(granted.ttl()));
            (
                granted.id(),
                client
                    .lease_keep_alive(granted.id())
                    .await
                    .map_err(failed)?,
            )
        }
    };
    let mut last_answer = Instant::now();
    let mut sent: VecDeque<Instant> = VecDeque::new();
    let mut token: Option<i64> = None;
    let mut tick = tokio::time::interval(c.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                state.send_replace(None);
                // Revoking deletes the leader key at once: the next leader need not wait.
                match tokio::time::timeout(c.suspend, client.lease_revoke(id)).await {
                    Ok(Ok(_)) => debug!(lease = id, "lease revoked"),
                    _ => debug!(lease = id, "revoking the lease failed; it expires by itself"),
                }
                *lease = None;
                return Ok(());
            }
            _ = tick.tick() => {
                keeper.keep_alive().await.map_err(failed)?;
                sent.push_back(Instant::now());
                let now = campaign_once(&mut client, c, id).await?;
                if now != token {
                    match now {
                        Some(t) => info!(token = t, "elected leader on etcd"),
                        None if token.is_some() => warn!("the etcd leader key is no longer ours"),
                        None => {}
                    }
                }
                token = now;
            }
            answer = stream.message() => {
                let answer = match answer {
                    Ok(Some(answer)) => answer,
                    Ok(None) => return Err(failed("the keep-alive stream ended")),
                    Err(e) => {
                        if matches!(e, etcd_client::Error::LeaseKeepAliveError(_)) {
                            *lease = None;
                        }
                        return Err(failed(e));
                    }
                };
                let at = sent.pop_front().unwrap_or_else(Instant::now);
                if answer.ttl() <= 0 {
                    *lease = None;
                    return Err(failed("the lease expired"));
                }
                deadline = Some(at + seconds(answer.ttl()));
                last_answer = Instant::now();
            }
        }
        // Until the lease's end (less a tick of margin), and no longer than `suspend` after the
        // last answer: a silent etcd suspends leadership before the lease could expire.
        let valid_until = deadline
            .map(|d| d.checked_sub(c.tick).unwrap_or(d))
            .unwrap_or(last_answer)
            .min(last_answer + c.suspend);
        let grant = token
            .map(|t| Grant {
                token: t,
                valid_until: Some(valid_until),
            })
            .filter(Grant::holds);
        publish(state, grant);
    }
}

fn seconds(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

/// Creates the leader key on our lease unless it exists; the token when it is ours.
async fn campaign_once(
    client: &mut Client,
    c: &Campaign,
    lease: i64,
) -> Result<Option<i64>, WorkerError> {
    let txn = Txn::new()
        .when([Compare::create_revision(
            c.key.as_str(),
            CompareOp::Equal,
            0,
        )])
        .and_then([TxnOp::put(
            c.key.as_str(),
            c.value.as_str(),
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(c.key.as_str(), None)]);
    let response = client.txn(txn).await.map_err(failed)?;
    if response.succeeded() {
        // The key was created by this transaction: its create revision is the transaction's.
        let revision = response
            .header()
            .map(etcd_client::ResponseHeader::revision)
            .ok_or_else(|| failed("a transaction answered without a header"))?;
        return Ok(Some(revision));
    }
    for op in response.op_responses() {
        if let TxnOpResponse::Get(get) = op
            && let Some(kv) = get.kvs().first()
            && kv.lease() == lease
        {
            return Ok(Some(kv.create_revision()));
        }
    }
    Ok(None)
}
