//! One consumer's loop: probe the frontier, run a batch in one transaction, checkpoint, repeat.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use eventrail_core::{BoxError, RecordedEvent, StoreError};
use eventrail_store_postgres::{
    Frontier, FrontierStall, GapSkip, GapWatch, PgEventStore, Snapshot, Standby,
};
use tokio_postgres::types::Type;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::consumer::DynConsumer;
use crate::error::db;
use crate::runtime::{Shared, sleep_or_cancel};
use crate::{ConsumerScope, WorkerError};

pub(crate) struct ConsumerContext {
    pub(crate) shared: Arc<Shared>,
    pub(crate) consumer: Arc<dyn DynConsumer>,
    pub(crate) epoch: i64,
    pub(crate) cancel: CancellationToken,
}

/// What a batch attempt ended with.
enum BatchEnd {
    /// Committed up to this position, having handled this many events.
    Committed { position: u64, handled: usize },
    /// The checkpoint moved under us (rewound, or advanced by a previous owner) or the consumer
    /// was paused: read the checkpoint again.
    Moved,
    /// The assignment changed: this worker must stop running the consumer.
    Fenced,
    /// A handler failed (or the batch timed out) on the event at `at` (`None`: not on an
    /// event); the batch was rolled back.
    Failed {
        /// The failing event's position.
        at: Option<u64>,
        /// The handler's error.
        error: BoxError,
    },
    /// The store cannot decode the row at `position` (written by raw SQL, an older version, a
    /// bug): retrying cannot help, so the consumer parks there once the prefix is committed.
    Undecodable {
        /// The row's position.
        position: u64,
        /// The store's decode error.
        error: StoreError,
    },
}

/// A failing event being isolated. The batch shrinks to it: first the good prefix before it
/// commits (re-run in a new transaction), then it is retried alone per the retry policy, then
/// the consumer parks at exactly this position.
///
/// The prefix is re-run rather than protected by a savepoint per event: a savepoint costs a
/// round trip on every event of every batch, and more than 64 subtransactions that write make
/// the transaction's subxid cache overflow, which slows every snapshot in the cluster (the gap
/// proof takes many). Re-running costs only when an event fails, once per failure.
struct Suspect {
    /// The failing event's position.
    position: u64,
    /// Its last error, with every cause.
    error: String,
    /// Park as soon as the prefix is committed, without retrying.
    park: bool,
}

