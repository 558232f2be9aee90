//! The states of sagas and steps, and the one pure function that moves a saga on after any of
//! its steps changed: which steps become due, when the saga compensates, completes or is stuck.
//! Whoever commits a step's outcome runs it under the saga row's lock, so there is no
//! coordinator and no two runners advance one saga at once.

use std::collections::HashMap;
use std::fmt;

use serde_json::Value;

use crate::document::{Condition, StepKind};

/// Where a saga stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SagaState {
    /// Started; no step has finished yet.
    Queued,
    /// Going forward.
    Running,
    /// A step failed (or it was cancelled): its completed steps are being undone.
    Compensating,
    /// Every step succeeded or was skipped.
    Completed,
    /// It failed and every completed step was undone.
    Compensated,
    /// It failed without a way back (an operator aborted it, or a step failed past the pivot).
    Failed,
    /// It was cancelled and every completed step was undone.
    Cancelled,
    /// A compensation kept failing: an operator must retry, skip the step or abort.
    Stuck,
}

impl SagaState {
    /// The name stored in the database.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Compensating => "compensating",
            Self::Completed => "completed",
            Self::Compensated => "compensated",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Stuck => "stuck",
        }
    }

    /// The state stored as `s`, if it is one.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "compensating" => Self::Compensating,
            "completed" => Self::Completed,
            "compensated" => Self::Compensated,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            "stuck" => Self::Stuck,
            _ => return None,
        })
    }

    /// Whether it will not change again by itself (stuck waits for an operator but is not
    /// finished).
    #[must_use]
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Compensated | Self::Failed | Self::Cancelled
        )
    }

    fn goes_forward(self) -> bool {
        matches!(self, Self::Queued | Self::Running)
    }
}

impl fmt::Display for SagaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StepState {
    /// Waiting for its dependencies.
    Blocked,
    /// Due (at its due time) for a runner that has its handler.
    Ready,
    /// A runner holds it under a lease.
    Running,
    /// Waiting for a timer, a signal or a reply, until its due time.
    Waiting,
    /// Done; its output is kept.
    Succeeded,
    /// Its condition did not hold.
    Skipped,
    /// Failed after its retries (or its deadline passed).
    Failed,
    /// The saga failed before it ran.
    NotRun,
    /// Its compensation is due.
    CompensateReady,
    /// A runner runs its compensation under a lease.
    Compensating,
    /// Undone (or marked undone by an operator).
    Compensated,
    /// Its compensation failed after its retries: an operator decides.
    CompensationStuck,
    /// An operator aborted the saga while it was unfinished.
    Aborted,
}

impl StepState {
    /// The name stored in the database.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Blocked => "blocked",
            Self::Ready => "ready",
            Self::Running => "running",
            Self::Waiting => "waiting",
            Self::Succeeded => "succeeded",
            Self::Skipped => "skipped",
            Self::Failed => "failed",
            Self::NotRun => "not_run",
            Self::CompensateReady => "compensate_ready",
            Self::Compensating => "compensating",
            Self::Compensated => "compensated",
            Self::CompensationStuck => "compensation_stuck",
            Self::Aborted => "aborted",
        }
    }

    /// The state stored as `s`, if it is one.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "blocked" => Self::Blocked,
            "ready" => Self::Ready,
            "running" => Self::Running,
            "waiting" => Self::Waiting,
            "succeeded" => Self::Succeeded,
            "skipped" => Self::Skipped,
            "failed" => Self::Failed,
            "not_run" => Self::NotRun,
            "compensate_ready" => Self::CompensateReady,
            "compensating" => Self::Compensating,
            "compensated" => Self::Compensated,
            "compensation_stuck" => Self::CompensationStuck,
            "aborted" => Self::Aborted,
            _ => return None,
        })
    }
}

impl fmt::Display for StepState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step as the advance sees it.
#[derive(Debug, Clone)]
pub(crate) struct StepView {
    pub(crate) name: String,
    pub(crate) kind: StepKind,
    pub(crate) depends_on: Vec<String>,
    pub(crate) has_compensation: bool,
    pub(crate) condition: Option<Condition>,
    pub(crate) state: StepState,
    pub(crate) output: Option<Value>,
    /// Timer length, or signal deadline, in milliseconds.
    pub(crate) wait_ms: Option<u64>,
    pub(crate) signal: Option<String>,
    /// The signal (or reply) it waits for now, if it waits.
    pub(crate) waits_for: Option<String>,
}

/// One change the advance decided.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Change {
    /// A step moves on.
    Step(StepChange),
    /// The saga moves to `state`.
    Saga(SagaState),
}

/// A step moves to `state`; `due_in_ms` sets its due time from now, `output` its output,
/// `waits_for` the signal it waits for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StepChange {
    pub(crate) name: String,
    pub(crate) state: StepState,
    pub(crate) due_in_ms: Option<u64>,
    pub(crate) output: Option<Value>,
    pub(crate) waits_for: Option<String>,
}

