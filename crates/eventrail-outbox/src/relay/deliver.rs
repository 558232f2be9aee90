//! Publishing and settling a claimed batch: each key's messages in order, keys concurrently,
//! destinations gated by their backoff probes ([`Reach`], [`Gate`]); each finished key's
//! outcomes go to the database in one settle statement ([`Settlement`]).

use std::collections::{HashMap, HashSet};
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::claim::Batch;
use super::lease::Leases;
use super::{Core, CycleReport, RelayDb, SettleParams, Settlement};
use crate::error::chain;
use crate::{FailureClass, OutboxError, OutboxMessage, Sink, SinkError};

/// What happened to one claimed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Sent,
    Failed,
    Permanent,
    Returned,
    /// The destination was unavailable: handed back with its attempt, the destination backed off.
    Unavailable,
    /// The destination does not exist: as `Unavailable`.
    Missing,
}

impl Outcome {
    fn code(self) -> &'static str {
        match self {
            Self::Sent => "s",
            Self::Failed => "f",
            Self::Permanent => "p",
            Self::Returned => "r",
            Self::Unavailable => "u",
            Self::Missing => "m",
        }
    }
}

/// The settle rows of these keys' messages; a message without an outcome is handed back
/// untried.
fn settlement<'a, 'm: 'a>(
    groups: impl Iterator<Item = &'a (i64, Vec<&'m OutboxMessage>)>,
    outcomes: &HashMap<i64, (Outcome, Option<String>)>,
) -> Settlement<'m> {
    let mut rows = Settlement::default();
    for (head, group) in groups {
        for m in group {
            let (outcome, error) = outcomes
                .get(&m.sequence)
                .map_or((Outcome::Returned, None), |(o, e)| (*o, e.clone()));
            rows.sequences.push(m.sequence);
            rows.heads.push(*head);
            rows.codes.push(outcome.code());
            rows.errors.push(error);
            rows.destinations.push(m.destination.as_str());
            rows.keys.push(m.partition_key.as_str());
            rows.attempts.push(m.attempts);
        }
    }
    rows
}

/// What a batch knows of a destination while it publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Publish.
    Open,
    /// Its backoff has just ended: the first publish probes it, the others wait for the result.
    Probe,
    /// A publish found it unavailable or missing: the batch's other messages to it go back
    /// untried.
    Down,
}

/// One destination's [`Reach`] within a batch, and the lock a probe holds while it publishes.
struct Gate {
    reach: Mutex<Reach>,
    probing: tokio::sync::Mutex<()>,
}

impl Gate {
    fn new(reach: Reach) -> Self {
        Self {
            reach: Mutex::new(reach),
            probing: tokio::sync::Mutex::new(()),
        }
    }

    fn reach(&self) -> Reach {
        *self.reach.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, reach: Reach) {
        *self.reach.lock().unwrap_or_else(PoisonError::into_inner) = reach;
    }
}

