//! Every change of a saga happens here, in one transaction under the saga row's lock: load the
//! saga and its steps, apply what happened, let [`advance`] decide what follows, write it, and
//! record it as events of the saga's stream. Runners, the client API and the operator commands
//! all go through it.

use std::collections::HashMap;
use std::sync::Arc;

use eventrail_core::{AppendRequest, ExpectedVersion, NewEvent, StreamName};
use eventrail_store_postgres::PgEventStore;
use serde_json::{Value, json};
use tokio_postgres::Transaction;
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

use crate::document::StepKind;
use crate::error::{db, encode};
use crate::state::{Change, StepChange, StepView, advance};
use crate::tables::Tables;
use crate::waker::Waker;
use crate::{SagaDocument, SagaError, SagaState, StepDocument, StepState};

/// The stream of a saga's events: `saga-<id>`.
#[must_use]
pub fn saga_stream(saga_id: Uuid) -> StreamName {
    StreamName::new("saga", &saga_id.to_string()).expect("a uuid is a valid stream id")
}

/// A saga and its steps, locked.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) id: Uuid,
    pub(crate) definition: String,
    pub(crate) version: i32,
    pub(crate) state: SagaState,
    pub(crate) cancel_requested: bool,
    pub(crate) input: Value,
    pub(crate) steps: Vec<LoadedStep>,
    pub(crate) signals: HashMap<String, Value>,
}

#[derive(Debug)]
pub(crate) struct LoadedStep {
    pub(crate) view: StepView,
    pub(crate) doc: StepDocument,
    pub(crate) epoch: i64,
    pub(crate) attempts: i32,
    pub(crate) compensation_attempts: i32,
}

impl Loaded {
    pub(crate) fn step(&self, name: &str) -> Option<&LoadedStep> {
        self.steps.iter().find(|s| s.view.name == name)
    }

    fn pivot_done(&self) -> bool {
        self.steps
            .iter()
            .any(|s| s.view.kind == StepKind::Pivot && s.view.state == StepState::Succeeded)
    }
}

/// What happened to one step, as its runner (or an operator) reports it.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Succeeded {
        output: Value,
        wait: Option<crate::context::ReplyWait>,
    },
    Skipped,
    Failed {
        error: String,
    },
    /// A remote participant refused: failed at once, no retry.
    Refused {
        error: String,
    },
    Compensated,
    CompensationFailed {
        error: String,
    },
    /// A waiting step's time is up: a timer fires, a signal or reply wait fails.
    WaitOver,
}

/// One row update of a step.
#[derive(Debug, Clone)]
struct StepWrite {
    name: String,
    state: StepState,
    due_in_ms: Option<i64>,
    jitter: bool,
    output: Option<Value>,
    set_output: bool,
    error: Option<String>,
    set_error: bool,
    waits_for: Option<String>,
    reset_compensation_attempts: bool,
    fence: bool,
    /// Claimed for the runner that commits this transition (see [`Continuation`]).
    claim: bool,
}

impl StepWrite {
    fn new(name: &str, state: StepState) -> Self {
        Self {
            name: name.to_owned(),
            state,
            due_in_ms: None,
            jitter: false,
            output: None,
            set_output: false,
            error: None,
            set_error: false,
            waits_for: None,
            reset_compensation_attempts: false,
            fence: false,
            claim: false,
        }
    }
}

/// The statements and the store the engine works with.
#[derive(Debug, Clone)]
pub(crate) struct Engine {
    pub(crate) tables: Arc<Tables>,
    pub(crate) store: PgEventStore,
    lock_saga: String,
    lock_steps: String,
    signals: String,
    update_step: String,
    update_saga: String,
    insert_saga: String,
    waker: Arc<Waker>,
}

/// What a transition leaves to do after its commit, when the caller commits it.
#[derive(Debug, Clone)]
#[must_use]
pub(crate) struct Applied {
    pub(crate) state: SagaState,
    /// The last position of its events, to hint after the commit.
    position: Option<u64>,
    /// Whether a step became due: wake the runners after the commit.
    wake: bool,
    /// A next step the committing runner claimed in the same transaction.
    pub(crate) continuation: Option<Continuation>,
}

/// The runner whose transition this is, which may claim the next step at once: a sequence of
/// steps then costs one transaction each, not a claim and a transition each, and waits for no
/// wake-up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claimer<'a> {
    pub(crate) id: &'a str,
    pub(crate) handlers: &'a [String],
    pub(crate) lease_ms: i64,
}