/// The next batch, read while the current one runs (catch-up overlaps reading with the
/// handlers and the commit): the probe of the positions after `after` and their events.
///
/// Only a guess until the current batch commits exactly up to `after`; otherwise it is dropped
/// (which aborts it) and the loop probes afresh. Events are immutable and `frontier.safe` is
/// gap-safe however long ago it was probed, so reading outside the batch transaction is sound.
struct ReadAhead {
    after: u64,
    task: tokio::task::JoinHandle<Result<Ahead, StoreError>>,
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a [`ReadAhead`] found: the frontier, the gap watch after that probe, and the events up
/// to the frontier (or the read's error, a decode error among them, for the batch to handle).
struct Ahead {
    frontier: Frontier,
    watch: GapWatch,
    events: Result<Vec<RecordedEvent>, StoreError>,
}

impl ReadAhead {
    fn start(
        store: PgEventStore,
        standby: Option<Standby>,
        watch: GapWatch,
        after: u64,
        max: usize,
        scope: ConsumerScope,
    ) -> Self {
        let task = tokio::spawn(async move {
            let mut watch = watch;
            let frontier = store.probe_frontier(&mut watch, after, max).await?;
            let (categories, event_types) =
                (optional(&scope.categories), optional(&scope.event_types));
            let events = match &standby {
                Some(standby) => {
                    store
                        .read_frontier_on(standby, &frontier, after, categories, event_types)
                        .await
                }
                None => {
                    store
                        .read_range(after, frontier.safe, categories, event_types)
                        .await
                }
            };
            Ok(Ahead {
                frontier,
                watch,
                events,
            })
        });
        Self { after, task }
    }
}

struct Checkpoint {
    position: u64,
    paused: bool,
    parked: bool,
}

use eventrail_store_postgres::{from_sql_int as to_u64, to_sql_int as to_i64};

fn snapshot_text(s: &Snapshot) -> String {
    let xip: Vec<String> = s.xip.iter().map(u64::to_string).collect();
    format!("{}:{}:{}", s.xmin, s.xmax, xip.join(","))
}

fn optional(list: &[String]) -> Option<&[String]> {
    (!list.is_empty()).then_some(list)
}

async fn load_checkpoint(ctx: &ConsumerContext) -> Result<Checkpoint, WorkerError> {
    let client = ctx.shared.store.pool().get().await.map_err(db)?;
    let row = client
        .query_typed_one(
            &format!(
                "SELECT position, paused, parked_at IS NOT NULL FROM {} WHERE consumer = $1",
                ctx.shared.tables.checkpoints
            ),
            &[(&ctx.consumer.name(), Type::TEXT)],
        )
        .await
        .map_err(db)?;
    Ok(Checkpoint {
        position: to_u64(row.get(0)),
        paused: row.get(1),
        parked: row.get(2),
    })
}

pub(crate) async fn run_consumer(ctx: ConsumerContext) {
    let options = ctx.shared.options.clone();
    let scope: ConsumerScope = ctx.consumer.scope();
    let mut watch = GapWatch::new();
    let mut head = ctx.shared.head.subscribe();
    let mut idle = options.base_poll_interval;
    let mut failures: u32 = 0;
    let mut suspect: Option<Suspect> = None;
    let mut last_stall_report: Option<std::time::Instant> = None;
    // After a committed batch the position is known; otherwise (start, idle, moved, failed) the
    // checkpoint row is read again, which also notices pauses, parks and rewinds.
    let mut known: Option<u64> = None;
    let mut ahead: Option<ReadAhead> = None;
    // Positions the next batch may cover: `batch_size` at the head, growing while catching up.
    let mut span = options.batch_size;
    let catch_up_limit = options.catch_up_limit();
    // A previous owner frozen mid-batch holds the checkpoint row until its batch ends; its batch
    // can never commit (its epoch is older): end it now rather than after a lock wait.
    match ctx.shared.store.pool().get().await {
        Ok(client) => {
            if let Err(e) =
                crate::fence::terminate_fenced_batches(&client, ctx.consumer.name(), ctx.epoch)
                    .await
            {
                debug!(error = %crate::error::chain(&e), "could not look for fenced batches");
            }
        }
        Err(e) => debug!(error = %e, "could not look for fenced batches"),
    }
    loop {
        if ctx.cancel.is_cancelled() {
            return;
        }
        let checkpoint = match known.take() {
            Some(position) => Checkpoint {
                position,
                paused: false,
                parked: false,
            },
            None => match load_checkpoint(&ctx).await {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %crate::error::chain(&e), "loading the checkpoint failed");
                    if sleep_or_cancel(options.max_poll_interval, &ctx.cancel).await {
                        return;
                    }
                    continue;
                }
            },
        };
        if checkpoint.paused || checkpoint.parked {
            // Resumed through the table (CLI); look again at the slow pace.
            if sleep_or_cancel(options.max_poll_interval, &ctx.cancel).await {
                return;
            }
            continue;
        }
        if suspect
            .as_ref()
            .is_some_and(|s| checkpoint.position >= s.position)
        {
            suspect = None; // passed it (an operator moved the checkpoint)
            failures = 0;
        }
        if let Some(s) = &suspect
            && checkpoint.position + 1 == s.position
            && (s.park || failures >= options.retry.max_attempts)
        {
            // The good prefix is committed: park at exactly the failing event.
            match park(&ctx, s, failures).await {
                Ok(parked) => {
                    if parked {
                        error!(position = s.position, error = %s.error, failures, "consumer parked at a failing event; fix and `eventrail consumer resume`, or `eventrail consumer skip` it");
                        metrics::counter!("eventrail_consumer_parked_total").increment(1);
                    }
                    suspect = None;
                    failures = 0;
                }
                Err(e) => {
                    warn!(error = %crate::error::chain(&e), "parking the consumer failed");
                    if sleep_or_cancel(options.max_poll_interval, &ctx.cancel).await {
                        return;
                    }
                }
            }
            continue;
        }
        // The read-ahead started with the previous batch, when that batch ended where it began.
        let mut pre_read: Option<Result<Vec<RecordedEvent>, StoreError>> = None;
        let read_ahead = match ahead.take() {
            // A read on a lagging standby may wait: shutdown does not wait for it.
            Some(mut a) if a.after == checkpoint.position => tokio::select! {
                () = ctx.cancel.cancelled() => return,
                joined = &mut a.task => match joined {
                    Ok(Ok(found)) => Some(found),
                    Ok(Err(e)) => {
                        debug!(error = %crate::error::chain(&e), "the read-ahead failed; probing again");
                        None
                    }
                    Err(e) => {
                        debug!(error = %e, "the read-ahead did not finish; probing again");
                        None
                    }
                },
            },
            _ => None,
        };
        let probed = match read_ahead {
            Some(found) => {
                watch = found.watch;
                pre_read = Some(found.events);
                Ok(found.frontier)
            }
            None => {
                ctx.shared
                    .store
                    .probe_frontier(&mut watch, checkpoint.position, span)
                    .await
            }
        };
        let frontier = match probed {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %crate::error::chain(&e), "probing the frontier failed");
                if sleep_or_cancel(options.max_poll_interval, &ctx.cancel).await {
                    return;
                }
                continue;
            }
        };
        let mut up_to = frontier.safe;
        let mut escaped: Option<FrontierStall> = None;
        if let Some(stall) = &frontier.stall {
            let age = stall.since.elapsed().unwrap_or_default();
            metrics::gauge!("eventrail_consumer_stall_seconds", "consumer" => ctx.consumer.name().to_owned()).set(age.as_secs_f64());
            if up_to == checkpoint.position
                && options.stall_escape.is_some_and(|limit| age >= limit)
            {
                warn!(from = stall.from, to = stall.to, ?age, holders = ?stall.holders, "skipping a hole held past the stall escape (audited)");
                up_to = stall.to;
                escaped = Some(stall.clone());
            } else if last_stall_report.is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
                && age >= Duration::from_secs(1)
            {
                last_stall_report = Some(std::time::Instant::now());
                let sessions = ctx
                    .shared
                    .store
                    .blocking_sessions(&stall.holders)
                    .await
                    .unwrap_or_default();
                let pids: Vec<i32> = sessions.iter().map(|s| s.pid).collect();
                warn!(from = stall.from, ?age, holders = ?stall.holders, ?pids, "frontier waits on a transaction holding a lower position");
            }
        }
        if let Some(s) = &suspect
            && escaped.is_none()
        {
            // Isolating a failing event: the prefix before it, then the event alone.
            let limit = if checkpoint.position + 1 < s.position {
                s.position - 1
            } else {
                s.position
            };
            up_to = up_to.min(limit);
        }
        if up_to == checkpoint.position {
            // Nothing readable: wait for a wakeup, hot while a hole may resolve any moment.
            let wait = if frontier.stall.is_some() {
                options.base_poll_interval
            } else {
                idle
            };
            tokio::select! {
                () = ctx.cancel.cancelled() => return,
                changed = head.changed() => {
                    if changed.is_err() { return; }
                    idle = options.base_poll_interval;
                }
                () = tokio::time::sleep(wait) => {
                    idle = (idle * 2).min(options.max_poll_interval);
                }
            }
            continue;
        }
        let started = std::time::Instant::now();
        // Read exactly the batch's range ahead? Then the batch need not read it again.
        let events = pre_read.filter(|_| up_to == frontier.safe && escaped.is_none());
        // Behind the head, the next batch is twice this one if this one commits quickly.
        let grown = if frontier.more && suspect.is_none() {
            span.saturating_mul(2).min(catch_up_limit)
        } else {
            options.batch_size
        };
        // While this batch runs, read the next one, when there is more to read and nothing is
        // being isolated.
        if frontier.more && suspect.is_none() && escaped.is_none() {
            ahead = Some(ReadAhead::start(
                ctx.shared.store.clone(),
                ctx.shared.standby.clone(),
                watch.clone(),
                up_to,
                grown,
                scope.clone(),
            ));
        }
        // The event the handler is on, to know which one a timed-out batch was stuck on.
        let in_flight = AtomicU64::new(0);
        let attempt = tokio::time::timeout(
            options.batch_timeout,
            run_batch(
                &ctx,
                &scope,
                Batch {
                    after: checkpoint.position,
                    up_to,
                    skipped: &frontier.skipped,
                    escaped: escaped.as_ref(),
                    read_ahead: events,
                },
                &in_flight,
            ),
        )
        .await;
        if !matches!(&attempt, Ok(Ok(BatchEnd::Committed { position, .. })) if *position == up_to) {
            ahead = None; // it guessed a commit that did not happen
        }
        // A batch that took long (slow handlers, a busy database) or did not commit sends the
        // next one back to `batch_size`, to keep each batch well inside `batch_timeout`.
        span = match &attempt {
            Ok(Ok(BatchEnd::Committed { .. }))
                if started.elapsed() * 10 < options.batch_timeout =>
            {
                grown
            }
            _ => options.batch_size,
        };
        if span != grown {
            ahead = None; // read for a batch this size no longer wants
        }
        let end = match attempt {
            Ok(Ok(end)) => end,
            Ok(Err(e)) => {
                warn!(error = %crate::error::chain(&e), "batch failed on the database");
                if sleep_or_cancel(options.base_poll_interval, &ctx.cancel).await {
                    return;
                }
                continue;
            }
            Err(_) => BatchEnd::Failed {
                at: Some(in_flight.load(Ordering::Relaxed)).filter(|p| *p > 0),
                error: format!("batch timed out after {:?}", options.batch_timeout).into(),
            },
        };
        match end {
            BatchEnd::Committed { position, handled } => {
                known = Some(position);
                idle = options.base_poll_interval;
                metrics::histogram!("eventrail_consumer_batch_events").record(handled as f64);
                metrics::histogram!("eventrail_consumer_batch_seconds")
                    .record(started.elapsed().as_secs_f64());
                let consumer = ctx.consumer.name().to_owned();
                metrics::gauge!("eventrail_consumer_position", "consumer" => consumer.clone())
                    .set(position as f64);
                // Lag against the newest head the dispatcher has seen (positions, holes included).
                let head = *head.borrow();
                metrics::gauge!("eventrail_consumer_lag_positions", "consumer" => consumer)
                    .set(head.saturating_sub(position) as f64);
                debug!(position, handled, "batch committed");
                match &suspect {
                    Some(s) if position >= s.position => {
                        // The failing event passed alone: back to whole batches.
                        suspect = None;
                        failures = 0;
                    }
                    Some(s) if position + 1 == s.position && !s.park => {
                        // The good prefix is in; the failing event is retried alone after
                        // the backoff, or parked at (next turn) when out of attempts.
                        if failures < options.retry.max_attempts
                            && sleep_or_cancel(options.retry.backoff(failures), &ctx.cancel).await
                        {
                            return;
                        }
                        continue;
                    }
                    Some(_) => {} // a part of the prefix: keep isolating
                    None => failures = 0,
                }
                if frontier.more
                    && !options.batch_pause.is_zero()
                    && sleep_or_cancel(options.batch_pause, &ctx.cancel).await
                {
                    return;
                }
            }
            BatchEnd::Undecodable { position, error } => {
                let text = eventrail_core::error_chain(&error);
                warn!(position, error = %text, "an event cannot be decoded; the prefix before it commits, then the consumer parks there");
                suspect = Some(Suspect {
                    position,
                    error: text,
                    park: true,
                });
            }
            BatchEnd::Moved => {
                // An operator rewound, paused or resumed it: start isolating afresh.
                suspect = None;
                failures = 0;
            }
            BatchEnd::Fenced => {
                info!("the consumer was reassigned: stopping it here");
                return;
            }
            BatchEnd::Failed { at, error } => {
                failures += 1;
                // A handler's SQL error keeps its SQLSTATE in the stored text.
                let text = eventrail_core::error_chain(&*eventrail_store_postgres::classify(error));
                let Some(at) = at else {
                    // Not on an event: retry the whole batch, park without a position.
                    let park = failures >= options.retry.max_attempts;
                    match record_failure(&ctx, &text, failures, park).await {
                        Ok(true) => {
                            error!(error = %text, failures, "consumer parked after repeated failures; resume it with `eventrail consumer resume`");
                            metrics::counter!("eventrail_consumer_parked_total").increment(1);
                            failures = 0;
                        }
                        Ok(false) => {
                            warn!(error = %text, failures, "batch failed; it was rolled back and will be retried");
                            if sleep_or_cancel(options.retry.backoff(failures), &ctx.cancel).await {
                                return;
                            }
                        }
                        Err(e) => {
                            warn!(error = %crate::error::chain(&e), "recording the failure failed")
                        }
                    }
                    continue;
                };
                if suspect.as_ref().is_some_and(|s| s.position != at) {
                    failures = 1; // another event (of the prefix) failed: isolate that one
                }
                warn!(position = at, error = %text, failures, "handler failed; the good prefix commits and the event is retried alone");
                if let Err(e) = record_failure(&ctx, &text, failures, false).await {
                    warn!(error = %crate::error::chain(&e), "recording the failure failed");
                }
                let prefix = checkpoint.position + 1 < at;
                suspect = Some(Suspect {
                    position: at,
                    error: text,
                    park: false,
                });
                // Without a prefix to commit first, wait before the next attempt (or park).
                if !prefix
                    && failures < options.retry.max_attempts
                    && sleep_or_cancel(options.retry.backoff(failures), &ctx.cancel).await
                {
                    return;
                }
            }
        }
    }
}

