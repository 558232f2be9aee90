//! A saga's graph as data: the form every definition takes, whether built in Rust or read from
//! JSON or YAML, validated once when it is built.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use eventrail_core::RetryPolicy;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::DefinitionError;

/// What a step is, which decides what happens when it or a later step fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StepKind {
    /// Can be undone: when the saga fails, its compensation runs (in reverse dependency order).
    Compensatable,
    /// The point of no return: once it succeeded, the saga only goes forward. At most one per
    /// saga; every step that is not one of its ancestors must be retriable (or a timer).
    Pivot,
    /// Must eventually succeed: retried forward (its attempts are not capped) and never undone.
    Retriable,
    /// Waits until a duration after it became due; served by every runner.
    Timer,
    /// Waits for a named signal (an API call, an event) until a deadline, after which it fails;
    /// its output is the signal's payload. Served by every runner.
    Signal,
}

impl StepKind {
    /// The name stored in the database.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Compensatable => "compensatable",
            Self::Pivot => "pivot",
            Self::Retriable => "retriable",
            Self::Timer => "timer",
            Self::Signal => "signal",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "compensatable" => Self::Compensatable,
            "pivot" => Self::Pivot,
            "retriable" => Self::Retriable,
            "timer" => Self::Timer,
            "signal" => Self::Signal,
            _ => return None,
        })
    }

    /// Whether a handler runs it (timers and signal waits are built in).
    #[must_use]
    pub fn has_handler(self) -> bool {
        !matches!(self, Self::Timer | Self::Signal)
    }
}

/// A comparison of [`Condition::Compare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CompareOp {
    /// Equal JSON values.
    Eq,
    /// Different JSON values.
    Ne,
    /// A number greater than `value`.
    Gt,
    /// A number greater than or equal to `value`.
    Gte,
    /// A number less than `value`.
    Lt,
    /// A number less than or equal to `value`.
    Lte,
    /// The path exists and is not null (`value` is ignored).
    Exists,
    /// `value` is an array holding the path's value.
    In,
}

/// A condition on JSON values for definitions given as data: a step runs only when it holds,
/// otherwise it is skipped and its dependents go on.
///
/// Paths are JSON pointers into `{"input": <saga input>, "outputs": {<step>: <output>}}`,
/// for example `/input/amount` or `/outputs/charge/receipt`. A path that does not exist makes a
/// comparison false (and `exists` false).
///
/// ```
/// # use eventrail_saga::Condition;
/// let c: Condition = serde_json::from_str(
///     r#"{"all": [{"compare": {"path": "/input/amount", "op": "gt", "value": 100}},
///                {"not": {"compare": {"path": "/input/country", "op": "eq", "value": "CH"}}}]}"#,
/// ).unwrap();
/// let scope = serde_json::json!({"input": {"amount": 150, "country": "FR"}, "outputs": {}});
/// assert!(c.holds(&scope));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Condition {
    /// Every condition holds.
    All(Vec<Condition>),
    /// At least one condition holds.
    Any(Vec<Condition>),
    /// The condition does not hold.
    Not(Box<Condition>),
    /// The value at `path` compared with `value`.
    Compare {
        /// A JSON pointer into `{"input", "outputs"}`.
        path: String,
        /// The comparison.
        op: CompareOp,
        /// The value compared with.
        #[serde(default)]
        value: Value,
    },
}

