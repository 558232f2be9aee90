//! A runner claims due steps whose handler it registered and runs them: no coordinator, any
//! number of runners in any number of processes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventrail_core::error_chain;
use eventrail_store_postgres::{PgConnectOptions, PgEventStore};
use serde_json::{Map, Value};
use tokio::sync::{Notify, Semaphore};
use tokio_postgres::types::Type;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::client::register;
use crate::engine::{Claimer, Engine, Outcome};
use crate::error::db;
use crate::tables::Tables;
use crate::{
    SagaDefinition, SagaDocument, SagaError, SagaOptions, StepContext, StepDocument, StepHandler,
    StepState,
};

const COMPONENT: &str = "eventrail-saga";

/// Runs saga steps: claims due steps whose handler it has (`FOR UPDATE SKIP LOCKED`), holds a
/// lease it renews while each runs, and commits each outcome only while its claim is still
/// current. Run one in every process that registered handlers; they share the work.
///
/// ```no_run
/// # async fn f(store: eventrail_store_postgres::PgEventStore,
/// #            definition: eventrail_saga::SagaDefinition<serde_json::Value>) -> Result<(), Box<dyn std::error::Error>> {
/// use eventrail_saga::{SagaOptions, SagaRunner};
/// let runner = SagaRunner::builder(store, SagaOptions::new())
///     .definition(&definition)
///     .build()?;
/// let stop = tokio_util::sync::CancellationToken::new();
/// runner.run(stop).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SagaRunner {
    inner: Arc<Inner>,
}

struct Inner {
    id: String,
    engine: Engine,
    options: SagaOptions,
    handlers: HashMap<String, Arc<dyn StepHandler>>,
    handler_names: Vec<String>,
    documents: Vec<SagaDocument>,
    connect: Option<PgConnectOptions>,
    claim: String,
    renew: String,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaRunner")
            .field("id", &self.id)
            .field("handlers", &self.handler_names)
            .finish_non_exhaustive()
    }
}

/// Builds a [`SagaRunner`].
#[must_use]
pub struct SagaRunnerBuilder {
    store: PgEventStore,
    options: SagaOptions,
    handlers: HashMap<String, Arc<dyn StepHandler>>,
    documents: Vec<SagaDocument>,
    connect: Option<PgConnectOptions>,
    id: Option<String>,
}

impl std::fmt::Debug for SagaRunnerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaRunnerBuilder").finish_non_exhaustive()
    }
}

impl SagaRunner {
    /// A builder for a runner on `store`'s pool.
    pub fn builder(store: PgEventStore, options: SagaOptions) -> SagaRunnerBuilder {
        SagaRunnerBuilder {
            store,
            options,
            handlers: HashMap::new(),
            documents: Vec::new(),
            connect: None,
            id: None,
        }
    }

    /// This runner as a task of a worker (`WorkerBuilder::task`): it runs on the worker
    /// runtime, beside its consumers, and stops with the worker.
    ///
    /// ```no_run
    /// # fn f(store: eventrail_store_postgres::PgEventStore, runner: eventrail_saga::SagaRunner,
    /// #      direct: tokio_postgres::Config) -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = eventrail_worker::Worker::builder(store, direct)
    ///     .task("sagas", runner.into_worker_task())
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn into_worker_task(
        self,
    ) -> impl FnOnce(
        CancellationToken,
    )
        -> futures::future::BoxFuture<'static, Result<(), eventrail_core::BoxError>>
    + Send
    + 'static {
        move |stop| Box::pin(async move { self.run(stop).await.map_err(Into::into) })
    }

    /// This runner's id (its `owner` in the step rows).
    #[must_use]
    pub fn id(&self) -> &str {
        &self.inner.id
    }
}

impl SagaRunnerBuilder {
    /// Runs every step of `definition` (registers its handlers and its graph).
    pub fn definition<I>(mut self, definition: &SagaDefinition<I>) -> Self {
        for (name, h) in definition.handlers() {
            self.handlers.insert(name.clone(), Arc::clone(h));
        }
        self.documents.push(definition.document().clone());
        self
    }

    /// Runs the steps of type `name` of any definition given as data.
    pub fn step_type(mut self, name: impl Into<String>, handler: impl StepHandler) -> Self {
        self.handlers.insert(name.into(), Arc::new(handler));
        self
    }

