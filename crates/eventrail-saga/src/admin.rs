use std::time::Duration;

use eventrail_store_postgres::PgEventStore;
use serde_json::Value;
use uuid::Uuid;

use crate::client::Sagas;
use crate::engine::Operation;
use crate::error::{db, encode};
use crate::{SagaError, SagaOptions, SagaState};

/// What operators see and do: list and show sagas with every step's state, attempts, error and
/// timing; retry a stuck compensation, skip a stuck step, cancel, abort; definitions with their
/// in-flight counts and what no live runner can run.
#[derive(Debug, Clone)]
pub struct SagaAdmin {
    sagas: Sagas,
}

/// One saga of a listing.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SagaSummary {
    /// Its id.
    pub id: Uuid,
    /// Definition name.
    pub definition: String,
    /// Definition version.
    pub version: i32,
    /// Its state.
    pub state: String,
    /// Why it compensates, failed or is stuck.
    pub last_error: Option<String>,
    /// When it started (the database's text form).
    pub created_at: String,
    /// When it last changed.
    pub updated_at: String,
}

/// One step of [`SagaDetail`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StepDetail {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// The steps it depends on (the graph's edges).
    pub depends_on: Vec<String>,
    /// Its handler (none for timers and signal waits).
    pub handler: Option<String>,
    /// Its state.
    pub state: String,
    /// Attempts of its action.
    pub attempts: i32,
    /// Attempts of its compensation.
    pub compensation_attempts: i32,
    /// Its output.
    pub output: Option<Value>,
    /// The whole error chain of its last failure.
    pub last_error: Option<String>,
    /// The runner holding it.
    pub owner: Option<String>,
    /// When it is due or its wait ends.
    pub due_at: Option<String>,
    /// When it first started.
    pub started_at: Option<String>,
    /// When it finished.
    pub finished_at: Option<String>,
    /// When it was compensated.
    pub compensated_at: Option<String>,
}

/// A saga with its steps.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SagaDetail {
    /// The saga.
    pub saga: SagaSummary,
    /// Its input.
    pub input: Value,
    /// Its steps, in graph order of their names.
    pub steps: Vec<StepDetail>,
}

/// In-flight instances of one definition version.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DefinitionStatus {
    /// Definition name.
    pub name: String,
    /// Version.
    pub version: i32,
    /// Instances not finished (queued, running, compensating, stuck).
    pub in_flight: i64,
    /// In-flight instances with a due step whose handler no live runner has: nothing will
    /// move them until a runner with that version's handlers starts.
    pub stranded: i64,
    /// Handlers of this version that no live runner has.
    pub missing_handlers: Vec<String>,
}

const TS: &str = "to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')";

fn ts(column: &str) -> String {
    TS.replace("{c}", column)
}

impl SagaAdmin {
    /// An admin on the tables of `options`.
    ///
    /// # Errors
    /// [`SagaError::Config`] for a refused schema or table name.
    pub fn new(store: PgEventStore, options: &SagaOptions) -> Result<Self, SagaError> {
        Ok(Self {
            sagas: Sagas::new(store, options)?,
        })
    }