impl Condition {
    /// Whether it holds over `scope` (`{"input": .., "outputs": {..}}`).
    #[must_use]
    pub fn holds(&self, scope: &Value) -> bool {
        match self {
            Self::All(all) => all.iter().all(|c| c.holds(scope)),
            Self::Any(any) => any.iter().any(|c| c.holds(scope)),
            Self::Not(c) => !c.holds(scope),
            Self::Compare { path, op, value } => {
                let Some(found) = scope.pointer(path) else {
                    return false;
                };
                let numbers = || Some((found.as_f64()?, value.as_f64()?));
                match op {
                    CompareOp::Eq => found == value,
                    CompareOp::Ne => found != value,
                    CompareOp::Exists => !found.is_null(),
                    CompareOp::In => value.as_array().is_some_and(|a| a.contains(found)),
                    CompareOp::Gt => numbers().is_some_and(|(a, b)| a > b),
                    CompareOp::Gte => numbers().is_some_and(|(a, b)| a >= b),
                    CompareOp::Lt => numbers().is_some_and(|(a, b)| a < b),
                    CompareOp::Lte => numbers().is_some_and(|(a, b)| a <= b),
                }
            }
        }
    }

    fn check_paths(&self, step: &str) -> Result<(), DefinitionError> {
        match self {
            Self::All(cs) | Self::Any(cs) => cs.iter().try_for_each(|c| c.check_paths(step)),
            Self::Not(c) => c.check_paths(step),
            Self::Compare { path, .. } => {
                if path.starts_with("/input") || path.starts_with("/outputs/") {
                    Ok(())
                } else {
                    Err(DefinitionError::InvalidCondition {
                        step: step.to_owned(),
                        reason: format!(
                            "path {path:?} is neither under /input nor /outputs/<step>"
                        ),
                    })
                }
            }
        }
    }
}

/// Retries of a step as data (milliseconds), see [`RetryPolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// Attempts before the step fails (ignored for retriable steps, which are never given up).
    pub max_attempts: u32,
    /// Wait after the first failure, doubled after each further one, jittered.
    pub initial_backoff_ms: u64,
    /// Longest wait between attempts.
    pub max_backoff_ms: u64,
}

impl From<RetryPolicy> for RetrySettings {
    fn from(p: RetryPolicy) -> Self {
        Self {
            max_attempts: p.max_attempts.max(1),
            initial_backoff_ms: duration_ms(p.initial_backoff),
            max_backoff_ms: duration_ms(p.max_backoff),
        }
    }
}

impl RetrySettings {
    pub(crate) fn policy(self) -> RetryPolicy {
        RetryPolicy::new(
            self.max_attempts.max(1),
            Duration::from_millis(self.initial_backoff_ms),
            Duration::from_millis(self.max_backoff_ms),
        )
    }
}

pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One step of a [`SagaDocument`].
///
/// In JSON: `{"name": "charge", "type": "charge-card", "kind": "compensatable",
/// "after": ["reserve"], "when": {..}, "timeout_ms": 5000, "retry": {..}}`; a timer is
/// `{"name": "cool-off", "kind": "timer", "duration_ms": 60000}` and a signal wait
/// `{"name": "approval", "kind": "signal", "signal": "approved", "deadline_ms": 86400000}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct StepDocument {
    /// Unique within the saga.
    pub name: String,
    /// The handler that runs it: a step type registered by some runner. Required for
    /// compensatable, pivot and retriable steps; absent for timers and signal waits.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// Its kind (default: compensatable).
    #[serde(default = "default_kind")]
    pub kind: StepKind,
    /// Whether a compensatable step has something to undo (default: true). A step with
    /// nothing to undo (a lookup, a validation) may say false.
    #[serde(default = "yes")]
    pub compensate: bool,
    /// The steps it depends on: it runs after they succeeded (or were skipped), and sees their
    /// outputs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// Runs only when this holds; otherwise skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Condition>,
    /// Longest time one attempt (or one compensation attempt) may take.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries of the action.
    #[serde(default = "default_retry")]
    pub retry: RetrySettings,
    /// Retries of the compensation before it is declared stuck.
    #[serde(default = "default_compensation_retry")]
    pub compensation_retry: RetrySettings,
    /// A timer's length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The signal a signal wait waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// How long a signal wait (or a reply an action waits for) may take before it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