    /// Registers a data definition in the database when the runner starts (its step types may
    /// be served by other runners).
    pub fn document(mut self, document: SagaDocument) -> Self {
        self.documents.push(document);
        self
    }

    /// LISTEN for due steps on a dedicated connection with these settings, so that a step is
    /// picked up at once rather than at the next poll.
    pub fn listen(mut self, connect: impl Into<PgConnectOptions>) -> Self {
        self.connect = Some(connect.into());
        self
    }

    /// Names this runner (default: a new uuid).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// The runner.
    ///
    /// # Errors
    /// [`SagaError::Config`] for a refused schema or table name.
    pub fn build(self) -> Result<SagaRunner, SagaError> {
        let tables = Tables::new(&self.options.tables, &self.options.schema)?;
        let mut options = self.options;
        // Each running step holds one pooled connection; claims, renewals and heartbeats need
        // a few more.
        let pool_size = self.store.pool().status().max_size;
        options.concurrency = options.concurrency.min(pool_size.saturating_sub(3).max(1));
        let mut handler_names: Vec<String> = self.handlers.keys().cloned().collect();
        handler_names.sort();
        let claim = format!(
            // One index scan per kind of due step (ready or compensation due, a wait whose
            // time is up, a lease that ran out), so a claim never scans finished sagas' steps.
            "WITH ready AS (
                 SELECT saga_id, step FROM {steps}
                 WHERE state IN ('ready', 'compensate_ready') AND due_at <= now() AND handler = ANY($1)
                 ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED),
             waits AS (
                 SELECT saga_id, step FROM {steps}
                 WHERE state = 'waiting' AND due_at <= now() AND (lease_until IS NULL OR lease_until < now())
                 ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED),
             lost AS (
                 SELECT saga_id, step FROM {steps}
                 WHERE state IN ('running', 'compensating') AND lease_until < now() AND handler = ANY($1)
                 ORDER BY lease_until LIMIT $2 FOR UPDATE SKIP LOCKED),
             due AS (
                 SELECT * FROM (SELECT * FROM lost UNION ALL SELECT * FROM ready UNION ALL SELECT * FROM waits) d
                 LIMIT $2)
             UPDATE {steps} s SET
                 state = CASE s.state WHEN 'ready' THEN 'running' WHEN 'compensate_ready' THEN 'compensating' ELSE s.state END,
                 attempts = s.attempts + CASE WHEN s.state IN ('ready', 'running') THEN 1 ELSE 0 END,
                 compensation_attempts = s.compensation_attempts
                     + CASE WHEN s.state IN ('compensate_ready', 'compensating') THEN 1 ELSE 0 END,
                 owner = $3, lease_until = now() + $4::int8 * interval '1 millisecond', epoch = s.epoch + 1,
                 started_at = CASE WHEN s.state = 'ready' THEN coalesce(s.started_at, now()) ELSE s.started_at END
             FROM due, {instances} i
             WHERE s.saga_id = due.saga_id AND s.step = due.step AND i.id = s.saga_id
             RETURNING s.saga_id, s.step, s.handler, s.state, s.attempts, s.compensation_attempts, s.epoch,
                       s.settings, s.output, i.definition, i.input,
                       (SELECT coalesce(jsonb_object_agg(d.step, d.output), '{{}}') FROM {steps} d
                        WHERE d.saga_id = s.saga_id AND d.step = ANY(s.depends_on) AND d.output IS NOT NULL)",
            steps = tables.steps,
            instances = tables.instances,
        );
        let renew = format!(
            "UPDATE {} SET lease_until = now() + $4::int8 * interval '1 millisecond'
             WHERE saga_id = $1 AND step = $2 AND epoch = $3 AND state IN ('running', 'compensating', 'waiting')",
            tables.steps
        );
        Ok(SagaRunner {
            inner: Arc::new(Inner {
                id: self.id.unwrap_or_else(|| Uuid::now_v7().to_string()),
                engine: Engine::new(tables, self.store),
                options,
                handlers: self.handlers,
                handler_names,
                documents: self.documents,
                connect: self.connect,
                claim,
                renew,
            }),
        })
    }
}