/// Records a failure on the checkpoint row (shown by `eventrail status`); parks the consumer
/// without a position when `park`. Returns whether it parked.
async fn record_failure(
    ctx: &ConsumerContext,
    error: &str,
    failures: u32,
    park: bool,
) -> Result<bool, WorkerError> {
    let failures = i32::try_from(failures).unwrap_or(i32::MAX);
    let client = ctx.shared.store.pool().get().await.map_err(db)?;
    let row = client
        .query_typed_opt(
            &format!(
                // Fenced like a checkpoint write: a worker that lost the consumer (frozen, then
                // resumed) must not count failures against, or park, the new owner's consumer.
                "WITH failed AS (
                    UPDATE {checkpoints} SET failures = $2::int4, last_error = $3::text,
                        parked_at = CASE WHEN $4::bool THEN now() END, parked_position = NULL
                    WHERE consumer = $1::text
                      AND EXISTS (SELECT 1 FROM {assignments} a WHERE a.consumer = $1::text AND a.worker_id = $6 AND a.epoch = $7)
                    RETURNING parked_at IS NOT NULL AS parked
                 )
                 SELECT parked, CASE WHEN parked THEN pg_notify($5::text, $1::text || ' parked') END IS NULL FROM failed",
                checkpoints = ctx.shared.tables.checkpoints,
                assignments = ctx.shared.tables.assignments,
            ),
            &[
                (&ctx.consumer.name(), Type::TEXT),
                (&failures, Type::INT4),
                (&error, Type::TEXT),
                (&park, Type::BOOL),
                (&ctx.shared.tables.checkpoint_channel, Type::TEXT),
                (&ctx.shared.id, Type::UUID),
                (&ctx.epoch, Type::INT8),
            ],
        )
        .await
        .map_err(db)?;
    Ok(row.is_some_and(|r| r.get(0)))
}

