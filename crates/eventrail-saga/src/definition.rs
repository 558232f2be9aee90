use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use eventrail_core::{BoxError, RetryPolicy};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::document::duration_ms;
use futures::future::BoxFuture;

use crate::handler::FnHandler;
use crate::{DefinitionError, SagaDocument, StepContext, StepDocument, StepHandler, StepKind};

/// A saga definition in Rust: a name, a version, typed input `I`, and a graph of steps with
/// their actions and compensations. Validated when built; start instances with
/// [`Sagas::start`](crate::Sagas::start), run them with a [`SagaRunner`](crate::SagaRunner)
/// that registered it.
///
/// ```
/// use std::time::Duration;
/// use eventrail_saga::{SagaDefinition, Step};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Order { id: u64, amount: u64 }
///
/// let definition = SagaDefinition::<Order>::builder("order", 1)
///     .step(Step::compensatable(
///         "reserve",
///         |ctx| Box::pin(async move { Ok(format!("reservation-{}", ctx.input::<Order>()?.id)) }),
///         |_ctx| Box::pin(async move { Ok(()) }),
///     ))
///     .step(Step::pivot("charge", |ctx| Box::pin(async move {
///         Ok(ctx.input::<Order>()?.amount)
///     })).after(["reserve"]).timeout(Duration::from_secs(10)))
///     .step(Step::retriable("ship", |_ctx| Box::pin(async move { Ok(()) })).after(["charge"]))
///     .build()
///     .unwrap();
/// assert_eq!(definition.document().steps().len(), 3);
/// ```
pub struct SagaDefinition<I> {
    document: SagaDocument,
    handlers: Vec<(String, Arc<dyn StepHandler>)>,
    input: PhantomData<fn(I)>,
}

impl<I> std::fmt::Debug for SagaDefinition<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaDefinition")
            .field("document", &self.document)
            .finish_non_exhaustive()
    }
}

impl<I> Clone for SagaDefinition<I> {
    fn clone(&self) -> Self {
        Self {
            document: self.document.clone(),
            handlers: self.handlers.clone(),
            input: PhantomData,
        }
    }
}

impl<I: Serialize + DeserializeOwned + 'static> SagaDefinition<I> {
    /// A builder for definition `name` at `version` (give a changed graph a new version:
    /// instances in flight keep the version they started with).
    #[must_use]
    pub fn builder(name: impl Into<String>, version: u32) -> SagaDefinitionBuilder<I> {
        SagaDefinitionBuilder {
            name: name.into(),
            version,
            steps: Vec::new(),
            input: PhantomData,
        }
    }
}

impl<I> SagaDefinition<I> {
    /// Its graph as data.
    #[must_use]
    pub fn document(&self) -> &SagaDocument {
        &self.document
    }

    pub(crate) fn handlers(&self) -> &[(String, Arc<dyn StepHandler>)] {
        &self.handlers
    }
}

/// Builds a [`SagaDefinition`].
#[must_use]
pub struct SagaDefinitionBuilder<I> {
    name: String,
    version: u32,
    steps: Vec<Step<I>>,
    input: PhantomData<fn(I)>,
}

impl<I> std::fmt::Debug for SagaDefinitionBuilder<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaDefinitionBuilder")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl<I: Serialize + DeserializeOwned + 'static> SagaDefinitionBuilder<I> {
    /// Adds a step.
    pub fn step(mut self, step: Step<I>) -> Self {
        self.steps.push(step);
        self
    }

    /// The validated definition.
    ///
    /// # Errors
    /// A [`DefinitionError`] naming what is wrong with the graph (cycles, unknown or duplicate
    /// names, steps after the pivot that are not retriable, bad settings).
    pub fn build(self) -> Result<SagaDefinition<I>, DefinitionError> {
        let mut docs = Vec::with_capacity(self.steps.len());
        let mut handlers: Vec<(String, Arc<dyn StepHandler>)> = Vec::new();
        for step in self.steps {
            let mut doc = step.doc;
            if let Some(h) = step.handler {
                let name = format!("{}@{}/{}", self.name, self.version, doc.name);
                doc.handler = Some(name.clone());
                handlers.push((name, Arc::new(h)));
            }
            docs.push(doc);
        }
        Ok(SagaDefinition {
            document: SagaDocument::new(self.name, self.version, docs)?,
            handlers,
            input: PhantomData,
        })
    }
}

/// One step of a [`SagaDefinition`]: its kind decides what happens when it or a later step
/// fails, and the constructors take exactly what that kind needs (a pivot and a retriable step
/// have no compensation).
pub struct Step<I> {
    doc: StepDocument,
    handler: Option<FnHandler>,
    input: PhantomData<fn(I)>,
}

impl<I> std::fmt::Debug for Step<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("doc", &self.doc)
            .finish_non_exhaustive()
    }
}