fn default_kind() -> StepKind {
    StepKind::Compensatable
}
fn yes() -> bool {
    true
}
fn default_timeout_ms() -> u64 {
    30_000
}
fn default_retry() -> RetrySettings {
    RetryPolicy::new(3, Duration::from_millis(100), Duration::from_secs(10)).into()
}
fn default_compensation_retry() -> RetrySettings {
    RetryPolicy::new(5, Duration::from_millis(200), Duration::from_secs(30)).into()
}

impl StepDocument {
    /// A step of `kind` named `name` run by `handler` (none for timers and signal waits), with
    /// the default settings.
    #[must_use]
    pub fn new(name: impl Into<String>, kind: StepKind, handler: Option<String>) -> Self {
        Self {
            name: name.into(),
            handler,
            kind,
            compensate: kind == StepKind::Compensatable,
            after: Vec::new(),
            when: None,
            timeout_ms: default_timeout_ms(),
            retry: default_retry(),
            compensation_retry: default_compensation_retry(),
            duration_ms: None,
            signal: None,
            deadline_ms: None,
        }
    }

    /// Whether a compensation runs for it when the saga compensates after it succeeded.
    #[must_use]
    pub fn has_compensation(&self) -> bool {
        self.kind == StepKind::Compensatable && self.compensate
    }
}

/// A saga definition as data: a name, a version and a graph of steps. Built by
/// [`SagaDefinition`](crate::SagaDefinition) for definitions in Rust, or read with
/// [`SagaDocument::from_json`] (and `from_yaml`, feature `yaml`) for definitions whose step
/// types are implemented by handlers registered in code, possibly in several services.
///
/// Every constructor validates the graph: duplicate, unknown and empty names, cycles, more than
/// one pivot, steps after a pivot that could need compensation, missing handlers or timer
/// settings are typed [`DefinitionError`]s.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SagaDocument {
    name: String,
    version: u32,
    steps: Vec<StepDocument>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocument {
    name: String,
    version: u32,
    steps: Vec<StepDocument>,
}

impl<'de> Deserialize<'de> for SagaDocument {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawDocument::deserialize(d)?;
        Self::new(raw.name, raw.version, raw.steps).map_err(serde::de::Error::custom)
    }
}

impl SagaDocument {
    /// A validated document.
    ///
    /// # Errors
    /// A [`DefinitionError`] naming what is wrong with the graph.
    pub fn new(
        name: impl Into<String>,
        version: u32,
        steps: Vec<StepDocument>,
    ) -> Result<Self, DefinitionError> {
        let doc = Self {
            name: name.into(),
            version,
            steps,
        };
        doc.validate()?;
        Ok(doc)
    }

    /// Reads and validates a JSON document.
    ///
    /// # Errors
    /// [`DefinitionError::Parse`] for malformed JSON, or what [`SagaDocument::new`] refuses.
    pub fn from_json(json: &str) -> Result<Self, DefinitionError> {
        serde_json::from_str::<RawDocument>(json)
            .map_err(|e| DefinitionError::Parse(e.to_string()))
            .and_then(|r| Self::new(r.name, r.version, r.steps))
    }

    /// Reads and validates a YAML document (the same fields as JSON).
    ///
    /// # Errors
    /// [`DefinitionError::Parse`] for malformed YAML, or what [`SagaDocument::new`] refuses.
    #[cfg(feature = "yaml")]
    #[cfg_attr(docsrs, doc(cfg(feature = "yaml")))]
    pub fn from_yaml(yaml: &str) -> Result<Self, DefinitionError> {
        // Through JSON values, so that YAML takes exactly the JSON form (a condition is a
        // one-key map, not a YAML tag).
        let value: Value =
            serde_norway::from_str(yaml).map_err(|e| DefinitionError::Parse(e.to_string()))?;
        serde_json::from_value::<RawDocument>(value)
            .map_err(|e| DefinitionError::Parse(e.to_string()))
            .and_then(|r| Self::new(r.name, r.version, r.steps))
    }