/// Parks the consumer at the suspect event, whose good prefix is committed. Fenced like a
/// checkpoint write (this worker, this epoch) and only while the checkpoint is still right
/// before the event. Returns whether it parked.
async fn park(
    ctx: &ConsumerContext,
    suspect: &Suspect,
    failures: u32,
) -> Result<bool, WorkerError> {
    let t = &ctx.shared.tables;
    let failures = i32::try_from(failures).unwrap_or(i32::MAX);
    let client = ctx.shared.store.pool().get().await.map_err(db)?;
    let row = client
        .query_typed_opt(
            &format!(
                "WITH parked AS (
                    UPDATE {checkpoints} SET failures = $2::int4, last_error = $3::text,
                        parked_at = now(), parked_position = $4::int8, updated_at = now()
                    WHERE consumer = $1::text AND position = $4::int8 - 1
                      AND EXISTS (SELECT 1 FROM {assignments} a WHERE a.consumer = $1::text AND a.worker_id = $5 AND a.epoch = $6)
                    RETURNING consumer
                 )
                 SELECT pg_notify($7::text, consumer || ' parked') IS NULL FROM parked",
                checkpoints = t.checkpoints,
                assignments = t.assignments
            ),
            &[
                (&ctx.consumer.name(), Type::TEXT),
                (&failures, Type::INT4),
                (&suspect.error, Type::TEXT),
                (&to_i64(suspect.position), Type::INT8),
                (&ctx.shared.id, Type::UUID),
                (&ctx.epoch, Type::INT8),
                (&ctx.shared.tables.checkpoint_channel, Type::TEXT),
            ],
        )
        .await
        .map_err(db)?;
    Ok(row.is_some())
}