/// A step claimed by the transition that made it due.
#[derive(Debug, Clone)]
pub(crate) struct Continuation {
    pub(crate) saga_id: Uuid,
    pub(crate) step: String,
    pub(crate) handler: String,
    pub(crate) attempt: i32,
    pub(crate) epoch: i64,
    pub(crate) doc: StepDocument,
    pub(crate) definition: String,
    pub(crate) input: Value,
    pub(crate) outputs: serde_json::Map<String, Value>,
}

/// Whether the transaction is the caller's (the hints go inside it, with its commit) or ours
/// (they go after our commit, see [`Engine::after_commit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Commit {
    Caller,
    Ours,
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Engine {
    /// Sends what a transition of ours left for after its commit: the store's hint and the
    /// runners' wake-up, both coalesced and outside any transaction.
    pub(crate) fn after_commit(&self, applied: &Applied) {
        if let Some(p) = applied.position {
            self.store.hint(p);
        }
        if applied.wake {
            self.waker.wake();
        }
    }

    pub(crate) fn new(tables: Tables, store: PgEventStore) -> Self {
        let t = &tables;
        Self {
            lock_saga: format!(
                "SELECT definition, version, state, cancel_requested, input FROM {} WHERE id = $1 FOR UPDATE",
                t.instances
            ),
            lock_steps: format!(
                "SELECT step, kind, depends_on, has_compensation, condition, settings, state, attempts,
                        compensation_attempts, output, epoch, waits_for
                 FROM {} WHERE saga_id = $1 ORDER BY step FOR UPDATE",
                t.steps
            ),
            signals: format!("SELECT name, payload FROM {} WHERE saga_id = $1", t.signals),
            update_step: format!(
                "UPDATE {} SET
                    state = $3,
                    due_at = CASE WHEN $4::int8 IS NULL THEN due_at
                                  ELSE now() + $4::int8 * (CASE WHEN $11 THEN 0.5 + random() / 2 ELSE 1 END) * interval '1 millisecond' END,
                    output = CASE WHEN $5 THEN $6::jsonb ELSE output END,
                    last_error = CASE WHEN $7 THEN $8::text ELSE last_error END,
                    waits_for = $9::text,
                    owner = CASE WHEN $13 THEN $14 WHEN $3 IN ('running', 'compensating') THEN owner END,
                    lease_until = CASE WHEN $13 THEN now() + $15::int8 * interval '1 millisecond'
                                       WHEN $3 IN ('running', 'compensating') THEN lease_until END,
                    attempts = attempts + CASE WHEN $13 THEN 1 ELSE 0 END,
                    started_at = CASE WHEN $13 THEN coalesce(started_at, now()) ELSE started_at END,
                    finished_at = CASE WHEN $3 IN ('succeeded', 'skipped', 'failed', 'not_run', 'aborted') THEN now() ELSE finished_at END,
                    compensated_at = CASE WHEN $3 = 'compensated' THEN now() ELSE compensated_at END,
                    compensation_attempts = CASE WHEN $10 THEN 0 ELSE compensation_attempts END,
                    epoch = epoch + CASE WHEN $12 OR $13 THEN 1 ELSE 0 END
                 WHERE saga_id = $1 AND step = $2",
                t.steps
            ),
            update_saga: format!(
                "UPDATE {} SET state = $2, last_error = coalesce($3, last_error),
                        cancel_requested = cancel_requested OR $4, updated_at = now(),
                        finished_at = CASE WHEN $2 IN ('completed', 'compensated', 'failed', 'cancelled') THEN now() END
                 WHERE id = $1",
                t.instances
            ),
            insert_saga: format!(
                "WITH definition AS (
                     INSERT INTO {definitions} (name, version, document) VALUES ($2, $3, $6) ON CONFLICT DO NOTHING),
                 saga AS (
                     INSERT INTO {instances} (id, definition, version, start_key, input, state)
                     VALUES ($1, $2, $3, $4, $5, 'queued')
                     ON CONFLICT (definition, start_key) DO NOTHING RETURNING id),
                 steps AS (
                     INSERT INTO {steps} (saga_id, step, handler, kind, depends_on, has_compensation, condition, settings, state)
                     SELECT saga.id, s, h, k, ARRAY(SELECT jsonb_array_elements_text(d::jsonb)), c, w, x, 'blocked'
                     FROM saga, unnest($7::text[], $8::text[], $9::text[], $10::text[], $11::bool[], $12::jsonb[], $13::jsonb[])
                          AS u(s, h, k, d, c, w, x))
                 SELECT id, true FROM saga
                 UNION ALL
                 SELECT id, false FROM {instances} WHERE definition = $2 AND start_key = $4 AND NOT EXISTS (SELECT 1 FROM saga)",
                definitions = t.definitions,
                instances = t.instances,
                steps = t.steps,
            ),
            waker: Arc::new(Waker::new(store.pool().clone(), tables.channel.clone())),
            tables: Arc::new(tables),
            store,
        }
    }

    /// Locks the saga row, then its steps (always in this order: no deadlocks between the
    /// transitions of one saga), and reads its signals.
    pub(crate) async fn load(
        &self,
        tx: &Transaction<'_>,
        id: Uuid,
    ) -> Result<Option<Loaded>, SagaError> {
        let p: [(&(dyn ToSql + Sync), Type); 1] = [(&id, Type::UUID)];
        let (saga, steps, signals) = futures::try_join!(
            tx.query_typed(&self.lock_saga, &p),
            tx.query_typed(&self.lock_steps, &p),
            tx.query_typed(&self.signals, &p),
        )
        .map_err(db)?;
        let Some(saga) = saga.first() else {
            return Ok(None);
        };
        let state: String = saga.get(2);
        let mut loaded_steps = Vec::with_capacity(steps.len());
        for r in &steps {
            let settings: Value = r.get(5);
            let doc: StepDocument = serde_json::from_value(settings).map_err(encode)?;
            let kind: String = r.get(1);
            let state: String = r.get(6);
            let condition: Option<Value> = r.get(4);
            loaded_steps.push(LoadedStep {
                view: StepView {
                    name: r.get(0),
                    kind: StepKind::parse(&kind)
                        .ok_or_else(|| encode(format!("unknown step kind {kind}")))?,
                    depends_on: r.get(2),
                    has_compensation: r.get(3),
                    condition: condition
                        .map(serde_json::from_value)
                        .transpose()
                        .map_err(encode)?,
                    state: StepState::parse(&state)
                        .ok_or_else(|| encode(format!("unknown step state {state}")))?,
                    output: r.get(9),
                    wait_ms: doc.duration_ms.or(doc.deadline_ms),
                    signal: doc.signal.clone(),
                    waits_for: r.get(11),
                },
                doc,
                epoch: r.get(10),
                attempts: r.get(7),
                compensation_attempts: r.get(8),
            });
        }
        Ok(Some(Loaded {
            id,
            definition: saga.get(0),
            version: saga.get(1),
            state: SagaState::parse(&state)
                .ok_or_else(|| encode(format!("unknown saga state {state}")))?,
            cancel_requested: saga.get(3),
            input: saga.get(4),
            steps: loaded_steps,
            signals: signals.iter().map(|r| (r.get(0), r.get(1))).collect(),
        }))
    }

    /// Inserts a saga and its steps in `tx` (idempotent by `key`), and moves it on.
    pub(crate) async fn start(
        &self,
        tx: &Transaction<'_>,
        document: &SagaDocument,
        input: Value,
        key: Option<&str>,
        commit: Commit,
    ) -> Result<(Uuid, Option<Applied>), SagaError> {
        let t = &self.tables;
        let id = Uuid::now_v7();
        let version = i32::try_from(document.version()).map_err(encode)?;
        let name = document.name();
        let steps = document.steps();
        let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
        let handlers: Vec<Option<&str>> = steps.iter().map(|s| s.handler.as_deref()).collect();
        let kinds: Vec<&str> = steps.iter().map(|s| s.kind.as_str()).collect();
        let deps: Vec<String> = steps
            .iter()
            .map(|s| serde_json::to_string(&s.after).unwrap_or_else(|_| "[]".into()))
            .collect();
        let compensates: Vec<bool> = steps.iter().map(StepDocument::has_compensation).collect();
        let conditions: Vec<Option<Value>> = steps
            .iter()
            .map(|s| {
                s.when
                    .as_ref()
                    .map(|c| serde_json::to_value(c).unwrap_or(Value::Null))
            })
            .collect();
        let settings: Vec<Value> = steps
            .iter()
            .map(|s| serde_json::to_value(s).unwrap_or(Value::Null))
            .collect();
        let document_json = document.to_json();
        // One round trip: the definition (once per graph), the instance (unless its key
        // exists: then the existing id comes back) and its steps.
        let rows = tx
            .query_typed(
                &self.insert_saga,
                &[
                    (&id, Type::UUID),
                    (&name, Type::TEXT),
                    (&version, Type::INT4),
                    (&key, Type::TEXT),
                    (&input, Type::JSONB),
                    (&document_json, Type::JSONB),
                    (&names, Type::TEXT_ARRAY),
                    (&handlers, Type::TEXT_ARRAY),
                    (&kinds, Type::TEXT_ARRAY),
                    (&deps, Type::TEXT_ARRAY),
                    (&compensates, Type::BOOL_ARRAY),
                    (&conditions, Type::JSONB_ARRAY),
                    (&settings, Type::JSONB_ARRAY),
                ],
            )
            .await
            .map_err(db)?;
        let Some(row) = rows.first() else {
            // A concurrent start of this key committed after this statement's snapshot was
            // taken: a new statement sees it.
            let existing = tx
                .query_typed(
                    &format!(
                        "SELECT id FROM {} WHERE definition = $1 AND start_key = $2",
                        t.instances
                    ),
                    &[(&name, Type::TEXT), (&key, Type::TEXT)],
                )
                .await
                .map_err(db)?;
            let row = existing
                .first()
                .ok_or_else(|| db("the saga of this key vanished"))?;
            return Ok((row.get(0), None));
        };
        let (got, inserted): (Uuid, bool) = (row.get(0), row.get(1));
        if !inserted {
            return Ok((got, None));
        }
        // The rows just inserted, as `load` would read them (this transaction holds them).
        let loaded = Loaded {
            id,
            definition: name.to_owned(),
            version,
            state: SagaState::Queued,
            cancel_requested: false,
            steps: steps
                .iter()
                .map(|s| LoadedStep {
                    view: StepView {
                        name: s.name.clone(),
                        kind: s.kind,
                        depends_on: s.after.clone(),
                        has_compensation: s.has_compensation(),
                        condition: s.when.clone(),
                        state: StepState::Blocked,
                        output: None,
                        wait_ms: s.duration_ms.or(s.deadline_ms),
                        signal: s.signal.clone(),
                        waits_for: None,
                    },
                    doc: s.clone(),
                    epoch: 0,
                    attempts: 0,
                    compensation_attempts: 0,
                })
                .collect(),
            signals: HashMap::new(),
            input,
        };
        let started = event(
            &loaded,
            "SagaStarted",
            json!({"input": loaded.input, "key": key}),
        );
        let applied = self
            .apply(tx, loaded, Vec::new(), vec![started], None, false, commit)
            .await?;
        metrics::counter!("eventrail_saga_started_total", "definition" => name.to_owned())
            .increment(1);
        Ok((id, Some(applied)))
    }

    /// Applies `outcome` of `step` claimed at `epoch`, then moves the saga on. Returns `None`
    /// (and writes nothing) when the step is no longer this claim's: fenced.
    pub(crate) async fn finish(
        &self,
        tx: &Transaction<'_>,
        saga_id: Uuid,
        step: &str,
        epoch: i64,
        outcome: Outcome,
        claimer: Option<Claimer<'_>>,
    ) -> Result<Option<Applied>, SagaError> {
        let Some(loaded) = self.load(tx, saga_id).await? else {
            return Ok(None);
        };
        let Some(own) = loaded.step(step) else {
            return Ok(None);
        };
        let expected = match outcome {
            Outcome::Compensated | Outcome::CompensationFailed { .. } => StepState::Compensating,
            Outcome::WaitOver => StepState::Waiting,
            _ => StepState::Running,
        };
        if own.epoch != epoch || own.view.state != expected {
            return Ok(None);
        }
        let (write, events) = self.outcome_write(&loaded, own, outcome);
        let force = (loaded.state == SagaState::Queued).then_some(SagaState::Running);
        let applied = self
            .apply_claiming(
                tx,
                loaded,
                vec![write],
                events,
                force,
                false,
                Commit::Ours,
                claimer,
            )
            .await?;
        Ok(Some(applied))
    }

    fn outcome_write(
        &self,
        loaded: &Loaded,
        own: &LoadedStep,
        outcome: Outcome,
    ) -> (StepWrite, Vec<NewEvent>) {
        let name = own.view.name.as_str();
        let forward = matches!(loaded.state, SagaState::Queued | SagaState::Running);
        let refused = matches!(outcome, Outcome::Refused { .. });
        let step_event = |kind: &str, extra: Value| {
            let mut data = json!({"step": name, "attempt": own.attempts});
            if let (Value::Object(d), Value::Object(e)) = (&mut data, extra) {
                d.extend(e);
            }
            event(loaded, kind, data)
        };
        match outcome {
            Outcome::Succeeded {
                output,
                wait: Some(wait),
            } => {
                let mut w = StepWrite::new(name, StepState::Waiting);
                w.due_in_ms = Some(ms(crate::document::duration_ms(wait.deadline)));
                w.waits_for = Some(wait.signal.clone());
                w.output = Some(output);
                w.set_output = true;
                (
                    w,
                    vec![step_event("StepWaiting", json!({"signal": wait.signal}))],
                )
            }
            Outcome::Succeeded { output, wait: None } => {
                let mut w = StepWrite::new(name, StepState::Succeeded);
                w.output = Some(output.clone());
                w.set_output = true;
                w.set_error = true;
                (
                    w,
                    vec![step_event("StepSucceeded", json!({"output": output}))],
                )
            }
            Outcome::Skipped => (
                StepWrite::new(name, StepState::Skipped),
                vec![step_event("StepSkipped", json!({}))],
            ),
            Outcome::Failed { error } | Outcome::Refused { error } => {
                let retry = own.doc.retry.policy();
                let attempts = u32::try_from(own.attempts).unwrap_or(u32::MAX);
                let again = forward
                    && !refused
                    && (own.view.kind == StepKind::Retriable || attempts < retry.max_attempts);
                let mut w = if again {
                    let mut w = StepWrite::new(name, StepState::Ready);
                    w.due_in_ms = Some(ms(crate::document::duration_ms(retry.backoff(attempts))));
                    w.jitter = true;
                    w
                } else {
                    StepWrite::new(name, StepState::Failed)
                };
                w.error = Some(error.clone());
                w.set_error = true;
                let kind = if again { "StepRetrying" } else { "StepFailed" };
                (w, vec![step_event(kind, json!({"error": error}))])
            }
            Outcome::Compensated => (
                StepWrite::new(name, StepState::Compensated),
                vec![step_event(
                    "StepCompensated",
                    json!({"attempt": own.compensation_attempts}),
                )],
            ),
            Outcome::CompensationFailed { error } => {
                let retry = own.doc.compensation_retry.policy();
                let attempts = u32::try_from(own.compensation_attempts).unwrap_or(u32::MAX);
                let again = attempts < retry.max_attempts;
                let mut w = if again {
                    let mut w = StepWrite::new(name, StepState::CompensateReady);
                    w.due_in_ms = Some(ms(crate::document::duration_ms(retry.backoff(attempts))));
                    w.jitter = true;
                    w
                } else {
                    StepWrite::new(name, StepState::CompensationStuck)
                };
                w.error = Some(error.clone());
                w.set_error = true;
                let kind = if again {
                    "CompensationRetrying"
                } else {
                    "CompensationStuck"
                };
                (
                    w,
                    vec![step_event(
                        kind,
                        json!({"error": error, "attempt": attempts}),
                    )],
                )
            }
            Outcome::WaitOver => {
                if own.view.kind == StepKind::Timer {
                    let mut w = StepWrite::new(name, StepState::Succeeded);
                    w.output = Some(Value::Null);
                    w.set_output = true;
                    (w, vec![step_event("TimerFired", json!({}))])
                } else {
                    let signal = own
                        .view
                        .waits_for
                        .clone()
                        .or_else(|| own.view.signal.clone());
                    let error = format!(
                        "no signal {:?} before the deadline",
                        signal.unwrap_or_default()
                    );
                    let mut w = StepWrite::new(name, StepState::Failed);
                    w.error = Some(error.clone());
                    w.set_error = true;
                    (w, vec![step_event("StepFailed", json!({"error": error}))])
                }
            }
        }
    }

    /// Completes a remote step's wait with its participant's reply. `None` for a reply nobody
    /// waits for (late, after the deadline; or a duplicate).
    pub(crate) async fn reply(
        &self,
        tx: &Transaction<'_>,
        saga_id: Uuid,
        step: &str,
        outcome: Result<Value, String>,
    ) -> Result<Option<Applied>, SagaError> {
        let loaded = self
            .load(tx, saga_id)
            .await?
            .ok_or(SagaError::NotFound(saga_id))?;
        let Some(own) = loaded.step(step) else {
            return Ok(None);
        };
        let expected = crate::remote::reply_signal(step);
        if own.view.state != StepState::Waiting
            || own.view.waits_for.as_deref() != Some(expected.as_str())
        {
            return Ok(None);
        }
        let outcome = match outcome {
            Ok(output) => Outcome::Succeeded { output, wait: None },
            Err(error) => Outcome::Refused { error },
        };
        let (write, events) = self.outcome_write(&loaded, own, outcome);
        let applied = self
            .apply(tx, loaded, vec![write], events, None, false, Commit::Ours)
            .await?;
        Ok(Some(applied))
    }

    /// Records a signal for a saga and completes the wait that expects it.
    pub(crate) async fn signal(
        &self,
        tx: &Transaction<'_>,
        saga_id: Uuid,
        name: &str,
        payload: Value,
        commit: Commit,
    ) -> Result<Option<Applied>, SagaError> {
        let Some(loaded) = self.load(tx, saga_id).await? else {
            return Err(SagaError::NotFound(saga_id));
        };
        let inserted = tx
            .query_typed(
                &format!(
                    "INSERT INTO {} (saga_id, name, payload) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING true",
                    self.tables.signals
                ),
                &[(&saga_id, Type::UUID), (&name, Type::TEXT), (&payload, Type::JSONB)],
            )
            .await
            .map_err(db)?;
        if inserted.is_empty() {
            return Ok(None);
        }
        let mut loaded = loaded;
        loaded.signals.insert(name.to_owned(), payload.clone());
        let received = event(
            &loaded,
            "SignalReceived",
            json!({"signal": name, "payload": payload}),
        );
        let applied = self
            .apply(tx, loaded, Vec::new(), vec![received], None, false, commit)
            .await?;
        Ok(Some(applied))
    }

    /// An operator's or a caller's request: cancel, retry, skip a step, abort.
    pub(crate) async fn operate(
        &self,
        tx: &Transaction<'_>,
        saga_id: Uuid,
        op: Operation<'_>,
    ) -> Result<Applied, SagaError> {
        let loaded = self
            .load(tx, saga_id)
            .await?
            .ok_or(SagaError::NotFound(saga_id))?;
        let invalid = |operation| SagaError::InvalidState {
            saga: saga_id,
            state: loaded.state.to_string(),
            operation,
        };
        let mut writes = Vec::new();
        let mut cancel = false;
        let mut saga_to = None;
        let kind;
        match op {
            Operation::Cancel => {
                if !matches!(loaded.state, SagaState::Queued | SagaState::Running) {
                    return Err(invalid("cancel"));
                }
                if loaded.pivot_done() {
                    return Err(SagaError::PastPivot(saga_id));
                }
                cancel = true;
                kind = "SagaCancelRequested";
            }
            Operation::Retry => {
                if loaded.state != SagaState::Stuck {
                    return Err(invalid("retry"));
                }
                for s in loaded
                    .steps
                    .iter()
                    .filter(|s| s.view.state == StepState::CompensationStuck)
                {
                    let mut w = StepWrite::new(&s.view.name, StepState::CompensateReady);
                    w.due_in_ms = Some(0);
                    w.reset_compensation_attempts = true;
                    writes.push(w);
                }
                saga_to = Some(SagaState::Compensating);
                kind = "SagaRetried";
            }
            Operation::SkipStep(step) => {
                let s = loaded.step(step).ok_or_else(|| SagaError::NoSuchStep {
                    saga: saga_id,
                    step: step.to_owned(),
                })?;
                if s.view.state != StepState::CompensationStuck {
                    return Err(invalid(
                        "skip-step (only a stuck compensation can be skipped)",
                    ));
                }
                let mut w = StepWrite::new(step, StepState::Compensated);
                w.error = Some("compensation skipped by an operator".into());
                w.set_error = true;
                writes.push(w);
                saga_to = Some(SagaState::Compensating);
                kind = "CompensationSkipped";
            }
            Operation::Abort => {
                if loaded.state.is_finished() {
                    return Err(invalid("abort"));
                }
                for s in &loaded.steps {
                    if !matches!(
                        s.view.state,
                        StepState::Succeeded
                            | StepState::Skipped
                            | StepState::Failed
                            | StepState::NotRun
                            | StepState::Compensated
                    ) {
                        let mut w = StepWrite::new(&s.view.name, StepState::Aborted);
                        w.fence = true;
                        writes.push(w);
                    }
                }
                saga_to = Some(SagaState::Failed);
                kind = "SagaAborted";
            }
        }
        let step = match op {
            Operation::SkipStep(s) => Some(s),
            _ => None,
        };
        let e = event(&loaded, kind, json!({"step": step}));
        let mut loaded = loaded;
        loaded.cancel_requested |= cancel;
        self.apply(tx, loaded, writes, vec![e], saga_to, cancel, Commit::Ours)
            .await
    }

    /// Claims, for `claimer`, one step this transition made due now whose handler it has.
    fn continue_with(
        &self,
        loaded: &Loaded,
        writes: &mut [StepWrite],
        claimer: Claimer<'_>,
    ) -> Option<Continuation> {
        let w = writes.iter_mut().find(|w| {
            w.state == StepState::Ready
                && w.due_in_ms == Some(0)
                && loaded.step(&w.name).is_some_and(|s| {
                    s.doc
                        .handler
                        .as_ref()
                        .is_some_and(|h| claimer.handlers.binary_search(h).is_ok())
                })
        })?;
        let step = loaded.step(&w.name)?;
        w.state = StepState::Running;
        w.claim = true;
        w.due_in_ms = None;
        let outputs = step
            .view
            .depends_on
            .iter()
            .filter_map(|d| Some((d.clone(), loaded.step(d)?.view.output.clone()?)))
            .collect();
        Some(Continuation {
            saga_id: loaded.id,
            step: w.name.clone(),
            handler: step.doc.handler.clone()?,
            attempt: step.attempts + 1,
            epoch: step.epoch + 1,
            doc: step.doc.clone(),
            definition: loaded.definition.clone(),
            input: loaded.input.clone(),
            outputs,
        })
    }

    /// Writes `writes` (into the loaded view too), advances, writes what that decided, appends
    /// the events and wakes runners when something became due. `force` sets the saga's state
    /// first (an operator's decision, a first step done); `cancel` records a cancel request.
    async fn apply(
        &self,
        tx: &Transaction<'_>,
        loaded: Loaded,
        writes: Vec<StepWrite>,
        events: Vec<NewEvent>,
        force: Option<SagaState>,
        cancel: bool,
        commit: Commit,
    ) -> Result<Applied, SagaError> {
        self.apply_claiming(tx, loaded, writes, events, force, cancel, commit, None)
            .await
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one transition's parts, passed through once"
    )]
    async fn apply_claiming(
        &self,
        tx: &Transaction<'_>,
        mut loaded: Loaded,
        mut writes: Vec<StepWrite>,
        mut events: Vec<NewEvent>,
        force: Option<SagaState>,
        cancel: bool,
        commit: Commit,
        claimer: Option<Claimer<'_>>,
    ) -> Result<Applied, SagaError> {
        let before = loaded.state;
        let mut saga_state = force.unwrap_or(before);
        let mut error: Option<String> =
            (force == Some(SagaState::Failed)).then(|| "aborted by an operator".to_owned());
        for w in &writes {
            if let Some(s) = loaded.steps.iter_mut().find(|s| s.view.name == w.name) {
                s.view.state = w.state;
                if w.set_output {
                    s.view.output.clone_from(&w.output);
                }
                if w.state == StepState::Failed {
                    error = w
                        .error
                        .as_ref()
                        .map(|e| format!("step {:?} failed: {e}", w.name));
                }
            }
        }
        let views: Vec<StepView> = loaded.steps.iter().map(|s| s.view.clone()).collect();
        if saga_state != SagaState::Failed {
            for change in advance(
                saga_state,
                loaded.cancel_requested,
                &loaded.input,
                &views,
                &loaded.signals,
            ) {
                match change {
                    Change::Saga(s) => saga_state = s,
                    Change::Step(StepChange {
                        name,
                        state,
                        due_in_ms,
                        output,
                        waits_for,
                    }) => {
                        let mut w = StepWrite::new(&name, state);
                        w.due_in_ms = due_in_ms.map(ms);
                        w.waits_for = waits_for;
                        if let Some(o) = output {
                            w.output = Some(o.clone());
                            w.set_output = true;
                            events.push(event(
                                &loaded,
                                "StepSucceeded",
                                json!({"step": name, "output": o}),
                            ));
                        } else if state == StepState::Skipped {
                            events.push(event(&loaded, "StepSkipped", json!({"step": name})));
                        }
                        writes.push(w);
                    }
                }
            }
        }
        let t = &self.tables;
        let continuation = match claimer {
            Some(c) if commit == Commit::Ours => self.continue_with(&loaded, &mut writes, c),
            _ => None,
        };
        let lease_ms = claimer.map_or(0, |c| c.lease_ms);
        let owner = claimer.map(|c| c.id);
        let wake = writes
            .iter()
            .any(|w| matches!(w.state, StepState::Ready | StepState::CompensateReady));
        let states: Vec<&str> = writes.iter().map(|w| w.state.as_str()).collect();
        let params: Vec<[(&(dyn ToSql + Sync), Type); 15]> = writes
            .iter()
            .zip(&states)
            .map(|(w, state)| {
                [
                    (&loaded.id as &(dyn ToSql + Sync), Type::UUID),
                    (&w.name, Type::TEXT),
                    (state, Type::TEXT),
                    (&w.due_in_ms, Type::INT8),
                    (&w.set_output, Type::BOOL),
                    (&w.output, Type::JSONB),
                    (&w.set_error, Type::BOOL),
                    (&w.error, Type::TEXT),
                    (&w.waits_for, Type::TEXT),
                    (&w.reset_compensation_attempts, Type::BOOL),
                    (&w.jitter, Type::BOOL),
                    (&w.fence, Type::BOOL),
                    (&w.claim, Type::BOOL),
                    (&owner, Type::TEXT),
                    (&lease_ms, Type::INT8),
                ]
            })
            .collect();
        let cancel_flag = cancel;
        let error_ref = &error;
        let new_state = saga_state.as_str();
        let saga_changed = saga_state != before || cancel_flag || error.is_some();
        if saga_state != before {
            let kind = match saga_state {
                SagaState::Queued => "SagaQueued",
                SagaState::Running => "SagaRunning",
                SagaState::Compensating => "SagaCompensating",
                SagaState::Completed => "SagaCompleted",
                SagaState::Compensated => "SagaCompensated",
                SagaState::Failed => "SagaFailed",
                SagaState::Cancelled => "SagaCancelled",
                SagaState::Stuck => "SagaStuck",
            };
            events.push(event(
                &loaded,
                kind,
                json!({"from": before.as_str(), "error": error}),
            ));
            let counter = match saga_state {
                SagaState::Completed => Some("eventrail_saga_completed_total"),
                SagaState::Compensated | SagaState::Cancelled => {
                    Some("eventrail_saga_compensated_total")
                }
                SagaState::Failed => Some("eventrail_saga_failed_total"),
                SagaState::Stuck => Some("eventrail_saga_stuck_total"),
                _ => None,
            };
            if let Some(c) = counter {
                metrics::counter!(c, "definition" => loaded.definition.clone()).increment(1);
            }
        }
        // Pipelined: the step rows, the saga row, its events and the wake-up go out together.
        let writes = futures::future::try_join_all(
            params.iter().map(|p| tx.query_typed(&self.update_step, p)),
        );
        let saga_write = async {
            if saga_changed {
                tx.query_typed(
                    &self.update_saga,
                    &[
                        (&loaded.id, Type::UUID),
                        (&new_state, Type::TEXT),
                        (error_ref, Type::TEXT),
                        (&cancel_flag, Type::BOOL),
                    ],
                )
                .await?;
            }
            Ok::<_, tokio_postgres::Error>(())
        };
        let notify = async {
            if wake && commit == Commit::Caller {
                tx.query_typed("SELECT pg_notify($1, '')", &[(&t.channel, Type::TEXT)])
                    .await?;
            }
            Ok::<_, tokio_postgres::Error>(())
        };
        let append = async {
            if events.is_empty() {
                return Ok(None);
            }
            let request = AppendRequest::new(saga_stream(loaded.id), ExpectedVersion::Any, events);
            let outcome = match commit {
                Commit::Caller => self.store.append_in(tx, request).await?,
                Commit::Ours => self.store.append_in_unhinted(tx, request).await?,
            };
            Ok::<_, eventrail_core::StoreError>(outcome.positions.last().copied())
        };
        let (w, sw, n, a) = futures::join!(writes, saga_write, notify, append);
        w.map_err(db)?;
        sw.map_err(db)?;
        n.map_err(db)?;
        let position = a?;
        Ok(Applied {
            state: saga_state,
            position: position.filter(|_| commit == Commit::Ours),
            wake: wake && commit == Commit::Ours,
            continuation,
        })
    }
}

/// A request of a caller or an operator.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Operation<'a> {
    Cancel,
    Retry,
    SkipStep(&'a str),
    Abort,
}

fn event(loaded: &Loaded, kind: &str, data: Value) -> NewEvent {
    let mut body = json!({
        "saga_id": loaded.id,
        "definition": loaded.definition,
        "version": loaded.version,
    });
    if let (Value::Object(b), Value::Object(d)) = (&mut body, data) {
        b.extend(d);
    }
    NewEvent::json(kind, body)
}
