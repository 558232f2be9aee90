//! `eventrail saga ...`: list, show and operate sagas.

use std::io::Write;
use std::time::Duration;

use clap::Subcommand;
use eventrail_saga::{SagaAdmin, SagaState};
use uuid::Uuid;

use crate::print_table;

/// Saga commands.
#[derive(Debug, Subcommand)]
pub enum SagaAction {
    /// Sagas, newest first.
    List {
        /// Only sagas in this state (queued, running, compensating, completed, compensated,
        /// failed, cancelled, stuck).
        #[arg(long)]
        state: Option<String>,
        /// Only sagas of this definition.
        #[arg(long)]
        definition: Option<String>,
        /// Most rows to show.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// One saga: each step's state, attempts, error and timing, and the graph.
    Show {
        /// The saga's id.
        id: Uuid,
    },
    /// Retry the stuck compensations of a stuck saga.
    Retry {
        /// The saga's id.
        id: Uuid,
    },
    /// Cancel a running saga: its completed steps are compensated.
    Cancel {
        /// The saga's id.
        id: Uuid,
    },
    /// Mark a stuck compensation as done (you undid it by hand); the compensation goes on.
    SkipStep {
        /// The saga's id.
        id: Uuid,
        /// The stuck step.
        step: String,
    },
    /// Give a saga up where it stands: it ends failed and nothing more runs.
    Abort {
        /// The saga's id.
        id: Uuid,
    },
    /// Definition versions with their in-flight instances and those no live runner can run.
    Definitions {
        /// A runner counts as live when it heartbeat within this many seconds.
        #[arg(long, default_value_t = 30.0)]
        live_within: f64,
    },
}

pub(crate) async fn saga(
    out: &mut impl Write,
    admin: &SagaAdmin,
    action: SagaAction,
) -> anyhow::Result<()> {
    match action {
        SagaAction::List {
            state,
            definition,
            limit,
        } => {
            let state = state
                .map(|s| {
                    SagaState::parse(&s).ok_or_else(|| anyhow::anyhow!("unknown saga state {s:?}"))
                })
                .transpose()?;
            let sagas = admin.list(state, definition.as_deref(), limit).await?;
            let rows: Vec<Vec<String>> = sagas
                .iter()
                .map(|s| {
                    vec![
                        s.id.to_string(),
                        format!("{}@{}", s.definition, s.version),
                        s.state.clone(),
                        s.created_at.clone(),
                        s.updated_at.clone(),
                        s.last_error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print_table(
                out,
                &["ID", "DEFINITION", "STATE", "STARTED", "UPDATED", "ERROR"],
                &rows,
            )?;
            writeln!(out, "({} sagas)", sagas.len())?;
        }
        SagaAction::Show { id } => {
            let d = admin.show(id).await?;
            writeln!(
                out,
                "saga {} ({}@{}): {}",
                d.saga.id, d.saga.definition, d.saga.version, d.saga.state
            )?;
            writeln!(
                out,
                "started {}, updated {}",
                d.saga.created_at, d.saga.updated_at
            )?;
            if let Some(e) = &d.saga.last_error {
                writeln!(out, "error: {e}")?;
            }
            writeln!(out, "input: {}", d.input)?;
            let rows: Vec<Vec<String>> = d
                .steps
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        s.kind.clone(),
                        if s.depends_on.is_empty() {
                            "-".into()
                        } else {
                            s.depends_on.join(",")
                        },
                        s.state.clone(),
                        format!("{}/{}", s.attempts, s.compensation_attempts),
                        s.started_at.clone().unwrap_or_else(|| "-".into()),
                        s.finished_at
                            .clone()
                            .or_else(|| s.compensated_at.clone())
                            .unwrap_or_else(|| "-".into()),
                        s.last_error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print_table(
                out,
                &[
                    "STEP",
                    "KIND",
                    "AFTER",
                    "STATE",
                    "ATTEMPTS/UNDO",
                    "STARTED",
                    "FINISHED",
                    "LAST ERROR",
                ],
                &rows,
            )?;
        }
        SagaAction::Retry { id } => writeln!(out, "saga {id}: {}", admin.retry(id).await?)?,
        SagaAction::Cancel { id } => writeln!(out, "saga {id}: {}", admin.cancel(id).await?)?,
        SagaAction::SkipStep { id, step } => {
            writeln!(out, "saga {id}: {}", admin.skip_step(id, &step).await?)?;
        }
        SagaAction::Abort { id } => writeln!(out, "saga {id}: {}", admin.abort(id).await?)?,
        SagaAction::Definitions { live_within } => {
            let defs = admin
                .definitions(Duration::from_secs_f64(live_within.max(0.0)))
                .await?;
            let rows: Vec<Vec<String>> = defs
                .iter()
                .map(|d| {
                    vec![
                        d.name.clone(),
                        d.version.to_string(),
                        d.in_flight.to_string(),
                        d.stranded.to_string(),
                        d.missing_handlers.join(","),
                    ]
                })
                .collect();
            print_table(
                out,
                &[
                    "DEFINITION",
                    "VERSION",
                    "IN FLIGHT",
                    "NO LIVE RUNNER",
                    "MISSING HANDLERS",
                ],
                &rows,
            )?;
        }
    }
    Ok(())
}