/// One batch's range and what comes with it.
struct Batch<'a> {
    /// The checkpoint it starts from.
    after: u64,
    /// The gap-safe position it ends at.
    up_to: u64,
    /// Holes proven in the range, audited with the batch.
    skipped: &'a [GapSkip],
    /// A hole skipped by the opt-in stall escape, audited with the batch.
    escaped: Option<&'a FrontierStall>,
    /// Its events, when they were read ahead (else the batch reads them).
    read_ahead: Option<Result<Vec<RecordedEvent>, StoreError>>,
}

async fn run_batch(
    ctx: &ConsumerContext,
    scope: &ConsumerScope,
    batch: Batch<'_>,
    in_flight: &AtomicU64,
) -> Result<BatchEnd, WorkerError> {
    let Batch {
        after,
        up_to,
        skipped,
        escaped,
        read_ahead,
    } = batch;
    // On a standby, read before the transaction opens: waiting for replay holds nothing.
    let read_ahead = match (read_ahead, &ctx.shared.standby) {
        (None, Some(standby)) => Some(
            ctx.shared
                .store
                .read_range_on(
                    standby,
                    after,
                    up_to,
                    optional(&scope.categories),
                    optional(&scope.event_types),
                )
                .await,
        ),
        (read, _) => read,
    };
    let t = &ctx.shared.tables;
    let name = ctx.consumer.name();
    let mut client = ctx.shared.store.pool().get().await.map_err(db)?;
    let tx = client.transaction().await.map_err(db)?;
    // Server-side batch timeout, a short wait for the checkpoint row, a tag naming the epoch.
    tx.batch_execute(&crate::fence::batch_settings(
        &ctx.shared.options,
        name,
        ctx.epoch,
    ))
    .await
    .map_err(db)?;
    // The row lock serialises batches of this consumer across workers during a handover.
    let statements = ctx.shared.store.statements();
    // Prepared first (when cached), so that the lock is requested before the reset below.
    statements
        .warm(&tx, &t.lock_checkpoint, &[Type::TEXT])
        .await
        .map_err(db)?;
    let args: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 1] = [(&name, Type::TEXT)];
    let (locked, reset) = futures::join!(
        statements.query_one(&tx, &t.lock_checkpoint, &args),
        tx.batch_execute(crate::fence::RESET_LOCK_WAIT)
    );
    let row = match locked {
        Ok(row) => row,
        // Held by a previous owner's batch (frozen, or not yet told): clear a fenced one away.
        Err(e) if crate::fence::is_lock_busy(&e) => {
            drop(tx.rollback().await);
            let ended = crate::fence::terminate_fenced_batches(&client, name, ctx.epoch).await?;
            debug!(
                ended,
                "the checkpoint row was locked by another transaction; trying again"
            );
            return Ok(BatchEnd::Moved);
        }
        Err(e) => return Err(db(e)),
    };
    reset.map_err(db)?;
    // Moved (rewound, or advanced by a previous owner) or paused meanwhile: look again.
    if to_u64(row.get(0)) != after || row.get::<_, bool>(1) {
        return Ok(BatchEnd::Moved);
    }
    let read = match read_ahead {
        Some(read) => read,
        None => {
            ctx.shared
                .store
                .read_range_in(
                    &*tx,
                    after,
                    up_to,
                    optional(&scope.categories),
                    optional(&scope.event_types),
                )
                .await
        }
    };
    let events = match read {
        Ok(events) => events,
        // Only this consumer's read met the row: it parks, the others go on (a consumer whose
        // scope excludes the row never reads it).
        Err(StoreError::Decode { position, source }) if position > after && position <= up_to => {
            return Ok(BatchEnd::Undecodable {
                position,
                error: StoreError::Decode { position, source },
            });
        }
        Err(e) => return Err(e.into()),
    };
    for event in &events {
        in_flight.store(event.global_position, Ordering::Relaxed);
        if let Err(error) = ctx.consumer.handle(&tx, event).await {
            // Dropping `tx` rolls the batch back; the loop commits the prefix before it.
            return Ok(BatchEnd::Failed {
                at: Some(event.global_position),
                error,
            });
        }
    }
    for skip in skipped.iter().filter(|s| s.from > after && s.to <= up_to) {
        tx.execute(
            &t.insert_proven_skip,
            &[
                &name,
                &to_i64(skip.from),
                &to_i64(skip.to),
                &snapshot_text(&skip.evidence.observed),
                &skip.evidence.candidates_text(),
                &snapshot_text(&skip.proven_by),
                &skip.evidence.first_seen,
            ],
        )
        .await
        .map_err(db)?;
    }
    if let Some(stall) = escaped {
        tx.execute(
            &t.insert_timeout_skip,
            &[&name, &to_i64(stall.from), &to_i64(stall.to), &stall.since],
        )
        .await
        .map_err(db)?;
    }
    let saved = statements
        .query(
            &tx,
            &t.save_checkpoint,
            &[
                (&name, Type::TEXT),
                (&to_i64(up_to), Type::INT8),
                (&ctx.shared.id, Type::UUID),
                (&ctx.epoch, Type::INT8),
                (&ctx.shared.tables.checkpoint_channel, Type::TEXT),
            ],
        )
        .await
        .map_err(db)?;
    if saved.len() != 1 {
        return Ok(BatchEnd::Fenced);
    }
    tx.commit().await.map_err(db)?;
    if !skipped.is_empty() || escaped.is_some() {
        metrics::counter!("eventrail_consumer_gap_skips_total")
            .increment((skipped.len() + usize::from(escaped.is_some())) as u64);
    }
    Ok(BatchEnd::Committed {
        position: up_to,
        handled: events.len(),
    })
}
