//! Remote steps: a step sends a command to another service through the outbox, in its own
//! transaction, and completes when that service's reply arrives (or fails when it does not
//! arrive in time). The other service takes the command with a [`Participant`]: through the
//! inbox (exactly-once effect), a handler, and a reply through its own outbox.
//!
//! Commands and replies are JSON bodies that carry everything needed ([`RemoteCommand`],
//! [`RemoteReply`]), so they travel over any outbox sink a service can consume back (NATS
//! JetStream, RabbitMQ, SQS, ...): the consuming side hands each body to
//! [`Participant::handle`] or [`Sagas::receive_reply`](crate::Sagas::receive_reply) and acks it
//! after they return.

use std::time::Duration;

use eventrail_core::BoxError;
use eventrail_outbox::{Inbox, NewMessage, Outbox};
use futures::future::BoxFuture;
use md5::Digest;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_postgres::Transaction;
use uuid::Uuid;

use crate::error::{db, encode};
use crate::{SagaError, StepContext};

/// A command of a remote step, as the participant receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RemoteCommand {
    /// The command's id, stable across every attempt of the step: the participant's inbox key.
    pub id: Uuid,
    /// The saga.
    pub saga_id: Uuid,
    /// The step waiting for the reply.
    pub step: String,
    /// What to do (the participant's handler dispatches on it).
    pub command: String,
    /// Its arguments.
    pub payload: Value,
    /// Where the reply goes (an outbox destination the saga's service consumes).
    pub reply_to: String,
    /// The step's idempotency key, for the participant's own external calls.
    pub idempotency_key: String,
}

/// A participant's reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RemoteReply {
    /// The command answered.
    pub command_id: Uuid,
    /// The saga.
    pub saga_id: Uuid,
    /// The step waiting for it.
    pub step: String,
    /// The handler's output when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Why it refused, when it did: the step fails and the saga compensates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The signal a remote step waits for.
pub(crate) fn reply_signal(step: &str) -> String {
    format!("reply:{step}")
}

/// A uuid derived from `key`, so a message sent again (another attempt, a redelivery) keeps
/// its id.
fn derived_id(key: &str) -> Uuid {
    uuid::Builder::from_md5_bytes(md5::Md5::digest(key.as_bytes()).into()).into_uuid()
}

/// Sends `command` with `payload` to `destination` through `outbox`, in the step's
/// transaction, and makes the step wait for the reply for at most `timeout` (then it fails and
/// the saga compensates). Returns the command's id. Call it from a step's action.
///
/// # Errors
/// [`SagaError::Encode`] for a payload that is not JSON, [`SagaError::Database`] when the
/// enqueue fails (the step's attempt then fails).
pub async fn send_command(
    ctx: &StepContext<'_>,
    outbox: &Outbox,
    destination: &str,
    command: &str,
    payload: Value,
    reply_to: &str,
    timeout: Duration,
) -> Result<Uuid, SagaError> {
    let key = ctx.idempotency_key();
    let body = RemoteCommand {
        id: derived_id(&format!("command:{key}")),
        saga_id: ctx.saga_id(),
        step: ctx.step().to_owned(),
        command: command.to_owned(),
        payload,
        reply_to: reply_to.to_owned(),
        idempotency_key: key,
    };
    let value = serde_json::to_value(&body).map_err(encode)?;
    let message = NewMessage::json(destination, ctx.saga_id().to_string(), &value)
        .id(body.id)
        .header("eventrail-saga-step", ctx.step());
    outbox
        .enqueue(ctx.transaction(), message)
        .await
        .map_err(|e| SagaError::Database(Box::new(e)))?;
    ctx.wait_for_signal(reply_signal(ctx.step()), timeout);
    Ok(body.id)
}

/// The other side of a remote step: takes each command once (the inbox), runs the handler in
/// the same transaction as the inbox entry and the reply (its outbox), so the effect and the
/// reply commit together, exactly once however often the broker redelivers.
#[derive(Debug, Clone)]
pub struct Participant {
    name: String,
    inbox: Inbox,
    outbox: Outbox,
}

impl Participant {
    /// A participant named `name` (its inbox consumer name) with this service's inbox and
    /// outbox.
    #[must_use]
    pub fn new(name: impl Into<String>, inbox: Inbox, outbox: Outbox) -> Self {
        Self {
            name: name.into(),
            inbox,
            outbox,
        }
    }

    /// Handles one command body in a transaction of its own on `pool`: returns false for a
    /// command already handled (ack it again), true once handled and replied. The handler runs
    /// under a savepoint: its error becomes a refusal reply (the saga compensates) and its
    /// writes are undone.
    ///
    /// # Errors
    /// [`SagaError::Encode`] for a body that is not a [`RemoteCommand`] (it can never be
    /// handled: dead-letter it), [`SagaError::Database`] (nothing committed: let the broker
    /// redeliver).
    pub async fn handle<F>(
        &self,
        pool: &deadpool_postgres::Pool,
        body: &[u8],
        handler: F,
    ) -> Result<bool, SagaError>
    where
        F: for<'a> FnOnce(
            &'a Transaction<'a>,
            &'a RemoteCommand,
        ) -> BoxFuture<'a, Result<Value, BoxError>>,
    {
        let command: RemoteCommand = serde_json::from_slice(body).map_err(encode)?;
        let mut client = pool.get().await.map_err(db)?;
        let mut tx = client.transaction().await.map_err(db)?;
        let first = self
            .inbox
            .record(&tx, &self.name, command.id)
            .await
            .map_err(|e| SagaError::Database(Box::new(e)))?;
        if !first {
            tx.rollback().await.map_err(db)?;
            return Ok(false);
        }
        let savepoint = tx.savepoint("participant").await.map_err(db)?;
        let outcome = handler(&savepoint, &command).await;
        let (output, error) = match outcome {
            Ok(output) => {
                savepoint.commit().await.map_err(db)?;
                (Some(output), None)
            }
            Err(e) => {
                savepoint.rollback().await.map_err(db)?;
                (None, Some(eventrail_core::error_chain(e.as_ref())))
            }
        };
        let reply = RemoteReply {
            command_id: command.id,
            saga_id: command.saga_id,
            step: command.step.clone(),
            output,
            error,
        };
        let value = serde_json::to_value(&reply).map_err(encode)?;
        let message = NewMessage::json(&command.reply_to, command.saga_id.to_string(), &value)
            .id(derived_id(&format!("reply:{}", command.id)));
        self.outbox
            .enqueue(&tx, message)
            .await
            .map_err(|e| SagaError::Database(Box::new(e)))?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }
}

impl RemoteReply {
    pub(crate) fn outcome(self) -> Result<Value, String> {
        match (self.output, self.error) {
            (_, Some(e)) => Err(e),
            (Some(o), None) => Ok(o),
            (None, None) => Ok(Value::Null),
        }
    }
}
