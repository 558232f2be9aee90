//! The run loop: it claims while there is room in the budget of batches in flight, drives those
//! batches meanwhile, wakes on LISTEN hints, freed keys and the poll interval, and runs cleanup
//! and stats on their intervals; plus the single cycle of [`Relay::relay_once`].

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use eventrail_store_postgres::PgConnectOptions;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

use super::{Core, CycleReport, RELAY_COMPONENT, RelayDb};
use crate::error::chain;
use crate::{OutboxError, Sink};

impl<S: Sink, D: RelayDb> Core<S, D> {
    /// The run loop of every relay (see [`Relay::run`](crate::Relay::run)); `wake` is notified
    /// by whatever hints the database sends.
    pub(crate) async fn run(
        &self,
        shutdown: &CancellationToken,
        wake: &Notify,
    ) -> Result<(), OutboxError> {
        let span = info_span!("outbox_relay", relay = %self.id);
        async {
            // Upkeep starts one interval after the relay: a relay started on a backlog (after
            // an outage, a deploy) relays first; the count it would take reads that backlog.
            let started = Instant::now();
            let mut next_cleanup = next_upkeep(started, self.options.cleanup_interval);
            let mut next_stats = next_upkeep(started, self.options.stats_interval);
            // Batches publishing or settling. The next claim runs while they do: their keys'
            // heads are leased, so a claim skips those keys. A claim waits until a whole batch
            // fits in the budget of `claims_in_flight` batches' worth of unsettled messages.
            let budget = self.options.claims_in_flight * self.options.batch_size;
            let room = || {
                self.in_flight_messages.load(Ordering::Relaxed) + self.options.batch_size <= budget
            };
            let mut batches = FuturesUnordered::new();
            let mut claim = true;
            // The next claim looks at every due key (else at the followed keys, if any): at
            // the start, after a claim of due keys filled up or a failure, and at least every
            // poll interval, so that keys nobody follows are not starved. A hint (a commit of
            // an enqueue) makes the next claim look at every key too, but at most every
            // quarter of the poll interval: under a steady stream of enqueues, a relay busy
            // with its followed keys would otherwise walk the keys at every claim.
            let mut due = true;
            let mut hinted = false;
            let mut last_due = Instant::now();
            while !shutdown.is_cancelled() {
                let now = Instant::now();
                if now >= next_stats {
                    if let Err(e) = drive(self.record_stats(), &mut batches).await {
                        warn!(error = %chain(&e), "outbox stats failed");
                    }
                    if let Err(e) = drive(self.forget_idle_keys(), &mut batches).await {
                        warn!(error = %chain(&e), "forgetting idle outbox keys failed");
                    }
                    next_stats = next_upkeep(now, self.options.stats_interval);
                }
                let now = Instant::now();
                if now >= next_cleanup {
                    if let Err(e) = drive(self.cleanup(), &mut batches).await {
                        warn!(error = %chain(&e), "outbox cleanup failed");
                    }
                    next_cleanup = next_upkeep(now, self.options.cleanup_interval);
                }
                let mut more = false;
                let mut failed = false;
                if claim && room() {
                    self.settled_since_claim.store(0, Ordering::Relaxed);
                    let since = last_due.elapsed();
                    due |= since >= self.options.poll_interval
                        || (hinted && since >= self.options.poll_interval / 4);
                    let followed = if due {
                        None
                    } else {
                        drive(self.claim_followed(), &mut batches).await
                    };
                    let result = match followed {
                        Some(result) => result,
                        None => {
                            last_due = Instant::now();
                            hinted = false;
                            drive(self.claim_due(), &mut batches).await
                        }
                    };
                    match result {
                        Ok(batch) => {
                            due = batch.more;
                            more = batch.more || self.has_followed();
                            if !batch.messages.is_empty() {
                                batches.push(self.deliver(batch, shutdown));
                            }
                        }
                        Err(e) => {
                            warn!(error = %chain(&e), "outbox claim failed");
                            failed = true;
                            due = true;
                        }
                    }
                }
                if more && room() {
                    claim = true;
                    continue; // more may be due at once
                }
                if failed {
                    let pause = async {
                        tokio::select! {
                            () = shutdown.cancelled() => {}
                            () = tokio::time::sleep(self.options.poll_interval) => {}
                        }
                    };
                    drive(pause, &mut batches).await;
                    claim = true;
                    continue;
                }
                // Keys of backed-off destinations are not claimed: with only those due, the
                // claim comes back empty and the relay waits here, it does not spin.
                // A settle frees keys; a hint or the poll interval may bring new messages.
                claim = tokio::select! {
                    () = shutdown.cancelled() => true,
                    () = wake.notified() => {
                        hinted = true;
                        true
                    }
                    // Followed keys are claimed at once. A claim of due keys scans every key's
                    // head: after a settle that freed no followed key, wait until a quarter of
                    // what was in flight settled (at once when little or nothing is in flight).
                    () = self.keys_freed.notified() => {
                        self.has_followed()
                            || self.settled_since_claim.load(Ordering::Relaxed) * 4
                                >= self.in_flight_messages.load(Ordering::Relaxed)
                    }
                    Some(result) = batches.next(), if !batches.is_empty() => {
                        settled(result);
                        true
                    }
                    () = tokio::time::sleep(self.options.poll_interval) => {
                        due = true;
                        true
                    }
                };
            }
            while let Some(result) = batches.next().await {
                settled(result);
            }
            self.release_leases().await
        }
        .instrument(span)
        .await
    }