/// A step this runner claimed.
#[derive(Debug)]
struct Claimed {
    saga_id: Uuid,
    step: String,
    handler: Option<String>,
    state: StepState,
    attempt: i32,
    epoch: i64,
    doc: StepDocument,
    output: Option<Value>,
    definition: String,
    input: Value,
    outputs: Map<String, Value>,
}

impl From<crate::engine::Continuation> for Claimed {
    fn from(c: crate::engine::Continuation) -> Self {
        Self {
            saga_id: c.saga_id,
            step: c.step,
            handler: Some(c.handler),
            state: StepState::Running,
            attempt: c.attempt,
            epoch: c.epoch,
            doc: c.doc,
            output: None,
            definition: c.definition,
            input: c.input,
            outputs: c.outputs,
        }
    }
}

impl SagaRunner {
    /// Runs until `stop` is cancelled: registers the definitions, heartbeats (so status shows
    /// what no live runner can run), claims and runs due steps. A step running at `stop` is
    /// abandoned (its transaction rolls back) and its lease lets another runner take it.
    ///
    /// # Errors
    /// [`SagaError::DefinitionChanged`] when a definition's graph differs from the one
    /// registered under its name and version; database failures are retried, not returned.
    pub async fn run(&self, stop: CancellationToken) -> Result<(), SagaError> {
        let inner = &self.inner;
        loop {
            match inner.register().await {
                Ok(()) => break,
                Err(e) if e.is_retryable() => {
                    warn!(error = %error_chain(&e), "saga runner cannot register yet; retrying");
                    if sleep_or_stop(Duration::from_secs(1), &stop).await {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        info!(runner = %inner.id, handlers = ?inner.handler_names, "saga runner started");
        let wake = Arc::new(Notify::new());
        let stop_tasks = stop.child_token();
        let listener = inner.connect.clone().map(|c| {
            tokio::spawn(listen(
                c,
                inner.engine.tables.channel.clone(),
                Arc::clone(&wake),
                stop_tasks.clone(),
            ))
        });
        let heartbeat = tokio::spawn(Arc::clone(inner).heartbeat(stop_tasks.clone()));
        let permits = Arc::new(Semaphore::new(inner.options.concurrency));
        let mut idle = Duration::from_millis(10);
        while !stop.is_cancelled() {
            let free = permits.available_permits();
            let claimed = if free == 0 {
                Ok(Vec::new())
            } else {
                inner.claim(free).await
            };
            match claimed {
                Ok(steps) => {
                    let full = !steps.is_empty() && steps.len() == free;
                    for c in steps {
                        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                            break;
                        };
                        let inner = Arc::clone(inner);
                        let wake = Arc::clone(&wake);
                        tokio::spawn(async move {
                            inner.execute(c).await;
                            drop(permit);
                            // A finished step may have made the next one due.
                            wake.notify_one();
                        });
                    }
                    if full {
                        idle = Duration::from_millis(10);
                        continue;
                    }
                }
                Err(e) => warn!(error = %error_chain(&e), "saga claim failed"),
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = wake.notified() => idle = Duration::from_millis(10),
                () = tokio::time::sleep(idle) => idle = (idle * 2).min(inner.options.poll_interval),
            }
        }
        stop_tasks.cancel();
        if let Some(l) = listener {
            let _ = l.await;
        }
        let _ = heartbeat.await;
        Ok(())
    }
}

impl Inner {
    async fn register(&self) -> Result<(), SagaError> {
        let client = self.engine.store.pool().get().await.map_err(db)?;
        for d in &self.documents {
            register(&client, &self.engine.tables, d).await?;
        }
        Ok(())
    }

    async fn heartbeat(self: Arc<Self>, stop: CancellationToken) {
        let t = &self.engine.tables;
        let upsert = format!(
            "INSERT INTO {} (runner_id, handlers, heartbeat_at) VALUES ($1, $2, now())
             ON CONFLICT (runner_id) DO UPDATE SET handlers = EXCLUDED.handlers, heartbeat_at = now()",
            t.runners
        );
        loop {
            if let Ok(client) = self.engine.store.pool().get().await
                && let Err(e) = client
                    .execute(&upsert, &[&self.id, &self.handler_names])
                    .await
            {
                debug!(error = %error_chain(&e), "saga runner heartbeat failed");
            }
            if sleep_or_stop(self.options.heartbeat, &stop).await {
                break;
            }
        }
        if let Ok(client) = self.engine.store.pool().get().await {
            let _ = client
                .execute(
                    &format!("DELETE FROM {} WHERE runner_id = $1", t.runners),
                    &[&self.id],
                )
                .await;
        }
    }

    async fn claim(&self, limit: usize) -> Result<Vec<Claimed>, SagaError> {
        let client = self.engine.store.pool().get().await.map_err(db)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let lease = lease_ms(self.options.lease);
        let rows = client
            .query_typed(
                &self.claim,
                &[
                    (&self.handler_names, Type::TEXT_ARRAY),
                    (&limit, Type::INT8),
                    (&self.id, Type::TEXT),
                    (&lease, Type::INT8),
                ],
            )
            .await
            .map_err(db)?;
        let mut claimed = Vec::with_capacity(rows.len());
        for r in rows {
            let state: String = r.get(3);
            let settings: Value = r.get(7);
            let Some(state) = StepState::parse(&state) else {
                continue;
            };
            let Ok(doc) = serde_json::from_value::<StepDocument>(settings) else {
                continue;
            };
            let attempts: i32 = r.get(4);
            let compensation_attempts: i32 = r.get(5);
            let outputs: Value = r.get(11);
            claimed.push(Claimed {
                saga_id: r.get(0),
                step: r.get(1),
                handler: r.get(2),
                attempt: if state == StepState::Compensating {
                    compensation_attempts
                } else {
                    attempts
                },
                state,
                epoch: r.get(6),
                doc,
                output: r.get(8),
                definition: r.get(9),
                input: r.get(10),
                outputs: match outputs {
                    Value::Object(m) => m,
                    _ => Map::new(),
                },
            });
        }
        Ok(claimed)
    }

    /// Runs a claimed step, then each next step its transitions claimed for this runner.
    async fn execute(self: Arc<Self>, c: Claimed) {
        let mut next = Some(c);
        while let Some(c) = next.take() {
            next = Arc::clone(&self).execute_one(c).await;
        }
    }

    /// Runs one claimed step to its outcome, renewing the lease meanwhile.
    async fn execute_one(self: Arc<Self>, c: Claimed) -> Option<Claimed> {
        let started = Instant::now();
        let lost = CancellationToken::new();
        let renewer = tokio::spawn(Arc::clone(&self).renew_lease(
            c.saga_id,
            c.step.clone(),
            c.epoch,
            lost.clone(),
        ));
        let result = self.execute_claimed(&c, &lost).await;
        renewer.abort();
        let next = match result {
            Ok(next) => next,
            Err(e) => {
                warn!(saga = %c.saga_id, step = %c.step, error = %error_chain(&e),
                      "saga step outcome not recorded; its lease will expire and it runs again");
                None
            }
        };
        metrics::histogram!("eventrail_saga_step_duration_seconds",
            "definition" => c.definition.clone(), "step" => c.step.clone(), "phase" => c.state.as_str())
            .record(started.elapsed().as_secs_f64());
        next
    }

    async fn renew_lease(
        self: Arc<Self>,
        saga: Uuid,
        step: String,
        epoch: i64,
        lost: CancellationToken,
    ) {
        let lease = lease_ms(self.options.lease);
        loop {
            tokio::time::sleep(self.options.lease / 3).await;
            let renewed = match self.engine.store.pool().get().await {
                Ok(client) => client
                    .execute(&self.renew, &[&saga, &step, &epoch, &lease])
                    .await
                    .map(|n| n == 1),
                Err(_) => continue,
            };
            match renewed {
                Ok(true) => {}
                Ok(false) => {
                    warn!(saga = %saga, step = %step, "saga step lease lost: another runner took it over");
                    lost.cancel();
                    return;
                }
                Err(e) => debug!(error = %error_chain(&e), "saga lease renewal failed; retrying"),
            }
        }
    }

    async fn execute_claimed(
        &self,
        c: &Claimed,
        lost: &CancellationToken,
    ) -> Result<Option<Claimed>, SagaError> {
        let engine = &self.engine;
        if c.state == StepState::Waiting {
            return self.record(c, Outcome::WaitOver).await;
        }
        let Some(handler) = c.handler.as_ref().and_then(|h| self.handlers.get(h)) else {
            return Ok(None);
        };
        let compensating = c.state == StepState::Compensating;
        let mut client = engine.store.pool().get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        let ctx = StepContext {
            saga_id: c.saga_id,
            definition: &c.definition,
            step: &c.step,
            attempt: u32::try_from(c.attempt).unwrap_or(0),
            epoch: c.epoch,
            tx: &tx,
            input: &c.input,
            outputs: &c.outputs,
            own_output: c.output.as_ref(),
            wait: Mutex::new(None),
        };
        let timeout = Duration::from_millis(c.doc.timeout_ms);
        let result: Result<Outcome, String> = async {
            if !compensating {
                match handler.should_run(&ctx) {
                    Ok(false) => return Ok(Outcome::Skipped),
                    Ok(true) => {}
                    Err(e) => return Err(error_chain(e.as_ref())),
                }
            }
            let run = async {
                if compensating {
                    handler
                        .compensate(&ctx)
                        .await
                        .map(|()| Outcome::Compensated)
                } else {
                    handler.run(&ctx).await.map(|output| Outcome::Succeeded {
                        output,
                        wait: ctx.take_wait(),
                    })
                }
            };
            tokio::select! {
                r = tokio::time::timeout(timeout, run) => match r {
                    Ok(r) => r.map_err(|e| error_chain(e.as_ref())),
                    Err(_) => Err(format!("timed out after {timeout:?}")),
                },
                () = lost.cancelled() => Err(String::from("lease lost")),
            }
        }
        .await;
        drop(ctx);
        if lost.is_cancelled() {
            // Another runner owns the step now: this attempt's writes are rolled back.
            let _ = tx.rollback().await;
            return Ok(None);
        }
        let error = match result {
            Ok(outcome) => match engine
                .finish(
                    &tx,
                    c.saga_id,
                    &c.step,
                    c.epoch,
                    outcome,
                    Some(self.claimer()),
                )
                .await
            {
                Ok(Some(applied)) => {
                    tx.commit().await.map_err(db)?;
                    engine.after_commit(&applied);
                    return Ok(applied.continuation.map(Claimed::from));
                }
                Ok(None) => {
                    debug!(saga = %c.saga_id, step = %c.step, "fenced: the step moved on without this runner");
                    tx.rollback().await.map_err(db)?;
                    return Ok(None);
                }
                // The step's own writes (or its completion) failed: nothing of it commits.
                Err(e) => chain(&e),
            },
            Err(error) => error,
        };
        let _ = tx.rollback().await;
        // One pooled connection per step at a time: the failure is recorded on a fresh one.
        drop(client);
        self.record(c, failure(compensating, error)).await
    }

    /// Records an outcome in a transaction of its own.
    async fn record(&self, c: &Claimed, outcome: Outcome) -> Result<Option<Claimed>, SagaError> {
        let mut client = self.engine.store.pool().get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        match self
            .engine
            .finish(
                &tx,
                c.saga_id,
                &c.step,
                c.epoch,
                outcome,
                Some(self.claimer()),
            )
            .await?
        {
            Some(applied) => {
                tx.commit().await.map_err(db)?;
                self.engine.after_commit(&applied);
                Ok(applied.continuation.map(Claimed::from))
            }
            None => {
                tx.rollback().await.map_err(db)?;
                Ok(None)
            }
        }
    }

    fn claimer(&self) -> Claimer<'_> {
        Claimer {
            id: &self.id,
            handlers: &self.handler_names,
            lease_ms: lease_ms(self.options.lease),
        }
    }
}

fn failure(compensating: bool, error: String) -> Outcome {
    if compensating {
        Outcome::CompensationFailed { error }
    } else {
        Outcome::Failed { error }
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    error_chain(e)
}

fn lease_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(d) => false,
    }
}

/// Wakes the claim loop on each hint and after each (re)connection.
async fn listen(
    connect: PgConnectOptions,
    channel: String,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let listener = match connect.listener(COMPONENT, &[&channel]) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %error_chain(&e), "cannot LISTEN for due saga steps; polling");
            return;
        }
    };
    tokio::select! {
        () = stop.cancelled() => {}
        _ = listener.wake_on_events(&wake) => {}
    }
}