impl StepChange {
    fn new(name: &str, state: StepState) -> Self {
        Self {
            name: name.to_owned(),
            state,
            due_in_ms: None,
            output: None,
            waits_for: None,
        }
    }
}

impl Change {
    fn step(name: &str, state: StepState) -> Self {
        Self::Step(StepChange::new(name, state))
    }
}

/// Records `change`, and the step's new state in `state`.
fn set<'s>(
    steps: &'s [StepView],
    state: &mut HashMap<&'s str, StepState>,
    changes: &mut Vec<Change>,
    change: Change,
) {
    if let Change::Step(StepChange {
        name, state: to, ..
    }) = &change
    {
        if let Some(s) = steps.iter().find(|s| &s.name == name) {
            state.insert(s.name.as_str(), *to);
        }
    }
    changes.push(change);
}

/// Moves a saga on: returns the changes, in order, to apply to `steps` and the saga. `signals`
/// are the signals it received (name → payload).
pub(crate) fn advance(
    saga: SagaState,
    cancel_requested: bool,
    input: &Value,
    steps: &[StepView],
    signals: &HashMap<String, Value>,
) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut state: HashMap<&str, StepState> =
        steps.iter().map(|s| (s.name.as_str(), s.state)).collect();
    let mut outputs: HashMap<&str, Value> = steps
        .iter()
        .filter_map(|s| Some((s.name.as_str(), s.output.clone()?)))
        .collect();
    let mut saga_state = saga;

    if saga_state.goes_forward() {
        let pivot_done = steps
            .iter()
            .any(|s| s.kind == StepKind::Pivot && state[s.name.as_str()] == StepState::Succeeded);
        let failed = steps
            .iter()
            .any(|s| state[s.name.as_str()] == StepState::Failed);
        if failed && pivot_done {
            // Validation keeps fallible steps before the pivot; if one fails anyway, there is
            // no way back.
            saga_state = SagaState::Failed;
            set(steps, &mut state, &mut changes, Change::Saga(saga_state));
            return changes;
        }
        if failed || cancel_requested {
            saga_state = SagaState::Compensating;
            set(steps, &mut state, &mut changes, Change::Saga(saga_state));
        }
    }

    if saga_state.goes_forward() {
        // Release what its dependencies allow, until nothing more changes (a signal that is
        // already there completes its wait at once, which may release more).
        loop {
            let mut progressed = false;
            for s in steps {
                let now = state[s.name.as_str()];
                let deps_done = s.depends_on.iter().all(|d| {
                    matches!(
                        state.get(d.as_str()),
                        Some(StepState::Succeeded | StepState::Skipped)
                    )
                });
                if now == StepState::Waiting {
                    let expects = s.waits_for.as_ref().or(s.signal.as_ref());
                    if let Some(payload) = expects.and_then(|n| signals.get(n)) {
                        outputs.insert(&s.name, payload.clone());
                        set(
                            steps,
                            &mut state,
                            &mut changes,
                            Change::Step(StepChange {
                                output: Some(payload.clone()),
                                ..StepChange::new(&s.name, StepState::Succeeded)
                            }),
                        );
                        progressed = true;
                    }
                    continue;
                }
                if now != StepState::Blocked || !deps_done {
                    continue;
                }
                progressed = true;
                if let Some(c) = &s.condition {
                    let visible: serde_json::Map<String, Value> = s
                        .depends_on
                        .iter()
                        .filter_map(|d| Some((d.clone(), outputs.get(d.as_str())?.clone())))
                        .collect();
                    let scope = serde_json::json!({"input": input, "outputs": visible});
                    if !c.holds(&scope) {
                        set(
                            steps,
                            &mut state,
                            &mut changes,
                            Change::step(&s.name, StepState::Skipped),
                        );
                        continue;
                    }
                }
                let change = match s.kind {
                    StepKind::Timer => Change::Step(StepChange {
                        due_in_ms: Some(s.wait_ms.unwrap_or(0)),
                        ..StepChange::new(&s.name, StepState::Waiting)
                    }),
                    StepKind::Signal => match s.signal.as_ref().and_then(|n| signals.get(n)) {
                        Some(payload) => {
                            outputs.insert(&s.name, payload.clone());
                            Change::Step(StepChange {
                                output: Some(payload.clone()),
                                ..StepChange::new(&s.name, StepState::Succeeded)
                            })
                        }
                        None => Change::Step(StepChange {
                            due_in_ms: Some(s.wait_ms.unwrap_or(0)),
                            waits_for: s.signal.clone(),
                            ..StepChange::new(&s.name, StepState::Waiting)
                        }),
                    },
                    _ => Change::Step(StepChange {
                        due_in_ms: Some(0),
                        ..StepChange::new(&s.name, StepState::Ready)
                    }),
                };
                set(steps, &mut state, &mut changes, change);
            }
            if !progressed {
                break;
            }
        }
        if steps.iter().all(|s| {
            matches!(
                state[s.name.as_str()],
                StepState::Succeeded | StepState::Skipped
            )
        }) {
            set(
                steps,
                &mut state,
                &mut changes,
                Change::Saga(SagaState::Completed),
            );
        }
        return changes;
    }

    if saga_state == SagaState::Compensating {
        // What has not started never will.
        for s in steps {
            if matches!(
                state[s.name.as_str()],
                StepState::Blocked | StepState::Ready | StepState::Waiting
            ) {
                set(
                    steps,
                    &mut state,
                    &mut changes,
                    Change::step(&s.name, StepState::NotRun),
                );
            }
        }
        // Undo a step once nothing that depends on it still needs undoing (reverse dependency
        // order; independent steps together).
        for s in steps {
            if state[s.name.as_str()] != StepState::Succeeded || !s.has_compensation {
                continue;
            }
            let dependents_settled =
                steps
                    .iter()
                    .filter(|d| d.depends_on.contains(&s.name))
                    .all(|d| match state[d.name.as_str()] {
                        StepState::Succeeded => !d.has_compensation,
                        other => !matches!(
                            other,
                            StepState::Running
                                | StepState::CompensateReady
                                | StepState::Compensating
                                | StepState::CompensationStuck
                        ),
                    });
            if dependents_settled {
                set(
                    steps,
                    &mut state,
                    &mut changes,
                    Change::Step(StepChange {
                        due_in_ms: Some(0),
                        ..StepChange::new(&s.name, StepState::CompensateReady)
                    }),
                );
            }
        }
        let busy = steps.iter().any(|s| {
            matches!(
                state[s.name.as_str()],
                StepState::Running | StepState::CompensateReady | StepState::Compensating
            )
        });
        let stuck = steps
            .iter()
            .any(|s| state[s.name.as_str()] == StepState::CompensationStuck);
        let undone_left = steps
            .iter()
            .any(|s| s.has_compensation && state[s.name.as_str()] == StepState::Succeeded);
        if !busy && stuck {
            set(
                steps,
                &mut state,
                &mut changes,
                Change::Saga(SagaState::Stuck),
            );
        } else if !busy && !undone_left {
            let end = if cancel_requested {
                SagaState::Cancelled
            } else {
                SagaState::Compensated
            };
            set(steps, &mut state, &mut changes, Change::Saga(end));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, after: &[&str], state: StepState) -> StepView {
        StepView {
            name: name.into(),
            kind: StepKind::Compensatable,
            depends_on: after.iter().map(|a| (*a).to_owned()).collect(),
            has_compensation: true,
            condition: None,
            state,
            output: None,
            wait_ms: None,
            signal: None,
            waits_for: None,
        }
    }

    fn steps_to(changes: &[Change], to: StepState) -> Vec<String> {
        let mut v: Vec<String> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Step(StepChange { name, state, .. }) if *state == to => Some(name.clone()),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    fn diamond(a: StepState, b: StepState, c: StepState, d: StepState) -> Vec<StepView> {
        vec![
            view("a", &[], a),
            view("b", &["a"], b),
            view("c", &["a"], c),
            view("d", &["b", "c"], d),
        ]
    }

    fn run(saga: SagaState, steps: &[StepView]) -> Vec<Change> {
        advance(saga, false, &Value::Null, steps, &HashMap::new())
    }

    #[test]
    fn a_diamond_goes_forward_with_siblings_together() {
        use StepState::*;
        let start = run(
            SagaState::Queued,
            &diamond(Blocked, Blocked, Blocked, Blocked),
        );
        assert_eq!(steps_to(&start, Ready), ["a"]);
        let after_a = run(
            SagaState::Running,
            &diamond(Succeeded, Blocked, Blocked, Blocked),
        );
        assert_eq!(steps_to(&after_a, Ready), ["b", "c"]);
        let after_b = run(
            SagaState::Running,
            &diamond(Succeeded, Succeeded, Running, Blocked),
        );
        assert!(after_b.is_empty(), "d waits for c: {after_b:?}");
        let done = run(
            SagaState::Running,
            &diamond(Succeeded, Succeeded, Succeeded, Succeeded),
        );
        assert_eq!(done, [Change::Saga(SagaState::Completed)]);
    }

    #[test]
    fn a_failure_compensates_in_reverse_dependency_order() {
        use StepState::*;
        let failed = run(
            SagaState::Running,
            &diamond(Succeeded, Succeeded, Succeeded, Failed),
        );
        assert_eq!(failed[0], Change::Saga(SagaState::Compensating));
        assert_eq!(
            steps_to(&failed, CompensateReady),
            ["b", "c"],
            "siblings together, a after them"
        );
        let one_left = run(
            SagaState::Compensating,
            &diamond(Succeeded, Compensated, Compensating, Failed),
        );
        assert!(
            steps_to(&one_left, CompensateReady).is_empty(),
            "a waits for c"
        );
        let last = run(
            SagaState::Compensating,
            &diamond(Succeeded, Compensated, Compensated, Failed),
        );
        assert_eq!(steps_to(&last, CompensateReady), ["a"]);
        let end = run(
            SagaState::Compensating,
            &diamond(Compensated, Compensated, Compensated, Failed),
        );
        assert_eq!(end, [Change::Saga(SagaState::Compensated)]);
    }

    #[test]
    fn unstarted_steps_never_run_and_running_ones_are_awaited() {
        use StepState::*;
        let c = run(
            SagaState::Running,
            &diamond(Succeeded, Failed, Running, Blocked),
        );
        assert_eq!(steps_to(&c, NotRun), ["d"]);
        assert!(
            steps_to(&c, CompensateReady).is_empty(),
            "a waits for the running c"
        );
        assert!(!c.contains(&Change::Saga(SagaState::Compensated)));
    }

    #[test]
    fn a_stuck_compensation_makes_the_saga_stuck_once_nothing_else_moves() {
        use StepState::*;
        let busy = run(
            SagaState::Compensating,
            &diamond(Succeeded, CompensationStuck, Compensating, Failed),
        );
        assert!(!busy.contains(&Change::Saga(SagaState::Stuck)));
        let stuck = run(
            SagaState::Compensating,
            &diamond(Succeeded, CompensationStuck, Compensated, Failed),
        );
        assert_eq!(
            stuck,
            [Change::Saga(SagaState::Stuck)],
            "a waits behind the stuck b"
        );
    }

    #[test]
    fn cancel_compensates_and_ends_cancelled() {
        use StepState::*;
        let steps = diamond(Succeeded, Ready, Ready, Blocked);
        let c = advance(
            SagaState::Running,
            true,
            &Value::Null,
            &steps,
            &HashMap::new(),
        );
        assert_eq!(c[0], Change::Saga(SagaState::Compensating));
        assert_eq!(steps_to(&c, NotRun), ["b", "c", "d"]);
        assert_eq!(steps_to(&c, CompensateReady), ["a"]);
        let end = advance(
            SagaState::Compensating,
            true,
            &Value::Null,
            &diamond(Compensated, NotRun, NotRun, NotRun),
            &HashMap::new(),
        );
        assert_eq!(end, [Change::Saga(SagaState::Cancelled)]);
    }

    #[test]
    fn conditions_skip_and_dependents_go_on() {
        use StepState::*;
        let mut steps = diamond(Succeeded, Blocked, Blocked, Blocked);
        steps[1].condition = Some(
            serde_json::from_value(serde_json::json!(
                {"compare": {"path": "/input/express", "op": "eq", "value": true}}
            ))
            .unwrap(),
        );
        let c = advance(
            SagaState::Running,
            false,
            &serde_json::json!({"express": false}),
            &steps,
            &HashMap::new(),
        );
        assert_eq!(steps_to(&c, Skipped), ["b"]);
        assert_eq!(steps_to(&c, Ready), ["c"]);
    }

    #[test]
    fn a_signal_that_came_first_completes_its_wait_at_once() {
        let mut wait = view("approval", &[], StepState::Blocked);
        wait.kind = StepKind::Signal;
        wait.signal = Some("approved".into());
        wait.wait_ms = Some(1000);
        let next = view("ship", &["approval"], StepState::Blocked);
        let signals = HashMap::from([("approved".to_owned(), serde_json::json!({"by": "ops"}))]);
        let c = advance(
            SagaState::Running,
            false,
            &Value::Null,
            &[wait.clone(), next.clone()],
            &signals,
        );
        assert_eq!(steps_to(&c, StepState::Succeeded), ["approval"]);
        assert_eq!(steps_to(&c, StepState::Ready), ["ship"]);
        let c = advance(
            SagaState::Running,
            false,
            &Value::Null,
            &[wait, next],
            &HashMap::new(),
        );
        assert!(
            matches!(&c[0], Change::Step(StepChange { state: StepState::Waiting, due_in_ms: Some(1000), waits_for: Some(s), .. }) if s == "approved")
        );
    }

    #[test]
    fn past_the_pivot_a_failure_has_no_way_back() {
        use StepState::*;
        let mut steps = vec![view("pay", &[], Succeeded), view("ship", &["pay"], Failed)];
        steps[0].kind = StepKind::Pivot;
        steps[0].has_compensation = false;
        assert_eq!(
            run(SagaState::Running, &steps),
            [Change::Saga(SagaState::Failed)]
        );
    }
}
