//! The `eventrail` operator command, as a library so that its commands can be tested.
//!
//! ```text
//! eventrail migrate [--schema S] [--print-sql] [--roles PREFIX] [--partition-size N] | migrate info
//! eventrail stream read <stream> [--from VERSION] [--backward] [--limit N]
//! eventrail category read <category> [--from POSITION] [--limit N]
//! eventrail status
//! eventrail consumer rewind <name> --to POSITION | reset <name> | pause <name> | resume <name> | skip <name>
//! eventrail gaps [--consumer NAME] [--limit N]
//! eventrail outbox status
//! eventrail outbox dead list [--limit N] | requeue [ID..|--all] | purge [ID..|--all]
//! ```
//! The database comes from `--database-url` or `DATABASE_URL`, a libpq URL: TLS from its
//! `sslmode` and `sslrootcert`, `connect_timeout` in seconds (default 10).

use std::io::Write;

use anyhow::Context;
use clap::{Parser, Subcommand};
use eventrail_core::{
    Category, EventData, EventStore, ReadAllOptions, ReadStreamOptions, RecordedEvent, StreamName,
};
use eventrail_outbox::OutboxAdmin;
use eventrail_saga::{SagaAdmin, SagaOptions};
pub use saga::SagaAction;

mod saga;
use eventrail_store_postgres::{EventrailConfig, Migrator, PgConnectOptions, PgEventStore};
use eventrail_worker::{Status, WorkerAdmin};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// eventrail: operate a PostgreSQL event store.
#[derive(Debug, Parser)]
#[command(name = "eventrail", version, about)]
pub struct Cli {
    /// PostgreSQL URL, e.g. postgres://user@host:5432/db
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Schema of the event store (ignored with --config, which names its own).
    #[arg(long, default_value = "eventrail", global = true)]
    pub schema: String,
    /// A JSON configuration file (schema, channels, table names, database URL): see
    /// `EventrailConfig`. The --database-url option still wins over its URL.
    #[arg(long, env = "EVENTRAIL_CONFIG", global = true)]
    pub config: Option<std::path::PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the embedded migrations (or print them).
    Migrate {
        /// Print the SQL instead of applying it, for your own migration tool.
        #[arg(long)]
        print_sql: bool,
        /// Also create least-privilege roles PREFIX_reader, PREFIX_writer, PREFIX_worker and
        /// PREFIX_admin.
        #[arg(long, value_name = "PREFIX")]
        roles: Option<String>,
        /// Then partition the events table by position range, N positions per partition (for
        /// very large logs; rewrites the log under an exclusive lock: see the README).
        #[arg(long, value_name = "N")]
        partition_size: Option<u64>,
        /// `info`: list applied, pending and unknown migrations instead.
        #[command(subcommand)]
        action: Option<MigrateAction>,
    },
    /// Inspect a stream.
    Stream {
        /// What to do with it.
        #[command(subcommand)]
        action: StreamAction,
    },
    /// Inspect a category.
    Category {
        /// What to do with it.
        #[command(subcommand)]
        action: CategoryAction,
    },
    /// Workers (heartbeat age, leader, stale), assignments, checkpoints, lag, parked errors.
    Status {
        /// The workers' heartbeat timeout in seconds: a worker (or leader) whose heartbeat is
        /// older is shown as stale.
        #[arg(long, default_value_t = 5.0)]
        heartbeat_timeout: f64,
    },
    /// Operate a consumer.
    Consumer {
        /// What to do with it.
        #[command(subcommand)]
        action: ConsumerAction,
    },
    /// Holes the consumers skipped, with their evidence (newest first).
    Gaps {
        /// Only this consumer's.
        #[arg(long)]
        consumer: Option<String>,
        /// Most rows to show.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// The transactional outbox: backlog and dead letters.
    Outbox {
        /// What to do.
        #[command(subcommand)]
        action: OutboxAction,
    },
    /// Sagas: list, show, retry, cancel, skip a stuck step, abort; definitions.
    Saga {
        /// What to do.
        #[command(subcommand)]
        action: SagaAction,
    },
}

/// Migration commands.
#[derive(Debug, Subcommand)]
pub enum MigrateAction {
    /// Applied, pending, other components' and unknown migrations, with their checksums.
    Info,
}

/// Outbox commands.
#[derive(Debug, Subcommand)]
pub enum OutboxAction {
    /// Pending messages, the oldest pending age, in-flight leases, dead letters by destination.
    Status,
    /// Dead messages (their partition keys are parked).
    Dead {
        /// What to do with them.
        #[command(subcommand)]
        action: DeadAction,
    },
}

/// Dead-letter commands.
#[derive(Debug, Subcommand)]
pub enum DeadAction {
    /// List dead messages, oldest first.
    List {
        /// Most rows to show.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Make dead messages pending again with fresh attempts; their keys resume.
    Requeue {
        /// Message ids.
        #[arg(required_unless_present = "all")]
        ids: Vec<uuid::Uuid>,
        /// Every dead message.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Delete dead messages; the later messages of their keys then flow.
    Purge {
        /// Message ids.
        #[arg(required_unless_present = "all")]
        ids: Vec<uuid::Uuid>,
        /// Every dead message.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

/// Consumer commands.
#[derive(Debug, Subcommand)]
pub enum ConsumerAction {
    /// Move the checkpoint to a position: events after it are handled again.
    Rewind {
        /// The consumer.
        name: String,
        /// The new checkpoint (global position).
        #[arg(long)]
        to: u64,
        /// Allow a position beyond the head of the log (the consumer skips what is appended up
        /// to there).
        #[arg(long)]
        force: bool,
    },
    /// Rewind to the start and clear failures.
    Reset {
        /// The consumer.
        name: String,
    },
    /// Stop taking batches of the consumer.
    Pause {
        /// The consumer.
        name: String,
    },
    /// Resume a paused or parked consumer.
    Resume {
        /// The consumer.
        name: String,
    },
    /// Skip exactly the event a parked consumer is parked at (a poison event or an undecodable
    /// row) and resume it after that event; audited in `gaps` with reason `poison`. Refused
    /// unless the consumer is parked at an event.
    Skip {
        /// The consumer.
        name: String,
    },
}

/// Stream commands.
#[derive(Debug, Subcommand)]
pub enum StreamAction {
    /// Print a stream's events as a table.
    Read {
        /// The stream, e.g. account-42.
        name: String,
        /// First version to show.
        #[arg(long)]
        from: Option<u64>,
        /// Newest first.
        #[arg(long)]
        backward: bool,
        /// Most events to show; the output says when more follow and where to continue.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// Category commands.
#[derive(Debug, Subcommand)]
pub enum CategoryAction {
    /// Print a category's events as a table.
    Read {
        /// The category, e.g. account.
        name: String,
        /// First global position to show.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Most events to show; the output says when more follow and where to continue.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// Runs one command, writing its output to `out`.
///
/// # Errors
/// Bad input (a stream name, a schema), an unreachable database, a failed migration.
pub async fn run(cli: Cli, out: &mut impl Write) -> anyhow::Result<()> {
    let config = match &cli.config {
        Some(path) => EventrailConfig::from_json_file(path)?,
        None => EventrailConfig::builder()
            .schema(cli.schema.as_str())
            .build()?,
    };
    let url = cli.database_url.as_deref();
    match cli.command {
        Command::Migrate {
            action: Some(MigrateAction::Info),
            ..
        } => {
            let migrator = migrator(&config)?;
            let (client, connection) = connection(url, &config).await?;
            tokio::spawn(connection);
            writeln!(
                out,
                "{:>7}  {:<22} {:<16} {:<32} APPLIED AT",
                "VERSION", "NAME", "STATE", "CHECKSUM"
            )?;
            for m in migrator.info(&client).await? {
                writeln!(
                    out,
                    "{:>7}  {:<22} {:<16} {:<32} {}",
                    m.version,
                    m.name,
                    m.state.as_str(),
                    m.applied_checksum.or(m.checksum).unwrap_or_default(),
                    m.applied_at.unwrap_or_else(|| "-".into())
                )?;
            }
        }
        Command::Migrate {
            print_sql: true,
            roles,
            partition_size,
            action: None,
        } => {
            let migrator = migrator(&config)?;
            writeln!(out, "{}", migrator.print_sql())?;
            if let Some(size) = partition_size {
                writeln!(out, "{}", migrator.partition_sql(size)?)?;
            }
            if let Some(prefix) = roles {
                writeln!(out, "{}", migrator.roles_sql(&prefix)?)?;
            }
        }
        Command::Migrate {
            print_sql: false,
            roles,
            partition_size,
            action: None,
        } => {
            let migrator = migrator(&config)?;
            // A bad prefix is refused before anything is applied.
            if let Some(prefix) = &roles {
                migrator.roles_sql(prefix)?;
            }
            let (mut client, connection) = connection(url, &config).await?;
            tokio::spawn(connection);
            let applied = migrator.run(&mut client).await?;
            if applied.is_empty() {
                writeln!(out, "schema {} is up to date", config.schema())?;
            } else {
                writeln!(
                    out,
                    "applied migrations {applied:?} to schema {}",
                    config.schema()
                )?;
            }
            if let Some(size) = partition_size {
                if migrator.partition_by_position(&mut client, size).await? {
                    writeln!(
                        out,
                        "partitioned the events of schema {} by position, {size} per partition",
                        config.schema()
                    )?;
                } else {
                    writeln!(
                        out,
                        "the events of schema {} are partitioned already",
                        config.schema()
                    )?;
                }
            }
            if let Some(prefix) = roles {
                migrator.install_roles(&mut client, &prefix).await?;
                writeln!(
                    out,
                    "roles {prefix}_reader, {prefix}_writer, {prefix}_worker, {prefix}_admin are in place"
                )?;
            }
        }
        Command::Stream {
            action:
                StreamAction::Read {
                    name,
                    from,
                    backward,
                    limit,
                },
        } => {
            let stream: StreamName = name.parse()?;
            let store = store(url, &config).await?;
            // One row more than shown tells whether the stream goes on.
            let mut options = ReadStreamOptions::default().max_count(limit.saturating_add(1));
            if backward {
                options = options.backward();
            }
            if let Some(v) = from {
                options = options.from_version(v);
            }
            let mut events = store.read_stream(&stream, options).await?;
            let more = events.len() > limit;
            events.truncate(limit);
            print_events(out, &events)?;
            if more {
                let next = events.last().map(|last| {
                    if backward {
                        last.stream_version.saturating_sub(1)
                    } else {
                        last.stream_version + 1
                    }
                });
                print_more(out, next)?;
            }
        }
        Command::Category {
            action: CategoryAction::Read { name, from, limit },
        } => {
            let category: Category = name.parse()?;
            let store = store(url, &config).await?;
            let options = ReadAllOptions::default()
                .from_position(from)
                .max_count(limit.saturating_add(1));
            let mut events = store.read_category(&category, options).await?;
            let more = events.len() > limit;
            events.truncate(limit);
            print_events(out, &events)?;
            if more {
                print_more(out, events.last().map(|last| last.global_position + 1))?;
            }
        }
        Command::Status { heartbeat_timeout } => print_status(
            out,
            &admin(url, &config)
                .await?
                .heartbeat_timeout(
                    std::time::Duration::try_from_secs_f64(heartbeat_timeout)
                        .context("--heartbeat-timeout must be a non-negative number of seconds")?,
                )
                .status()
                .await?,
        )?,
        Command::Consumer { action } => {
            let admin = admin(url, &config).await?;
            let (name, done) = match &action {
                ConsumerAction::Rewind { name, to, force } => {
                    if *force {
                        admin.rewind_beyond_head(name, *to).await?;
                    } else {
                        admin.rewind(name, *to).await?;
                    }
                    (name, format!("rewound to position {to}"))
                }
                ConsumerAction::Reset { name } => {
                    admin.reset(name).await?;
                    (name, "reset to the start".to_owned())
                }
                ConsumerAction::Pause { name } => {
                    admin.pause(name).await?;
                    (name, "paused".to_owned())
                }
                ConsumerAction::Resume { name } => {
                    admin.resume(name).await?;
                    (name, "resumed".to_owned())
                }
                ConsumerAction::Skip { name } => {
                    let position = admin.skip(name).await?;
                    (
                        name,
                        format!("skipped position {position} (audited in gaps) and resumed"),
                    )
                }
            };
            writeln!(out, "consumer {name} {done}")?;
        }
        Command::Gaps { consumer, limit } => {
            let gaps = admin(url, &config)
                .await?
                .gaps(consumer.as_deref(), limit)
                .await?;
            let rows: Vec<Vec<String>> = gaps
                .iter()
                .map(|g| {
                    vec![
                        g.consumer.clone(),
                        format!("{}..={}", g.from, g.to),
                        g.reason.clone(),
                        timestamp(g.skipped_at),
                        g.evidence.clone(),
                    ]
                })
                .collect();
            print_table(
                out,
                &["CONSUMER", "POSITIONS", "REASON", "SKIPPED AT", "EVIDENCE"],
                &rows,
            )?;
            writeln!(out, "({} skips)", gaps.len())?;
        }
        Command::Outbox { action } => {
            let store = store(url, &config).await?;
            let admin = OutboxAdmin::from_config(store.pool().clone(), &config)?;
            outbox(out, &admin, action).await?;
        }
        Command::Saga { action } => {
            let store = store(url, &config).await?;
            let admin = SagaAdmin::new(store, &SagaOptions::from_config(&config))?;
            saga::saga(out, &admin, action).await?;
        }
    }
    Ok(())
}

async fn outbox(
    out: &mut impl Write,
    admin: &OutboxAdmin,
    action: OutboxAction,
) -> anyhow::Result<()> {
    match action {
        OutboxAction::Status => {
            let s = admin.status().await?;
            writeln!(out, "pending      {}", s.pending)?;
            writeln!(out, "  backlog    {}", s.pending - s.blocked.min(s.pending))?;
            writeln!(
                out,
                "  blocked    {} on {} keys behind a dead message (requeue or purge it)",
                s.blocked, s.blocked_keys
            )?;
            writeln!(out, "keys leased  {}", s.in_flight)?;
            writeln!(out, "oldest age   {:.1}s", s.oldest_pending_age_seconds)?;
            writeln!(out, "sent (kept)  {}", s.sent)?;
            writeln!(out, "\ndead letters")?;
            let rows: Vec<Vec<String>> = s
                .dead_by_destination
                .iter()
                .map(|(d, n)| vec![d.clone(), n.to_string()])
                .collect();
            print_table(out, &["DESTINATION", "DEAD"], &rows)?;
            writeln!(out, "\ndestinations backed off")?;
            let rows: Vec<Vec<String>> = s
                .backed_off
                .iter()
                .map(|d| {
                    vec![
                        d.destination.clone(),
                        d.class.to_string(),
                        timestamp(d.since),
                        d.failures.to_string(),
                        timestamp(d.next_attempt_at),
                        d.pending.to_string(),
                        d.last_error.clone(),
                    ]
                })
                .collect();
            print_table(
                out,
                &[
                    "DESTINATION",
                    "STATE",
                    "SINCE",
                    "FAILURES",
                    "NEXT TRY",
                    "PENDING",
                    "LAST ERROR",
                ],
                &rows,
            )?;
        }
        OutboxAction::Dead {
            action: DeadAction::List { limit },
        } => {
            let dead = admin.dead(limit).await?;
            let rows: Vec<Vec<String>> = dead
                .iter()
                .map(|d| {
                    vec![
                        d.id.to_string(),
                        d.partition_key.clone(),
                        d.destination.clone(),
                        d.attempts.to_string(),
                        timestamp(d.created_at),
                        d.last_error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print_table(
                out,
                &[
                    "ID",
                    "KEY",
                    "DESTINATION",
                    "ATTEMPTS",
                    "CREATED AT",
                    "LAST ERROR",
                ],
                &rows,
            )?;
            writeln!(out, "({} dead)", dead.len())?;
        }
        OutboxAction::Dead {
            action: DeadAction::Requeue { ids, all },
        } => {
            let n = admin.requeue((!all).then_some(ids.as_slice())).await?;
            writeln!(out, "requeued {n} dead messages")?;
        }
        OutboxAction::Dead {
            action: DeadAction::Purge { ids, all },
        } => {
            let n = admin.purge((!all).then_some(ids.as_slice())).await?;
            writeln!(out, "purged {n} dead messages")?;
        }
    }
    Ok(())
}

/// The event store's, the worker's, the outbox's and the sagas' migrations, with the
/// configuration's table names.
fn migrator(config: &EventrailConfig) -> anyhow::Result<Migrator> {
    let everything = eventrail_worker::worker_migrator(config.schema(), config.worker_tables())?;
    let everything = eventrail_outbox::with_outbox_migration(
        everything,
        config.schema(),
        config.outbox_tables(),
    )?;
    Ok(eventrail_saga::with_saga_migration(
        everything,
        config.schema(),
        config.saga_tables(),
    )?)
}

async fn admin(url: Option<&str>, config: &EventrailConfig) -> anyhow::Result<WorkerAdmin> {
    let store = store(url, config).await?;
    Ok(WorkerAdmin::from_config(store.pool().clone(), config)?)
}

fn timestamp(t: std::time::SystemTime) -> String {
    OffsetDateTime::from(t).format(&Rfc3339).unwrap_or_default()
}

fn print_status(out: &mut impl Write, status: &Status) -> anyhow::Result<()> {
    writeln!(out, "workers")?;
    let rows: Vec<Vec<String>> = status
        .workers
        .iter()
        .map(|w| {
            vec![
                w.id.to_string(),
                w.name.clone(),
                format!("{:.1}s", w.heartbeat_age_seconds),
                if w.session_alive { "yes" } else { "no" }.to_owned(),
                if w.leader { "leader" } else { "" }.to_owned(),
                if w.stale { "stale" } else { "live" }.to_owned(),
            ]
        })
        .collect();
    print_table(
        out,
        &["ID", "NAME", "HEARTBEAT AGE", "SESSION", "ROLE", "STATE"],
        &rows,
    )?;
    writeln!(out, "\nconsumers")?;
    let rows: Vec<Vec<String>> = status
        .consumers
        .iter()
        .map(|c| {
            let state = match (&c.parked_error, c.paused) {
                (Some(e), _) => match c.parked_position {
                    Some(p) => format!("parked at {p}: {e}"),
                    None => format!("parked: {e}"),
                },
                (None, true) => "paused".to_owned(),
                (None, false) => "running".to_owned(),
            };
            vec![
                c.consumer.clone(),
                c.worker_id
                    .map(|w| w.to_string())
                    .unwrap_or_else(|| "-".to_owned()),
                c.epoch.to_string(),
                c.position.to_string(),
                c.lag_events.to_string(),
                format!("{:.1}s", c.lag_seconds),
                state,
            ]
        })
        .collect();
    print_table(
        out,
        &[
            "CONSUMER",
            "WORKER",
            "EPOCH",
            "CHECKPOINT",
            "LAG EVENTS",
            "LAG",
            "STATE",
        ],
        &rows,
    )
}

/// The connection: `--database-url` (or `DATABASE_URL`), else the configuration's direct one
/// (migrations need a session: not through PgBouncer in transaction mode).
fn connect_options(
    url: Option<&str>,
    config: &EventrailConfig,
) -> anyhow::Result<PgConnectOptions> {
    match (url, config.direct_connect_options()) {
        (Some(url), _) => Ok(PgConnectOptions::from_url(url)?),
        (None, Some(options)) => Ok(options.clone()),
        (None, None) => {
            anyhow::bail!(
                "no database: pass --database-url, set DATABASE_URL, or name it in --config"
            )
        }
    }
}

/// One connection for the command.
async fn connection(
    url: Option<&str>,
    config: &EventrailConfig,
) -> anyhow::Result<(
    tokio_postgres::Client,
    eventrail_store_postgres::PgConnection,
)> {
    connect_options(url, config)?
        .connect(CLI_COMPONENT)
        .await
        .context("connecting to the database")
}

/// The `application_name` of the command's sessions.
const CLI_COMPONENT: &str = "eventrail-cli";

/// A store on a small pool, after one connection was made: an unreachable database is a
/// [`ConnectError`](eventrail_store_postgres::ConnectError) (timed out, TLS refused, refused)
/// whatever the command.
async fn store(url: Option<&str>, config: &EventrailConfig) -> anyhow::Result<PgEventStore> {
    let pool = connect_options(url, config)?
        .max_connections(2)
        .pool(CLI_COMPONENT)?;
    drop(
        pool.get()
            .await
            .map_err(|e| eventrail_store_postgres::ConnectError::from_pool(e, &pool))
            .context("connecting to the database")?,
    );
    Ok(PgEventStore::from_config(pool, config)?)
}

const DATA_WIDTH: usize = 60;

fn data_cell(data: &EventData) -> String {
    let text = match data {
        EventData::Json(json) => json
            .value()
            .map_or_else(|e| format!("<{e}>"), ToString::to_string),
        EventData::Binary(b) => format!("<{} bytes>", b.len()),
    };
    if text.chars().count() > DATA_WIDTH {
        let cut: String = text.chars().take(DATA_WIDTH - 1).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// Prints an aligned table.
pub(crate) fn print_table(
    out: &mut impl Write,
    header: &[&str],
    rows: &[Vec<String>],
) -> anyhow::Result<()> {
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    Ok(())
}

/// Prints events as an aligned table.
/// Says that a read stopped at `--limit` and where the next page starts.
fn print_more(out: &mut impl Write, next: Option<u64>) -> anyhow::Result<()> {
    match next {
        Some(from) => writeln!(out, "more events follow: use --from {from}")?,
        None => writeln!(out, "more events follow: raise --limit")?,
    }
    Ok(())
}

fn print_events(out: &mut impl Write, events: &[RecordedEvent]) -> anyhow::Result<()> {
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                e.global_position.to_string(),
                e.stream.to_string(),
                e.stream_version.to_string(),
                e.event_type.clone(),
                timestamp(e.recorded_at),
                data_cell(&e.data),
            ]
        })
        .collect();
    print_table(
        out,
        &[
            "POSITION",
            "STREAM",
            "VERSION",
            "TYPE",
            "RECORDED AT",
            "DATA",
        ],
        &rows,
    )?;
    writeln!(out, "({} events)", events.len())?;
    Ok(())
}
