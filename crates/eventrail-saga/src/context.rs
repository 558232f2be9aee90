use std::sync::Mutex;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio_postgres::Transaction;
use uuid::Uuid;

use crate::SagaError;
use crate::error::encode;

/// What a step's action (or compensation) sees: who it is, which attempt, the keys for
/// external calls, the saga input, its dependencies' outputs, and the transaction in which its
/// own writes commit together with its completion.
///
/// Write to the database through [`StepContext::transaction`] (and enqueue outbox messages
/// there): those writes commit exactly when the step's completion does, and a runner that lost
/// its lease (another runner took the step over) rolls them back.
pub struct StepContext<'a> {
    pub(crate) saga_id: Uuid,
    pub(crate) definition: &'a str,
    pub(crate) step: &'a str,
    pub(crate) attempt: u32,
    pub(crate) epoch: i64,
    pub(crate) tx: &'a Transaction<'a>,
    pub(crate) input: &'a Value,
    pub(crate) outputs: &'a Map<String, Value>,
    pub(crate) own_output: Option<&'a Value>,
    pub(crate) wait: Mutex<Option<ReplyWait>>,
}

impl std::fmt::Debug for StepContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepContext")
            .field("saga_id", &self.saga_id)
            .field("step", &self.step)
            .field("attempt", &self.attempt)
            .field("fencing_token", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// A wait an action asked for: the step waits for `signal` after it committed.
#[derive(Debug, Clone)]
pub(crate) struct ReplyWait {
    pub(crate) signal: String,
    pub(crate) deadline: Duration,
}

impl<'a> StepContext<'a> {
    /// The saga's id.
    #[must_use]
    pub fn saga_id(&self) -> Uuid {
        self.saga_id
    }

    /// The saga's definition name.
    #[must_use]
    pub fn definition(&self) -> &str {
        self.definition
    }

    /// This step's name.
    #[must_use]
    pub fn step(&self) -> &str {
        self.step
    }

    /// This attempt's number, from 1 (of the action, or of the compensation when it runs).
    #[must_use]
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// A key stable across attempts and runners, for this saga and step: hand it to external
    /// services as their idempotency key, so a retried attempt has its effect once.
    #[must_use]
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}", self.saga_id, self.step)
    }

    /// The key of this step's compensation (stable across its attempts).
    #[must_use]
    pub fn compensation_key(&self) -> String {
        format!("{}:{}:compensation", self.saga_id, self.step)
    }

    /// A token that grows with every claim of this step: a service that remembers the
    /// highest token it saw can refuse a stale runner's late call.
    #[must_use]
    pub fn fencing_token(&self) -> i64 {
        self.epoch
    }

    /// The transaction in which this step's writes, its completion and its outbox messages
    /// commit together.
    #[must_use]
    pub fn transaction(&self) -> &'a Transaction<'a> {
        self.tx
    }

    /// The saga input as JSON.
    #[must_use]
    pub fn input_json(&self) -> &Value {
        self.input
    }

    /// The saga input.
    ///
    /// # Errors
    /// [`SagaError::Encode`] when it does not deserialize as `T`.
    pub fn input<T: DeserializeOwned>(&self) -> Result<T, SagaError> {
        serde_json::from_value(self.input.clone()).map_err(encode)
    }

    /// The output of `step`, one of the steps this one depends on (`None` when it was skipped).
    ///
    /// # Errors
    /// [`SagaError::Encode`] when it does not deserialize as `T`.
    pub fn output<T: DeserializeOwned>(&self, step: &str) -> Result<Option<T>, SagaError> {
        self.outputs
            .get(step)
            .map(|v| serde_json::from_value(v.clone()).map_err(encode))
            .transpose()
    }

    /// The outputs of the steps this one depends on, by name.
    #[must_use]
    pub fn outputs(&self) -> &Map<String, Value> {
        self.outputs
    }

    /// In a compensation: this step's own output, what there is to undo.
    ///
    /// # Errors
    /// [`SagaError::Encode`] when it does not deserialize as `T`.
    pub fn own_output<T: DeserializeOwned>(&self) -> Result<Option<T>, SagaError> {
        self.own_output
            .map(|v| serde_json::from_value(v.clone()).map_err(encode))
            .transpose()
    }

    /// Makes this step, once its action returned and committed, wait for `signal` (a reply of
    /// another service, an approval) for at most `deadline`: the signal's payload becomes its
    /// output, and a deadline that passes fails it. This is how a remote step sends a command
    /// through the outbox in [`transaction`](Self::transaction) and completes on the reply.
    pub fn wait_for_signal(&self, signal: impl Into<String>, deadline: Duration) {
        let wait = ReplyWait {
            signal: signal.into(),
            deadline,
        };
        *self
            .wait
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(wait);
    }

    pub(crate) fn take_wait(&self) -> Option<ReplyWait> {
        self.wait
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}
