use eventrail_store_postgres::PgEventStore;
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::Transaction;
use tracing::instrument;
use uuid::Uuid;

use crate::engine::{Commit, Engine, Operation};
use crate::error::{db, encode};
use crate::tables::Tables;
use crate::{SagaDefinition, SagaDocument, SagaError, SagaOptions, SagaState};

/// Starts, signals and cancels sagas. Cheap to clone.
///
/// ```no_run
/// # async fn f(store: eventrail_store_postgres::PgEventStore,
/// #            definition: eventrail_saga::SagaDefinition<serde_json::Value>) -> Result<(), Box<dyn std::error::Error>> {
/// use eventrail_saga::{Sagas, SagaOptions};
/// let sagas = Sagas::new(store.clone(), &SagaOptions::new())?;
/// // Idempotent by key: a retried request starts no second saga.
/// let id = sagas.start(&definition, &serde_json::json!({"order": 42}), Some("order-42")).await?;
/// // Or in the caller's transaction: the saga exists only if it commits.
/// let mut client = store.pool().get().await?;
/// let tx = client.transaction().await?;
/// tx.execute("INSERT INTO orders (id) VALUES (43)", &[]).await?;
/// sagas.start_in(&tx, definition.document(), &serde_json::json!({"order": 43}), Some("order-43")).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Sagas {
    pub(crate) engine: Engine,
}

/// How a start went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Started {
    /// The saga's id.
    pub id: Uuid,
    /// False when a saga with this key existed already (its id is returned).
    pub created: bool,
}

impl Sagas {
    /// Sagas in the tables of `options`, recording their events in `store`.
    ///
    /// # Errors
    /// [`SagaError::Config`] for a refused schema or table name.
    pub fn new(store: PgEventStore, options: &SagaOptions) -> Result<Self, SagaError> {
        let tables = Tables::new(&options.tables, &options.schema)?;
        Ok(Self {
            engine: Engine::new(tables, store),
        })
    }

    /// Starts a saga of `definition` in a transaction of its own and returns its id.
    ///
    /// # Errors
    /// As [`Sagas::start_in`].
    pub async fn start<I: Serialize>(
        &self,
        definition: &SagaDefinition<I>,
        input: &I,
        key: Option<&str>,
    ) -> Result<Uuid, SagaError> {
        let mut client = self.engine.store.pool().get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        let started = self
            .start_in(&tx, definition.document(), input, key)
            .await?;
        tx.commit().await.map_err(db)?;
        Ok(started.id)
    }

    /// Starts a saga of `document` in the caller's transaction: it exists only if `tx` commits.
    /// With a `key`, starting twice (also concurrently) gives one saga: the second call
    /// returns the first one's id with `created: false`.
    ///
    /// # Errors
    /// [`SagaError::Encode`] for an input that is not JSON, [`SagaError::Store`] when its
    /// events cannot be recorded, [`SagaError::Database`]; `tx` is then aborted: roll it back.
    #[instrument(skip_all, fields(definition = document.name(), version = document.version()))]
    pub async fn start_in<I: Serialize + ?Sized>(
        &self,
        tx: &Transaction<'_>,
        document: &SagaDocument,
        input: &I,
        key: Option<&str>,
    ) -> Result<Started, SagaError> {
        let input = serde_json::to_value(input).map_err(encode)?;
        let (id, applied) = self
            .engine
            .start(tx, document, input, key, Commit::Caller)
            .await?;
        Ok(Started {
            id,
            created: applied.is_some(),
        })
    }

    /// Starts a saga of a definition registered in the database (see [`Sagas::register`]).
    ///
    /// # Errors
    /// [`SagaError::UnknownDefinition`], and as [`Sagas::start_in`].
    pub async fn start_registered_in(
        &self,
        tx: &Transaction<'_>,
        name: &str,
        version: u32,
        input: &Value,
        key: Option<&str>,
    ) -> Result<Started, SagaError> {
        let document = self.registered(tx, name, version).await?;
        self.start_in(tx, &document, input, key).await
    }

    async fn registered(
        &self,
        tx: &Transaction<'_>,
        name: &str,
        version: u32,
    ) -> Result<SagaDocument, SagaError> {
        let v = i32::try_from(version).map_err(encode)?;
        let row = tx
            .query_opt(
                &format!(
                    "SELECT document FROM {} WHERE name = $1 AND version = $2",
                    self.engine.tables.definitions
                ),
                &[&name, &v],
            )
            .await
            .map_err(db)?
            .ok_or_else(|| SagaError::UnknownDefinition {
                name: name.to_owned(),
                version,
            })?;
        serde_json::from_value(row.get(0)).map_err(|e| SagaError::Encode(e.to_string()))
    }

    /// Registers a definition in the database, so that any service can start it by name and
    /// operators see it. Registering the same graph again is a no-op.
    ///
    /// # Errors
    /// [`SagaError::DefinitionChanged`] when another graph has this name and version.
    pub async fn register(&self, document: &SagaDocument) -> Result<(), SagaError> {
        let client = self.engine.store.pool().get().await.map_err(db)?;
        register(&client, &self.engine.tables, document).await
    }

