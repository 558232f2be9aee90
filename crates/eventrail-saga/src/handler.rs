use std::sync::Arc;

use eventrail_core::BoxError;
use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;

use crate::StepContext;

/// Runs one kind of step: the action, and the compensation of a step that can be undone.
///
/// Implement it for step types of definitions given as data, or use [`handler`] and
/// [`handler_with_compensation`] for closures. Futures are boxed because runners keep handlers
/// of many types in one table.
pub trait StepHandler: Send + Sync + 'static {
    /// The action: its output (JSON) becomes the step's output.
    ///
    /// # Errors
    /// Any error fails this attempt; the step is retried by its retry policy.
    fn run<'a>(&'a self, ctx: &'a StepContext<'a>) -> BoxFuture<'a, Result<Value, BoxError>>;

    /// The compensation (the default does nothing).
    ///
    /// # Errors
    /// Any error fails this compensation attempt; it is retried, then stuck.
    fn compensate<'a>(&'a self, ctx: &'a StepContext<'a>) -> BoxFuture<'a, Result<(), BoxError>> {
        let _ = ctx;
        Box::pin(async { Ok(()) })
    }

    /// Whether the step should run at all (checked when it is due; the default: always). A
    /// step that should not run is recorded as skipped and its dependents go on.
    ///
    /// # Errors
    /// An error fails this attempt like an error of the action.
    fn should_run(&self, ctx: &StepContext<'_>) -> Result<bool, BoxError> {
        let _ = ctx;
        Ok(true)
    }
}

/// The signature of an action, boxed: borrows the context for the future it returns.
pub(crate) trait ActionFn<O>:
    for<'a> Fn(&'a StepContext<'a>) -> BoxFuture<'a, Result<O, BoxError>> + Send + Sync + 'static
{
}
impl<O, F> ActionFn<O> for F where
    F: for<'a> Fn(&'a StepContext<'a>) -> BoxFuture<'a, Result<O, BoxError>>
        + Send
        + Sync
        + 'static
{
}

type Predicate = dyn Fn(&StepContext<'_>) -> Result<bool, BoxError> + Send + Sync;

/// A handler made of closures.
pub(crate) struct FnHandler {
    run: Box<
        dyn for<'a> Fn(&'a StepContext<'a>) -> BoxFuture<'a, Result<Value, BoxError>> + Send + Sync,
    >,
    compensate: Option<Box<dyn ActionFn<()>>>,
    pub(crate) condition: Option<Arc<Predicate>>,
}

impl std::fmt::Debug for FnHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnHandler")
            .field("compensates", &self.compensate.is_some())
            .field("conditional", &self.condition.is_some())
            .finish()
    }
}

impl FnHandler {
    pub(crate) fn new<O, A>(action: A, compensate: Option<Box<dyn ActionFn<()>>>) -> Self
    where
        O: Serialize + Send + 'static,
        A: for<'a> Fn(&'a StepContext<'a>) -> BoxFuture<'a, Result<O, BoxError>>
            + Send
            + Sync
            + 'static,
    {
        let action = Arc::new(action);
        Self {
            run: Box::new(move |ctx| {
                let action = Arc::clone(&action);
                Box::pin(async move {
                    let out = action(ctx).await?;
                    Ok(serde_json::to_value(out)?)
                })
            }),
            compensate,
            condition: None,
        }
    }
}

impl StepHandler for FnHandler {
    fn run<'a>(&'a self, ctx: &'a StepContext<'a>) -> BoxFuture<'a, Result<Value, BoxError>> {
        (self.run)(ctx)
    }

    fn compensate<'a>(&'a self, ctx: &'a StepContext<'a>) -> BoxFuture<'a, Result<(), BoxError>> {
        match &self.compensate {
            Some(c) => c(ctx),
            None => Box::pin(async { Ok(()) }),
        }
    }

    fn should_run(&self, ctx: &StepContext<'_>) -> Result<bool, BoxError> {
        self.condition.as_ref().map_or(Ok(true), |c| c(ctx))
    }
}

/// A step type's handler from an action closure (nothing to undo).
///
/// ```
/// # use eventrail_saga::{handler, StepHandler};
/// let h = handler(|ctx| Box::pin(async move {
///     let amount: u64 = ctx.input::<serde_json::Value>()?["amount"].as_u64().unwrap_or(0);
///     Ok(serde_json::json!({"charged": amount}))
/// }));
/// # fn is_handler(_: &dyn StepHandler) {}
/// # is_handler(&h);
/// ```
pub fn handler<O, A>(action: A) -> impl StepHandler
where
    O: Serialize + Send + 'static,
    A: for<'a> Fn(&'a StepContext<'a>) -> BoxFuture<'a, Result<O, BoxError>>
        + Send
        + Sync
        + 'static,
{
    FnHandler::new(action, None)
}

/// A step type's handler from an action and a compensation closure.
pub fn handler_with_compensation<O, A, C>(action: A, compensation: C) -> impl StepHandler
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
    FnHandler::new(action, Some(Box::new(compensation)))
}