impl<I: DeserializeOwned + 'static> Step<I> {
    fn with(name: impl Into<String>, kind: StepKind, handler: Option<FnHandler>) -> Self {
        // The handler name is set by the definition (it knows the name and version).
        let placeholder = handler.as_ref().map(|_| String::from("?"));
        Self {
            doc: StepDocument::new(name, kind, placeholder),
            handler,
            input: PhantomData,
        }
    }

    /// A step that can be undone: `compensation` runs when the saga fails after it succeeded.
    pub fn compensatable<O, A, C>(name: impl Into<String>, action: A, compensation: C) -> Self
    where
        O: Serialize + Send + 'static,
        A: for<'a> Fn(&'a StepContext<'a>) -> BoxFuture<'a, Result<O, BoxError>>
            + Send
            + Sync
            + 'static,
        C: for<'a> Fn(&'a StepContext<'a>) -> BoxFuture<'a, Result<(), BoxError>>
            + Send
            + Sync
            + 'static,
    {
        Self::with(
            name,
            StepKind::Compensatable,
            Some(FnHandler::new(action, Some(Box::new(compensation)))),
        )
    }

    /// A step with nothing to undo (a lookup, a validation) that may still fail the saga.
    pub fn action<O, A>(name: impl Into<String>, action: A) -> Self
    where
        O: Serialize + Send + 'static,
        A: for<'a> Fn(&'a StepContext<'a>) -> BoxFuture<'a, Result<O, BoxError>>
            + Send
            + Sync
            + 'static,
    {
        let mut s = Self::with(
            name,
            StepKind::Compensatable,
            Some(FnHandler::new(action, None)),
        );
        s.doc.compensate = false;
        s
    }

    /// The point of no return: once it succeeded, the saga only goes forward.
    pub fn pivot<O, A>(name: impl Into<String>, action: A) -> Self
    where
        O: Serialize + Send + 'static,
        A: for<'a> Fn(&'a StepContext<'a>) -> BoxFuture<'a, Result<O, BoxError>>
            + Send
            + Sync
            + 'static,
    {
        Self::with(name, StepKind::Pivot, Some(FnHandler::new(action, None)))
    }

    /// A step that must eventually succeed: retried forward, never given up or undone.
    pub fn retriable<O, A>(name: impl Into<String>, action: A) -> Self
    where
        O: Serialize + Send + 'static,
        A: for<'a> Fn(&'a StepContext<'a>) -> BoxFuture<'a, Result<O, BoxError>>
            + Send
            + Sync
            + 'static,
    {
        Self::with(
            name,
            StepKind::Retriable,
            Some(FnHandler::new(action, None)),
        )
    }

    /// A durable timer: succeeds `duration` after it became due, across restarts.
    pub fn timer(name: impl Into<String>, duration: Duration) -> Self {
        let mut s = Self::with(name, StepKind::Timer, None);
        s.doc.duration_ms = Some(duration_ms(duration));
        s
    }

    /// A durable wait for `signal` (see [`Sagas::signal`](crate::Sagas::signal)); fails when
    /// `deadline` passes first. Its output is the signal's payload.
    pub fn signal(name: impl Into<String>, signal: impl Into<String>, deadline: Duration) -> Self {
        let mut s = Self::with(name, StepKind::Signal, None);
        s.doc.signal = Some(signal.into());
        s.doc.deadline_ms = Some(duration_ms(deadline));
        s
    }

    /// Runs after `steps` succeeded (or were skipped), and sees their outputs.
    #[must_use]
    pub fn after<S: Into<String>>(mut self, steps: impl IntoIterator<Item = S>) -> Self {
        self.doc.after.extend(steps.into_iter().map(Into::into));
        self
    }

    /// Runs only when `predicate` holds over the input and the outputs of its dependencies;
    /// otherwise it is skipped and its dependents go on. (Only steps with an action.)
    #[must_use]
    pub fn when<P>(mut self, predicate: P) -> Self
    where
        P: Fn(&I, &StepContext<'_>) -> bool + Send + Sync + 'static,
    {
        if let Some(h) = &mut self.handler {
            h.condition = Some(Arc::new(move |ctx: &StepContext<'_>| {
                let input: I = ctx.input().map_err(|e| -> BoxError { Box::new(e) })?;
                Ok(predicate(&input, ctx))
            }));
        }
        self
    }

    /// Longest time one attempt may take (default 30 s); a timed-out attempt failed.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.doc.timeout_ms = duration_ms(timeout).max(1);
        self
    }

    /// Attempts and backoff of the action (default 3 attempts, 100 ms to 10 s, jittered).
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.doc.retry = policy.into();
        self
    }

    /// Attempts and backoff of the compensation before it is stuck (default 5, 200 ms to 30 s).
    #[must_use]
    pub fn compensation_retry(mut self, policy: RetryPolicy) -> Self {
        self.doc.compensation_retry = policy.into();
        self
    }
}