    /// One cycle (see [`Relay::relay_once`](crate::Relay::relay_once)).
    pub(crate) async fn relay_once(&self) -> Result<CycleReport, OutboxError> {
        self.cycle_until(&CancellationToken::new()).await
    }

    async fn cycle_until(&self, shutdown: &CancellationToken) -> Result<CycleReport, OutboxError> {
        let batch = self.claim_due().await?;
        if batch.messages.is_empty() {
            return Ok(CycleReport::default());
        }
        self.deliver(batch, shutdown).await
    }
}

/// How often upkeep may take the relay's time: at most one part in this many.
const UPKEEP_SHARE: u32 = 20;

/// When the next upkeep may start, after one that started at `start` and just ended: its
/// interval later, or later still when it took more than a twentieth of that. The pending count
/// reads the whole backlog and the idle keys' search may pass every key: with millions of
/// messages waiting (a broker down for hours), every interval would otherwise go to counting
/// them. An interval too long for the clock (`Duration::MAX`) means never.
fn next_upkeep(start: Instant, interval: Duration) -> Instant {
    let pause = interval.max(start.elapsed().saturating_mul(UPKEEP_SHARE));
    start
        .checked_add(pause)
        .unwrap_or_else(|| start + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Runs `work` while the batches in flight keep publishing and settling.
async fn drive<T, R, F: Future<Output = Result<R, OutboxError>>>(
    work: impl Future<Output = T>,
    batches: &mut FuturesUnordered<F>,
) -> T {
    let mut work = pin!(work);
    loop {
        tokio::select! {
            biased;
            done = &mut work => return done,
            Some(result) = batches.next(), if !batches.is_empty() => settled(result),
        }
    }
}

/// Logs a batch that failed to settle (its leases expire and it is published again).
fn settled<R>(result: Result<R, OutboxError>) {
    if let Err(e) = result {
        warn!(error = %chain(&e), "outbox relay cycle failed");
    }
}

/// LISTENs on a dedicated connection ([`PgListener`](eventrail_store_postgres::PgListener)) and
/// wakes the relay on each hint and after each (re)connection (hints may have been missed).
pub(super) async fn listen(
    connect: PgConnectOptions,
    channel: String,
    max_retry: Duration,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let listener = match connect.listener(RELAY_COMPONENT, &[&channel]) {
        Ok(l) => l.max_backoff(max_retry),
        Err(e) => {
            // Validated when the relay was built: it polls instead.
            warn!(error = %chain(&e), "cannot LISTEN for outbox hints");
            return;
        }
    };
    tokio::select! {
        () = stop.cancelled() => {}
        _ = listener.wake_on_events(&wake) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upkeep_takes_at_most_a_twentieth_of_the_time() {
        let interval = Duration::from_secs(5);
        let now = Instant::now();
        assert!(next_upkeep(now, interval) == now + interval);
        // An upkeep that took 3 s waits a minute from its start.
        let Some(start) = now.checked_sub(Duration::from_secs(3)) else {
            return; // a clock this close to its origin cannot go back 3 s
        };
        let next = next_upkeep(start, interval);
        assert!(next >= start + Duration::from_secs(60));
        assert!(next < start + Duration::from_secs(70));
    }

    #[test]
    fn an_endless_interval_never_comes_round() {
        let now = Instant::now();
        assert!(next_upkeep(now, Duration::MAX) > now + Duration::from_secs(50 * 365 * 24 * 3600));
    }
}