impl<S: Sink, D: RelayDb> Core<S, D> {
    /// Publishes a claimed batch while renewing its leases, and settles its keys as they finish:
    /// whatever finished while the previous settle ran goes in the next one, so a key is free for
    /// the next claim soon after its run, not after the batch's slowest key.
    pub(super) async fn deliver(
        &self,
        batch: Batch,
        shutdown: &CancellationToken,
    ) -> Result<CycleReport, OutboxError> {
        let mut groups: Vec<(i64, Vec<&OutboxMessage>)> = Vec::new();
        let mut index: HashMap<i64, usize> = HashMap::new();
        for (m, &head) in batch.messages.iter().zip(&batch.heads) {
            let i = *index.entry(head).or_insert_with(|| {
                groups.push((head, Vec::new()));
                groups.len() - 1
            });
            groups[i].1.push(m);
        }
        let leases = Mutex::new(Leases {
            lost: HashSet::new(),
            settled: HashSet::new(),
            valid_until: batch.leased_at + self.options.lease,
        });
        let gates: HashMap<&str, Gate> = batch
            .messages
            .iter()
            .map(|m| {
                let reach = if batch.probes.contains(&m.destination) {
                    Reach::Probe
                } else {
                    Reach::Open
                };
                (m.destination.as_str(), Gate::new(reach))
            })
            .collect();
        let outcomes = Mutex::new(HashMap::with_capacity(batch.messages.len()));
        let (finished, mut to_settle) = tokio::sync::mpsc::unbounded_channel::<usize>();
        let publishing = async {
            let reported = self
                .publish(&groups, &gates, &leases, &outcomes, &finished, shutdown)
                .await;
            // Keys abandoned at the shutdown deadline: the rest of their runs goes back.
            for (i, done) in reported.iter().enumerate() {
                if !done {
                    let _ = finished.send(i);
                }
            }
            drop(finished);
        };
        let settling = async {
            let mut report = CycleReport::default();
            let mut failure = None;
            while let Some(first) = to_settle.recv().await {
                let mut chunk = vec![first];
                while let Ok(i) = to_settle.try_recv() {
                    chunk.push(i);
                }
                let heads: Vec<i64> = chunk.iter().map(|&i| groups[i].0).collect();
                let (rows, full_runs_sent) = {
                    let outcomes = outcomes.lock().unwrap_or_else(PoisonError::into_inner);
                    let full_runs_sent: Vec<String> = chunk
                        .iter()
                        .map(|&i| &groups[i].1)
                        .filter(|run| {
                            run.len() >= self.options.max_per_key
                                && run.iter().all(|m| {
                                    matches!(outcomes.get(&m.sequence), Some((Outcome::Sent, _)))
                                })
                        })
                        .filter_map(|run| run.first().map(|m| m.partition_key.clone()))
                        .collect();
                    let rows = settlement(chunk.iter().map(|&i| &groups[i]), &outcomes);
                    (rows, full_runs_sent)
                };
                let settled_messages = rows.sequences.len();
                let result = self.settle(rows).await;
                if result.is_ok() {
                    // Their keys probably have more due: the next claim follows them up.
                    self.follow(full_runs_sent);
                }
                self.in_flight_messages
                    .fetch_sub(settled_messages, Ordering::Relaxed);
                self.settled_since_claim
                    .fetch_add(settled_messages, Ordering::Relaxed);
                self.keys_freed.notify_one();
                match result {
                    Ok(r) => report.add(r),
                    Err(e) => failure = failure.or(Some(e)),
                }
                leases
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .settled
                    .extend(heads);
            }
            failure.map_or(Ok(report), Err)
        };
        let renewing = pin!(self.keep_leases(&groups, &leases));
        let work = pin!(futures::future::join(publishing, settling));
        match futures::future::select(work, renewing).await {
            futures::future::Either::Left((((), result), _)) => result,
            futures::future::Either::Right((never, _)) => match never {},
        }
    }