    /// The definition's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its version.
    #[must_use]
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Its steps, in the order given.
    #[must_use]
    pub fn steps(&self) -> &[StepDocument] {
        &self.steps
    }

    /// The handler names its steps need.
    #[must_use]
    pub fn handlers(&self) -> Vec<&str> {
        let mut h: Vec<&str> = self
            .steps
            .iter()
            .filter_map(|s| s.handler.as_deref())
            .collect();
        h.sort_unstable();
        h.dedup();
        h
    }

    /// Its JSON form.
    #[must_use]
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    fn validate(&self) -> Result<(), DefinitionError> {
        if self.name.trim().is_empty() || self.name.len() > 100 {
            return Err(DefinitionError::InvalidName(self.name.clone()));
        }
        if self.steps.is_empty() {
            return Err(DefinitionError::NoSteps);
        }
        let mut names = HashSet::new();
        for s in &self.steps {
            if s.name.trim().is_empty() || s.name.len() > 100 {
                return Err(DefinitionError::InvalidName(s.name.clone()));
            }
            if !names.insert(s.name.as_str()) {
                return Err(DefinitionError::DuplicateStep(s.name.clone()));
            }
        }
        for s in &self.steps {
            self.validate_step(s, &names)?;
        }
        let order = self.topological_order()?;
        self.validate_pivot(&order)
    }

    fn validate_step(
        &self,
        s: &StepDocument,
        names: &HashSet<&str>,
    ) -> Result<(), DefinitionError> {
        let invalid = |reason: &str| DefinitionError::InvalidStep {
            step: s.name.clone(),
            reason: reason.to_owned(),
        };
        for d in &s.after {
            if d == &s.name {
                return Err(DefinitionError::Cycle(vec![s.name.clone()]));
            }
            if !names.contains(d.as_str()) {
                return Err(DefinitionError::UnknownDependency {
                    step: s.name.clone(),
                    dependency: d.clone(),
                });
            }
        }
        match (s.kind.has_handler(), &s.handler) {
            (true, None) => return Err(invalid("needs a handler (\"type\")")),
            (false, Some(_)) => return Err(invalid("a timer or signal wait takes no handler")),
            (true, Some(h)) if h.trim().is_empty() => return Err(invalid("empty handler name")),
            _ => {}
        }
        match s.kind {
            StepKind::Timer if s.duration_ms.is_none() => Err(invalid("a timer needs duration_ms")),
            StepKind::Signal if s.signal.as_deref().is_none_or(str::is_empty) => {
                Err(invalid("a signal wait needs a signal name"))
            }
            StepKind::Signal if s.deadline_ms.is_none() => {
                Err(invalid("a signal wait needs deadline_ms"))
            }
            _ if s.retry.max_attempts == 0 || s.compensation_retry.max_attempts == 0 => {
                Err(invalid("max_attempts must be at least 1"))
            }
            _ if s.timeout_ms == 0 => Err(invalid("timeout_ms must be positive")),
            _ => s.when.as_ref().map_or(Ok(()), |c| c.check_paths(&s.name)),
        }
    }

    /// Kahn's algorithm: the steps in an order where every step follows its dependencies, or
    /// the steps left on a cycle.
    fn topological_order(&self) -> Result<Vec<&str>, DefinitionError> {
        let mut pending: HashMap<&str, usize> = self
            .steps
            .iter()
            .map(|s| (s.name.as_str(), s.after.len()))
            .collect();
        let mut order = Vec::with_capacity(self.steps.len());
        let mut ready: Vec<&str> = self
            .steps
            .iter()
            .filter(|s| s.after.is_empty())
            .map(|s| s.name.as_str())
            .collect();
        while let Some(n) = ready.pop() {
            order.push(n);
            for s in self.steps.iter().filter(|s| s.after.iter().any(|d| d == n)) {
                let left = pending
                    .get_mut(s.name.as_str())
                    .expect("every step is counted");
                *left -= 1;
                if *left == 0 {
                    ready.push(&s.name);
                }
            }
        }
        if order.len() == self.steps.len() {
            Ok(order)
        } else {
            let mut cycle: Vec<String> = pending
                .into_iter()
                .filter(|(_, left)| *left > 0)
                .map(|(n, _)| n.to_owned())
                .collect();
            cycle.sort();
            Err(DefinitionError::Cycle(cycle))
        }
    }