    /// Sends `signal` with `payload` to a saga, in a transaction of its own. The step waiting
    /// for it completes with the payload as its output; a signal that arrives before its step
    /// waits is kept. Returns false when the saga already had this signal (the first one wins).
    ///
    /// # Errors
    /// [`SagaError::NotFound`], [`SagaError::Database`].
    pub async fn signal(
        &self,
        saga_id: Uuid,
        signal: &str,
        payload: &impl Serialize,
    ) -> Result<bool, SagaError> {
        let payload = serde_json::to_value(payload).map_err(encode)?;
        let mut client = self.engine.store.pool().get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        let applied = self
            .engine
            .signal(&tx, saga_id, signal, payload, Commit::Ours)
            .await?;
        tx.commit().await.map_err(db)?;
        if let Some(a) = &applied {
            self.engine.after_commit(a);
        }
        Ok(applied.is_some())
    }

    /// [`Sagas::signal`] in the caller's transaction (for example a worker's batch, turning
    /// an event into a signal exactly once).
    ///
    /// # Errors
    /// As [`Sagas::signal`]; `tx` is then aborted: roll it back.
    pub async fn signal_in(
        &self,
        tx: &Transaction<'_>,
        saga_id: Uuid,
        signal: &str,
        payload: &impl Serialize,
    ) -> Result<bool, SagaError> {
        let payload = serde_json::to_value(payload).map_err(encode)?;
        let applied = self
            .engine
            .signal(tx, saga_id, signal, payload, Commit::Caller)
            .await?;
        Ok(applied.is_some())
    }

    /// Completes a remote step with its participant's reply (a [`RemoteReply`](crate::RemoteReply)
    /// body as it came from the broker): the step succeeds with the reply's output, or fails on
    /// a refusal (the saga compensates). Returns false for a reply nobody waits for any more (a
    /// duplicate, or one after the step's deadline): ack it anyway.
    ///
    /// # Errors
    /// [`SagaError::Encode`] for a body that is not a reply (dead-letter it),
    /// [`SagaError::NotFound`], [`SagaError::Database`] (let the broker redeliver).
    pub async fn receive_reply(&self, body: &[u8]) -> Result<bool, SagaError> {
        let reply: crate::RemoteReply = serde_json::from_slice(body).map_err(encode)?;
        let (saga_id, step) = (reply.saga_id, reply.step.clone());
        let mut client = self.engine.store.pool().get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        let applied = self
            .engine
            .reply(&tx, saga_id, &step, reply.outcome())
            .await?;
        tx.commit().await.map_err(db)?;
        if let Some(a) = &applied {
            self.engine.after_commit(a);
        }
        Ok(applied.is_some())
    }

    /// Cancels a running saga: what has not run never will, and the completed steps are
    /// compensated; it ends cancelled.
    ///
    /// # Errors
    /// [`SagaError::InvalidState`] for a saga that is not queued or running,
    /// [`SagaError::PastPivot`] once its pivot succeeded, [`SagaError::NotFound`].
    pub async fn cancel(&self, saga_id: Uuid) -> Result<SagaState, SagaError> {
        self.operate(saga_id, Operation::Cancel).await
    }

    pub(crate) async fn operate(
        &self,
        saga_id: Uuid,
        op: Operation<'_>,
    ) -> Result<SagaState, SagaError> {
        let mut client = self.engine.store.pool().get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        let applied = self.engine.operate(&tx, saga_id, op).await?;
        tx.commit().await.map_err(db)?;
        self.engine.after_commit(&applied);
        Ok(applied.state)
    }

    /// The saga's state.
    ///
    /// # Errors
    /// [`SagaError::NotFound`], [`SagaError::Database`].
    pub async fn state(&self, saga_id: Uuid) -> Result<SagaState, SagaError> {
        let client = self.engine.store.pool().get().await.map_err(db)?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT state FROM {} WHERE id = $1",
                    self.engine.tables.instances
                ),
                &[&saga_id],
            )
            .await
            .map_err(db)?
            .ok_or(SagaError::NotFound(saga_id))?;
        let s: String = row.get(0);
        SagaState::parse(&s).ok_or_else(|| encode(format!("unknown saga state {s}")))
    }

    /// Waits until the saga is finished (or stuck) and returns its state, checking every
    /// `interval`.
    ///
    /// # Errors
    /// As [`Sagas::state`].
    pub async fn wait_settled(
        &self,
        saga_id: Uuid,
        interval: std::time::Duration,
    ) -> Result<SagaState, SagaError> {
        loop {
            let s = self.state(saga_id).await?;
            if s.is_finished() || s == SagaState::Stuck {
                return Ok(s);
            }
            tokio::time::sleep(interval).await;
        }
    }
}

pub(crate) async fn register(
    client: &tokio_postgres::Client,
    tables: &Tables,
    document: &SagaDocument,
) -> Result<(), SagaError> {
    let version = i32::try_from(document.version()).map_err(encode)?;
    let json = document.to_json();
    let row = client
        .query_one(
            &format!(
                "WITH ins AS (INSERT INTO {t} (name, version, document) VALUES ($1, $2, $3)
                              ON CONFLICT DO NOTHING RETURNING document)
                 SELECT document FROM ins UNION ALL SELECT document FROM {t} WHERE name = $1 AND version = $2 LIMIT 1",
                t = tables.definitions
            ),
            &[&document.name(), &version, &json],
        )
        .await
        .map_err(db)?;
    let stored: Value = row.get(0);
    let stored: Result<SagaDocument, _> = serde_json::from_value(stored);
    if stored.as_ref().ok() == Some(document) {
        Ok(())
    } else {
        Err(SagaError::DefinitionChanged {
            name: document.name().to_owned(),
            version: document.version(),
        })
    }
}