    /// Publishes each key's messages in order, keys concurrently (at most `max_in_flight` keys
    /// across the batches in flight); a failure or a lost lease ends its key's run, and each
    /// finished key's index goes to `finished`. After shutdown, in-flight publishes get the
    /// shutdown timeout, then are abandoned. Returns which keys were reported finished.
    async fn publish(
        &self,
        groups: &[(i64, Vec<&OutboxMessage>)],
        gates: &HashMap<&str, Gate>,
        leases: &Mutex<Leases>,
        outcomes: &Mutex<HashMap<i64, (Outcome, Option<String>)>>,
        finished: &tokio::sync::mpsc::UnboundedSender<usize>,
        shutdown: &CancellationToken,
    ) -> Vec<bool> {
        let reported = Mutex::new(vec![false; groups.len()]);
        let record = |sequence: i64, outcome: Outcome, error: Option<String>| {
            outcomes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(sequence, (outcome, error));
        };
        let holds = |head: i64| {
            leases
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .holds(head)
        };
        let (record, holds, reported) = (&record, &holds, &reported);
        let work = futures::stream::iter(groups.iter().enumerate()).for_each_concurrent(
            None,
            |(i, (head, group))| async move {
                let Ok(_permit) = self.keys_in_flight.acquire().await else {
                    return; // never closed
                };
                let mut attempts = 0u64;
                for &m in group {
                    if !holds(*head) {
                        break; // handed back untried: another relay holds the key now
                    }
                    let Some(gate) = gates.get(m.destination.as_str()) else {
                        break; // every destination of the batch has a gate
                    };
                    // A probe holds `probing` while it publishes, so that the batch's other
                    // messages to its destination wait for its result instead of each
                    // knocking on a destination that is probably still down.
                    let _probing = match gate.reach() {
                        Reach::Open => None,
                        Reach::Down => break, // handed back untried
                        Reach::Probe => {
                            let guard = gate.probing.lock().await;
                            match gate.reach() {
                                Reach::Open => None,
                                Reach::Down => break,
                                Reach::Probe => Some(guard),
                            }
                        }
                    };
                    let started = Instant::now();
                    let result = self.sink.publish(m).await;
                    attempts += 1;
                    let class = result.as_ref().err().map(SinkError::class);
                    // Any answer of the destination, success or a failure of the message,
                    // proves it reachable; a publish that started before another found it down
                    // does not open it again.
                    if class.is_some_and(FailureClass::is_destination) {
                        gate.set(Reach::Down);
                    } else if gate.reach() == Reach::Probe {
                        gate.set(Reach::Open);
                    }
                    match result {
                        Ok(()) => {
                            metrics::histogram!("eventrail_outbox_publish_seconds")
                                .record(started.elapsed().as_secs_f64());
                            record(m.sequence, Outcome::Sent, None);
                        }
                        Err(e) => {
                            let outcome = match e.class() {
                                FailureClass::MessagePermanent => Outcome::Permanent,
                                FailureClass::DestinationUnavailable => Outcome::Unavailable,
                                FailureClass::DestinationMissing => Outcome::Missing,
                                _ => Outcome::Failed,
                            };
                            if matches!(outcome, Outcome::Unavailable | Outcome::Missing) {
                                warn!(destination = %m.destination, class = %e.class(), error = %chain(&e), "destination unavailable: backing it off");
                                metrics::counter!("eventrail_outbox_destination_failures_total", "destination" => m.destination.clone())
                                    .increment(1);
                            } else {
                                warn!(message_id = %m.id, key = %m.partition_key, attempts = m.attempts, class = %e.class(), error = %chain(&e), "publish failed");
                            }
                            record(m.sequence, outcome, Some(chain(&e)));
                            break;
                        }
                    }
                }
                metrics::counter!("eventrail_outbox_attempts_total").increment(attempts);
                reported.lock().unwrap_or_else(PoisonError::into_inner)[i] = true;
                let _ = finished.send(i);
            },
        );
        let deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(self.options.shutdown_timeout).await;
        };
        tokio::select! {
            () = work => {}
            () = deadline => warn!("shutdown timeout: handing back unacknowledged messages"),
        }
        std::mem::take(&mut *reported.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Marks settled keys' messages (one statement on PostgreSQL).
    async fn settle(&self, rows: Settlement<'_>) -> Result<CycleReport, OutboxError> {
        let claimed = rows.sequences.len();
        let retry = &self.options.retry;
        let backoff = &self.options.destination_backoff;
        let params = SettleParams {
            owner: self.id,
            max_attempts: retry.max_attempts,
            initial_backoff: retry.initial_backoff,
            max_backoff: retry.max_backoff,
            destination_initial: backoff.initial,
            destination_max: backoff.max,
            keep_sent: !self.options.retention.is_zero(),
        };
        let rows = self.db.settle(rows, params).await?;
        let mut report = CycleReport {
            claimed,
            ..CycleReport::default()
        };
        for row in rows {
            match (row.state.as_str(), row.outcome.as_str()) {
                ("sent", _) => report.sent += 1,
                ("dead", _) => {
                    report.dead += 1;
                    metrics::counter!("eventrail_outbox_dead_letters_total", "destination" => row.destination)
                        .increment(1);
                }
                (_, "r") => report.returned += 1,
                (_, "u" | "m") => report.deferred += 1,
                _ => report.retried += 1,
            }
        }
        metrics::counter!("eventrail_outbox_sent_total").increment(report.sent as u64);
        if report.dead > 0 {
            warn!(
                dead = report.dead,
                "messages went dead; their keys are parked"
            );
        }
        Ok(report)
    }
}