    /// Sagas, newest first, optionally of one state and one definition.
    ///
    /// # Errors
    /// [`SagaError::Database`].
    pub async fn list(
        &self,
        state: Option<SagaState>,
        definition: Option<&str>,
        limit: i64,
    ) -> Result<Vec<SagaSummary>, SagaError> {
        let t = &self.sagas.engine.tables;
        let client = self.sagas.engine.store.pool().get().await.map_err(db)?;
        let state = state.map(SagaState::as_str);
        let rows = client
            .query(
                &format!(
                    "SELECT id, definition, version, state, last_error, {}, {} FROM {}
                     WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR definition = $2)
                     ORDER BY created_at DESC, id DESC LIMIT $3",
                    ts("created_at"),
                    ts("updated_at"),
                    t.instances
                ),
                &[&state, &definition, &limit],
            )
            .await
            .map_err(db)?;
        Ok(rows.iter().map(summary).collect())
    }

    /// One saga with its steps.
    ///
    /// # Errors
    /// [`SagaError::NotFound`], [`SagaError::Database`].
    pub async fn show(&self, id: Uuid) -> Result<SagaDetail, SagaError> {
        let t = &self.sagas.engine.tables;
        let client = self.sagas.engine.store.pool().get().await.map_err(db)?;
        let saga = client
            .query_opt(
                &format!(
                    "SELECT id, definition, version, state, last_error, {}, {}, input FROM {} WHERE id = $1",
                    ts("created_at"),
                    ts("updated_at"),
                    t.instances
                ),
                &[&id],
            )
            .await
            .map_err(db)?
            .ok_or(SagaError::NotFound(id))?;
        let steps = client
            .query(
                &format!(
                    "SELECT step, kind, depends_on, handler, state, attempts, compensation_attempts, output,
                            last_error, owner, {}, {}, {}, {}
                     FROM {} WHERE saga_id = $1 ORDER BY started_at NULLS LAST, step",
                    ts("due_at"),
                    ts("started_at"),
                    ts("finished_at"),
                    ts("compensated_at"),
                    t.steps
                ),
                &[&id],
            )
            .await
            .map_err(db)?;
        Ok(SagaDetail {
            saga: summary(&saga),
            input: saga.get(7),
            steps: steps
                .iter()
                .map(|r| StepDetail {
                    name: r.get(0),
                    kind: r.get(1),
                    depends_on: r.get(2),
                    handler: r.get(3),
                    state: r.get(4),
                    attempts: r.get(5),
                    compensation_attempts: r.get(6),
                    output: r.get(7),
                    last_error: r.get(8),
                    owner: r.get(9),
                    due_at: r.get(10),
                    started_at: r.get(11),
                    finished_at: r.get(12),
                    compensated_at: r.get(13),
                })
                .collect(),
        })
    }

    /// Retries the stuck compensations of a stuck saga (their attempts start again).
    ///
    /// # Errors
    /// [`SagaError::InvalidState`] when it is not stuck, [`SagaError::NotFound`].
    pub async fn retry(&self, id: Uuid) -> Result<SagaState, SagaError> {
        self.sagas.operate(id, Operation::Retry).await
    }

    /// Marks a stuck compensation as done (the operator undid it by hand), so the saga's
    /// compensation goes on.
    ///
    /// # Errors
    /// [`SagaError::NoSuchStep`], [`SagaError::InvalidState`] when that step is not stuck.
    pub async fn skip_step(&self, id: Uuid, step: &str) -> Result<SagaState, SagaError> {
        self.sagas.operate(id, Operation::SkipStep(step)).await
    }

    /// Cancels a running saga (see [`Sagas::cancel`]).
    ///
    /// # Errors
    /// As [`Sagas::cancel`].
    pub async fn cancel(&self, id: Uuid) -> Result<SagaState, SagaError> {
        self.sagas.operate(id, Operation::Cancel).await
    }

    /// Gives a saga up where it stands: it ends failed, nothing more runs or is compensated,
    /// and a runner still running one of its steps is fenced.
    ///
    /// # Errors
    /// [`SagaError::InvalidState`] for a finished saga, [`SagaError::NotFound`].
    pub async fn abort(&self, id: Uuid) -> Result<SagaState, SagaError> {
        self.sagas.operate(id, Operation::Abort).await
    }

    /// Every definition version with its in-flight instances, and those no runner that
    /// heartbeat within `live_within` can run.
    ///
    /// # Errors
    /// [`SagaError::Database`].
    pub async fn definitions(
        &self,
        live_within: Duration,
    ) -> Result<Vec<DefinitionStatus>, SagaError> {
        let t = &self.sagas.engine.tables;
        let client = self.sagas.engine.store.pool().get().await.map_err(db)?;
        let live_ms = i64::try_from(live_within.as_millis()).map_err(encode)?;
        let rows = client
            .query(
                &format!(
                    "WITH live AS (
                         SELECT DISTINCT unnest(handlers) AS handler FROM {runners}
                         WHERE heartbeat_at > now() - $1::int8 * interval '1 millisecond'),
                     versions AS (
                         SELECT name, version FROM {definitions}
                         UNION SELECT DISTINCT definition, version FROM {instances}
                         WHERE state IN ('queued', 'running', 'compensating', 'stuck'))
                     SELECT v.name, v.version,
                        (SELECT count(*) FROM {instances} i WHERE i.definition = v.name AND i.version = v.version
                           AND i.state IN ('queued', 'running', 'compensating', 'stuck')),
                        (SELECT count(*) FROM {instances} i WHERE i.definition = v.name AND i.version = v.version
                           AND i.state IN ('queued', 'running', 'compensating')
                           AND EXISTS (SELECT 1 FROM {steps} s WHERE s.saga_id = i.id
                                AND s.state IN ('ready', 'running', 'compensate_ready', 'compensating')
                                AND s.handler IS NOT NULL AND s.handler NOT IN (SELECT handler FROM live))),
                        ARRAY(SELECT DISTINCT h FROM {definitions} d,
                                 jsonb_array_elements(d.document -> 'steps') st, LATERAL (SELECT st ->> 'type' AS h) x
                              WHERE d.name = v.name AND d.version = v.version AND h IS NOT NULL
                                AND h NOT IN (SELECT handler FROM live) ORDER BY h)
                     FROM versions v ORDER BY v.name, v.version",
                    runners = t.runners,
                    definitions = t.definitions,
                    instances = t.instances,
                    steps = t.steps,
                ),
                &[&live_ms],
            )
            .await
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| DefinitionStatus {
                name: r.get(0),
                version: r.get(1),
                in_flight: r.get(2),
                stranded: r.get(3),
                missing_handlers: r.get(4),
            })
            .collect())
    }
}

fn summary(r: &tokio_postgres::Row) -> SagaSummary {
    SagaSummary {
        id: r.get(0),
        definition: r.get(1),
        version: r.get(2),
        state: r.get(3),
        last_error: r.get(4),
        created_at: r.get(5),
        updated_at: r.get(6),
    }
}
