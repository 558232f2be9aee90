//! Sagas for eventrail: durable multi-step processes that complete or are consistently undone,
//! survive the crash of any process at any moment, and are visible to an operator.
//!
//! A [`SagaDefinition`] (name + version) is a graph of steps, each with an action and, where it
//! can be undone, a compensation. Independent steps run in parallel; a condition can skip a
//! step; a step is compensatable, the pivot (the point of no return) or retriable; timers and
//! signal waits are steps too. Definitions can also be data ([`SagaDocument`], JSON or YAML)
//! over step types whose handlers are registered in code, possibly in several services.
//!
//! # How it runs
//! State lives in PostgreSQL beside the events (migration 9): one row per saga and per step.
//! There is no coordinator. Every [`SagaRunner`] claims due steps whose handler it registered
//! with `FOR UPDATE SKIP LOCKED`, holds a lease it renews while the step runs, and commits the
//! outcome only while the step's epoch is still its claim's: a runner that was paused or cut
//! off, whose step was taken over, is fenced and its transaction rolls back. A local step's
//! writes commit in the same transaction as its completion ([`StepContext::transaction`]), so
//! they happen exactly once; external calls carry [`StepContext::idempotency_key`], stable
//! across attempts and runners.
//!
//! Whoever commits a step's outcome also moves the saga on, under the saga row's lock: the
//! next steps become due, or — after a step failed its retries, or a cancel — the completed
//! steps are compensated in reverse dependency order (independent ones in parallel). A
//! compensation that keeps failing ends in the `stuck` state, where [`SagaAdmin`] can retry it,
//! skip the step or abort the saga.
//!
//! Every change of a saga is also an event of the stream `saga-<id>` in the event store, so
//! sagas can be projected, audited and followed like any other events. Views
//! `saga_waiting_on`, `saga_last_errors` and `saga_compensation_progress` answer an operator's
//! first questions in SQL.
//!
//! # Versions
//! Each instance keeps the graph it started with and its version. A runner only claims steps
//! whose handler it has, so a runner of another version leaves the instance alone;
//! [`SagaAdmin::definitions`] reports in-flight instances per version and those no live
//! runner can run.

mod admin;
mod client;
mod context;
mod definition;
mod document;
mod engine;
mod error;
mod handler;
mod options;
mod remote;
mod runner;
mod starter;
mod state;
mod tables;
mod waker;

pub use admin::{DefinitionStatus, SagaAdmin, SagaDetail, SagaSummary, StepDetail};
pub use client::{Sagas, Started};
pub use context::StepContext;
pub use definition::{SagaDefinition, SagaDefinitionBuilder, Step};
pub use document::{CompareOp, Condition, RetrySettings, SagaDocument, StepDocument, StepKind};
pub use engine::saga_stream;
pub use error::{DefinitionError, SagaError};
pub use handler::{StepHandler, handler, handler_with_compensation};
pub use options::SagaOptions;
pub use remote::{Participant, RemoteCommand, RemoteReply, send_command};
pub use runner::{SagaRunner, SagaRunnerBuilder};
pub use starter::SagaStarter;
pub use state::{SagaState, StepState};
pub use tables::{SAGA_MIGRATION, SagaTables, saga_migrator, with_saga_migration};