    fn validate_pivot(&self, order: &[&str]) -> Result<(), DefinitionError> {
        let pivots: Vec<&StepDocument> = self
            .steps
            .iter()
            .filter(|s| s.kind == StepKind::Pivot)
            .collect();
        let pivot = match pivots.as_slice() {
            [] => return Ok(()),
            [p] => p,
            [a, b, ..] => {
                return Err(DefinitionError::SeveralPivots(
                    a.name.clone(),
                    b.name.clone(),
                ));
            }
        };
        // Ancestors of the pivot, by walking dependencies in topological order.
        let by_name: BTreeMap<&str, &StepDocument> =
            self.steps.iter().map(|s| (s.name.as_str(), s)).collect();
        let mut ancestors: HashSet<&str> = HashSet::new();
        let mut stack: Vec<&str> = pivot.after.iter().map(String::as_str).collect();
        while let Some(n) = stack.pop() {
            if ancestors.insert(n) {
                stack.extend(by_name[n].after.iter().map(String::as_str));
            }
        }
        for n in order {
            let s = by_name[n];
            if s.name == pivot.name || ancestors.contains(n) {
                continue;
            }
            if !matches!(s.kind, StepKind::Retriable | StepKind::Timer) {
                return Err(DefinitionError::NotRetriableAfterPivot {
                    step: s.name.clone(),
                    pivot: pivot.name.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, after: &[&str]) -> StepDocument {
        let mut s = StepDocument::new(name, StepKind::Compensatable, Some(format!("h-{name}")));
        s.after = after.iter().map(|a| (*a).to_owned()).collect();
        s
    }

    #[test]
    fn graphs_are_validated() {
        assert!(SagaDocument::new("d", 1, vec![step("a", &[]), step("b", &["a"])]).is_ok());
        assert!(matches!(
            SagaDocument::new("d", 1, vec![step("a", &[]), step("a", &[])]),
            Err(DefinitionError::DuplicateStep(n)) if n == "a"
        ));
        assert!(matches!(
            SagaDocument::new("d", 1, vec![step("a", &["zz"])]),
            Err(DefinitionError::UnknownDependency { dependency, .. }) if dependency == "zz"
        ));
        assert!(matches!(
            SagaDocument::new("d", 1, vec![step("a", &["c"]), step("b", &["a"]), step("c", &["b"]), step("x", &[])]),
            Err(DefinitionError::Cycle(c)) if c == ["a", "b", "c"]
        ));
        assert!(matches!(
            SagaDocument::new("d", 1, vec![step("a", &["a"])]),
            Err(DefinitionError::Cycle(_))
        ));
        assert!(matches!(
            SagaDocument::new("d", 1, vec![]),
            Err(DefinitionError::NoSteps)
        ));
    }

    #[test]
    fn after_a_pivot_only_retriable_steps() {
        let mut pivot = step("pay", &["reserve"]);
        pivot.kind = StepKind::Pivot;
        let mut ship = step("ship", &["pay"]);
        ship.kind = StepKind::Retriable;
        let ok = SagaDocument::new(
            "d",
            1,
            vec![step("reserve", &[]), pivot.clone(), ship.clone()],
        );
        assert!(ok.is_ok(), "{ok:?}");
        // A compensatable step after (or beside) the pivot could need undoing past it.
        let bad = SagaDocument::new(
            "d",
            1,
            vec![step("reserve", &[]), pivot.clone(), step("mail", &["pay"])],
        );
        assert!(
            matches!(bad, Err(DefinitionError::NotRetriableAfterPivot { step, .. }) if step == "mail")
        );
        let beside = SagaDocument::new(
            "d",
            1,
            vec![step("reserve", &[]), pivot.clone(), step("other", &[])],
        );
        assert!(matches!(
            beside,
            Err(DefinitionError::NotRetriableAfterPivot { .. })
        ));
        let mut second = pivot.clone();
        second.name = "pay2".into();
        assert!(matches!(
            SagaDocument::new("d", 1, vec![step("reserve", &[]), pivot, second]),
            Err(DefinitionError::SeveralPivots(..))
        ));
    }

    #[test]
    fn json_documents_parse_with_defaults_and_refuse_unknown_fields() {
        let doc = SagaDocument::from_json(
            r#"{"name": "order", "version": 2, "steps": [
                {"name": "reserve", "type": "reserve-stock"},
                {"name": "wait", "kind": "timer", "duration_ms": 10, "after": ["reserve"]},
                {"name": "approval", "kind": "signal", "signal": "approved", "deadline_ms": 1000, "after": ["reserve"]},
                {"name": "charge", "type": "charge-card", "after": ["wait", "approval"],
                 "when": {"compare": {"path": "/input/amount", "op": "gt", "value": 0}}}
            ]}"#,
        )
        .unwrap();
        assert_eq!(doc.version(), 2);
        assert_eq!(doc.handlers(), ["charge-card", "reserve-stock"]);
        assert!(doc.steps()[0].has_compensation());
        let round: SagaDocument = serde_json::from_value(doc.to_json()).unwrap();
        assert_eq!(round, doc);
        assert!(matches!(
            SagaDocument::from_json(
                r#"{"name": "x", "version": 1, "steps": [{"name": "a", "type": "t", "colour": 1}]}"#
            ),
            Err(DefinitionError::Parse(_))
        ));
        assert!(matches!(
            SagaDocument::from_json(r#"{"name": "x", "version": 1, "steps": [{"name": "a"}]}"#),
            Err(DefinitionError::InvalidStep { .. })
        ));
        assert!(matches!(
            SagaDocument::from_json(
                r#"{"name": "x", "version": 1, "steps": [{"name": "t", "kind": "timer"}]}"#
            ),
            Err(DefinitionError::InvalidStep { .. })
        ));
        assert!(matches!(
            SagaDocument::from_json(
                r#"{"name": "x", "version": 1, "steps": [{"name": "a", "type": "t", "when": {"compare": {"path": "/elsewhere", "op": "eq"}}}]}"#
            ),
            Err(DefinitionError::InvalidCondition { .. })
        ));
    }

    #[test]
    fn conditions_compare_json_values() {
        let scope =
            serde_json::json!({"input": {"n": 5, "tags": "a"}, "outputs": {"s": {"ok": true}}});
        let c = |j: Value| {
            serde_json::from_value::<Condition>(j)
                .unwrap()
                .holds(&scope)
        };
        assert!(c(
            serde_json::json!({"compare": {"path": "/input/n", "op": "gte", "value": 5}})
        ));
        assert!(!c(
            serde_json::json!({"compare": {"path": "/input/n", "op": "lt", "value": 5}})
        ));
        assert!(c(
            serde_json::json!({"compare": {"path": "/outputs/s/ok", "op": "eq", "value": true}})
        ));
        assert!(!c(
            serde_json::json!({"compare": {"path": "/outputs/missing", "op": "exists"}})
        ));
        assert!(c(
            serde_json::json!({"compare": {"path": "/input/tags", "op": "in", "value": ["a", "b"]}})
        ));
        assert!(c(
            serde_json::json!({"any": [{"compare": {"path": "/input/n", "op": "eq", "value": 1}}, {"not": {"compare": {"path": "/input/n", "op": "eq", "value": 1}}}]})
        ));
        assert!(
            !c(serde_json::json!({"compare": {"path": "/input/tags", "op": "gt", "value": 1}})),
            "strings are not numbers"
        );
    }
}
