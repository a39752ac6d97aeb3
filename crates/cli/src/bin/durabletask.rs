//! `durabletask`: operate a durabletask-rs task hub in Azure Storage.
//!
//! ```text
//! durabletask [--connection-string CS | --emulator | --storage-account NAME] [--task-hub HUB] [--json] <COMMAND>
//!   hub create | delete --yes | info
//!   instances list [--status S]... [--prefix P] [--created-from T] [--created-to T] [--top N | --all]
//!   instances show ID | history ID
//!   instances start NAME [--input JSON] [--id ID]
//!   instances raise ID EVENT [--data JSON]
//!   instances terminate ID [--reason TEXT] | suspend ID [--reason TEXT] | resume ID [--reason TEXT]
//!   instances purge ID | purge --from T [--to T] [--time-filter created|completed|last-updated] [--status S]...
//! ```
//!
//! The connection also comes from `DTF_CONNECTION_STRING`, `DTF_USE_EMULATOR=1` or
//! `DTF_STORAGE_ACCOUNT`, the hub from `DTF_TASK_HUB`. Output is a table, or JSON with `--json`.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool talks on stdout/stderr

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use durabletask_azure_storage::TaskHubName;
use durabletask_cli::table::{Table, human_duration};
use durabletask_core::{
    ClientError, EventKind, HistoryEvent, OrchestrationQuery, OrchestrationService,
    OrchestrationState, OrchestrationStatus, PurgeFilter, PurgeTimeFilter, StartOptions,
    TaskHubClient,
};
use durabletask_worker_host::{
    HostSettings, HubStatus, PartitionStatus, PoisonMessage, ProviderAdmin, StorageConnection,
    azure_service,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Operate a durabletask-rs task hub in Azure Storage.
#[derive(Debug, Parser)]
#[command(name = "durabletask", version, about, max_term_width = 100)]
struct Cli {
    #[command(flatten)]
    conn: ConnectionArgs,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct ConnectionArgs {
    /// Azure Storage connection string.
    #[arg(long, env = "DTF_CONNECTION_STRING", hide_env_values = true, global = true)]
    connection_string: Option<String>,
    /// Use Azurite on its default local ports (UseDevelopmentStorage=true).
    #[arg(long, env = "DTF_USE_EMULATOR", global = true, value_parser = clap::builder::BoolishValueParser::new(), num_args = 0, default_missing_value = "true")]
    emulator: Option<bool>,
    /// Storage account reached with an Azure AD credential (azure_identity default chain).
    #[arg(long, env = "DTF_STORAGE_ACCOUNT", global = true)]
    storage_account: Option<String>,
    /// Task hub name.
    #[arg(long, env = "DTF_TASK_HUB", default_value = durabletask_worker_host::DEFAULT_TASK_HUB, global = true)]
    task_hub: String,
    /// Number of control queues of the task hub (must match the hub's).
    #[arg(long, env = "DTF_PARTITION_COUNT", default_value_t = 4, global = true)]
    partition_count: u8,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, delete or inspect the task hub.
    #[command(subcommand)]
    Hub(HubCommand),
    /// List, inspect and manage orchestration instances.
    #[command(subcommand)]
    Instances(InstancesCommand),
}

#[derive(Debug, Subcommand)]
enum HubCommand {
    /// Create the task hub's queues, tables and containers (idempotent).
    Create,
    /// Delete the task hub and all its data.
    Delete {
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
    /// Queue lengths and partitions.
    Info,
    /// Every partition and its owner, as the lease store records them.
    Partitions,
    /// Quarantined messages (ones no worker can decode), read without removing them.
    Poison {
        /// At most this many (1-32).
        #[arg(long, default_value_t = 32)]
        max: u8,
    },
}

#[derive(Debug, Subcommand)]
enum InstancesCommand {
    /// List instances (newest filters first; ordered by instance id).
    List(ListArgs),
    /// Show one instance's state, input and output.
    Show {
        /// Instance id.
        id: String,
    },
    /// Show the history of an instance's current execution.
    History {
        /// Instance id.
        id: String,
    },
    /// Start an orchestration.
    Start {
        /// Orchestration name.
        name: String,
        /// Input as JSON (default null).
        #[arg(long)]
        input: Option<String>,
        /// Instance id (default: random).
        #[arg(long)]
        id: Option<String>,
    },
    /// Raise an external event.
    Raise {
        /// Instance id.
        id: String,
        /// Event name.
        event: String,
        /// Event data as JSON (default null).
        #[arg(long)]
        data: Option<String>,
    },
    /// Terminate an instance.
    Terminate {
        /// Instance id.
        id: String,
        /// Reason (recorded as the output).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Suspend an instance.
    Suspend {
        /// Instance id.
        id: String,
        /// Reason.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resume a suspended instance.
    Resume {
        /// Instance id.
        id: String,
        /// Reason.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Purge one terminal instance, or every terminal instance matching a filter.
    Purge(PurgeArgs),
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Only these statuses (repeatable or comma-separated).
    #[arg(long, value_delimiter = ',', value_parser = parse_status)]
    status: Vec<OrchestrationStatus>,
    /// Instance id prefix.
    #[arg(long)]
    prefix: Option<String>,
    /// Created at or after (RFC 3339, or an age such as 30m, 2h, 7d).
    #[arg(long, value_parser = parse_time)]
    created_from: Option<OffsetDateTime>,
    /// Created at or before (RFC 3339, or an age).
    #[arg(long, value_parser = parse_time)]
    created_to: Option<OffsetDateTime>,
    /// At most this many instances.
    #[arg(long, default_value_t = 100, conflicts_with = "all")]
    top: usize,
    /// Every matching instance (follows continuation tokens to the end).
    #[arg(long)]
    all: bool,
}

#[derive(Debug, Args)]
struct PurgeArgs {
    /// Instance id (purges that one instance).
    #[arg(conflicts_with_all = ["from", "to", "time_filter", "status"])]
    id: Option<String>,
    /// Purge terminal instances whose time (see --time-filter) is at or after this (RFC 3339, or
    /// an age such as 7d).
    #[arg(long, visible_alias = "created-from", value_parser = parse_time, required_unless_present = "id")]
    from: Option<OffsetDateTime>,
    /// ... and at or before.
    #[arg(long, visible_alias = "created-to", value_parser = parse_time)]
    to: Option<OffsetDateTime>,
    /// Which time --from/--to apply to (DTF OrchestrationStateTimeRangeFilterType).
    #[arg(long, value_parser = parse_time_filter, default_value = "created")]
    time_filter: PurgeTimeFilter,
    /// Only these terminal statuses (default: all terminal statuses).
    #[arg(long, value_delimiter = ',', value_parser = parse_status)]
    status: Vec<OrchestrationStatus>,
}

fn parse_time_filter(s: &str) -> Result<PurgeTimeFilter, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "created" => Ok(PurgeTimeFilter::CreatedTime),
        "completed" => Ok(PurgeTimeFilter::CompletedTime),
        "last-updated" | "lastupdated" => Ok(PurgeTimeFilter::LastUpdatedTime),
        other => Err(format!("'{other}' is not one of created, completed, last-updated")),
    }
}

fn parse_status(s: &str) -> Result<OrchestrationStatus, String> {
    OrchestrationStatus::ALL
        .iter()
        .copied()
        .find(|st| st.as_str().eq_ignore_ascii_case(s.trim()))
        .ok_or_else(|| {
            let names: Vec<&str> = OrchestrationStatus::ALL.iter().map(|s| s.as_str()).collect();
            format!("unknown status {s:?}; expected one of {}", names.join(", "))
        })
}

/// RFC 3339, or an age (`45s`, `30m`, `2h`, `7d`) meaning that long before now.
fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    parse_time_at(s, OffsetDateTime::now_utc())
}

fn parse_time_at(s: &str, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 =
        num.parse().map_err(|_| format!("{s:?} is neither RFC 3339 nor an age like 30m"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use s, m, h or d)")),
    };
    Ok(now - Duration::from_secs(secs))
}

fn parse_json(what: &str, s: Option<&str>) -> Result<serde_json::Value, BoxError> {
    match s {
        None => Ok(serde_json::Value::Null),
        Some(s) => {
            serde_json::from_str(s).map_err(|e| format!("{what} is not valid JSON: {e}").into())
        }
    }
}

impl ConnectionArgs {
    fn settings(&self) -> Result<HostSettings, BoxError> {
        let connection = match (
            self.connection_string.as_deref().filter(|s| !s.trim().is_empty()),
            self.emulator.unwrap_or(false),
            self.storage_account.as_deref().filter(|s| !s.trim().is_empty()),
        ) {
            (Some(cs), false, None) => StorageConnection::ConnectionString(cs.to_owned()),
            (None, true, None) => StorageConnection::Emulator,
            (None, false, Some(a)) => StorageConnection::TokenCredential { account: a.to_owned() },
            (None, false, None) => {
                return Err("no storage configured: pass --connection-string, --emulator or \
                            --storage-account (or set DTF_CONNECTION_STRING, DTF_USE_EMULATOR=1, \
                            DTF_STORAGE_ACCOUNT)"
                    .into());
            }
            _ => {
                return Err(
                    "use only one of --connection-string, --emulator and --storage-account".into(),
                );
            }
        };
        let mut settings = HostSettings::new(connection, TaskHubName::new(self.task_hub.as_str())?);
        settings.provider.partition_count = self.partition_count;
        settings.provider.validate()?;
        Ok(settings)
    }
}

fn ts(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn duration_of(s: &OrchestrationState) -> String {
    match s.completed_time {
        Some(done) => human_duration(Duration::try_from(done - s.created_time).unwrap_or_default()),
        None => String::new(),
    }
}

/// The instance list as a table.
fn states_table(states: &[OrchestrationState]) -> String {
    let mut t = Table::new(["INSTANCE", "NAME", "STATUS", "CREATED", "DURATION", "OUTPUT"]);
    for s in states {
        t.row([
            s.instance_id().to_owned(),
            s.name.clone(),
            s.orchestration_status.to_string(),
            ts(s.created_time),
            duration_of(s),
            s.output.clone().unwrap_or_default(),
        ]);
    }
    t.render()
}

/// One instance as `key: value` lines.
fn state_details(s: &OrchestrationState) -> String {
    let mut t = Table::new(["FIELD", "VALUE"]).max_cell_width(400);
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    t.row(["instance".to_owned(), s.instance_id().to_owned()]);
    t.row(["execution".to_owned(), opt(&s.orchestration_instance.execution_id)]);
    t.row(["name".to_owned(), s.name.clone()]);
    t.row(["version".to_owned(), opt(&s.version)]);
    t.row(["status".to_owned(), s.orchestration_status.to_string()]);
    t.row(["custom status".to_owned(), opt(&s.status)]);
    t.row(["created".to_owned(), ts(s.created_time)]);
    t.row(["last updated".to_owned(), ts(s.last_updated_time)]);
    t.row(["completed".to_owned(), s.completed_time.map(ts).unwrap_or_default()]);
    t.row(["duration".to_owned(), duration_of(s)]);
    if let Some(p) = &s.parent_instance {
        t.row(["parent".to_owned(), p.orchestration_instance.instance_id.clone()]);
    }
    t.row(["input".to_owned(), opt(&s.input)]);
    t.row(["output".to_owned(), opt(&s.output)]);
    if let Some(f) = &s.failure_details {
        t.row(["failure".to_owned(), f.to_string()]);
    }
    t.render()
}

fn event_details(e: &HistoryEvent) -> String {
    match &e.kind {
        EventKind::ExecutionStarted(s) => {
            format!("{} input={}", s.name, s.input.as_deref().unwrap_or("null"))
        }
        EventKind::TaskScheduled { name, input, .. } => {
            format!("{name} input={}", input.as_deref().unwrap_or("null"))
        }
        EventKind::TaskCompleted { task_scheduled_id, result } => {
            format!("task {task_scheduled_id} result={}", result.as_deref().unwrap_or("null"))
        }
        EventKind::TaskFailed { task_scheduled_id, reason, .. } => {
            format!("task {task_scheduled_id} reason={}", reason.as_deref().unwrap_or(""))
        }
        EventKind::TimerCreated { fire_at } => format!("fire_at={}", ts(*fire_at)),
        EventKind::TimerFired { timer_id, .. } => format!("timer {timer_id}"),
        EventKind::EventRaised { name, input } => {
            format!("{name} data={}", input.as_deref().unwrap_or("null"))
        }
        EventKind::ExecutionCompleted { result, .. } => {
            format!("result={}", result.as_deref().unwrap_or("null"))
        }
        other => match serde_json::to_value(other) {
            // Marker events (OrchestratorStarted, ...) carry nothing but their type.
            Ok(serde_json::Value::Object(map)) if map.len() <= 1 => String::new(),
            Ok(v) => v.to_string(),
            Err(_) => String::new(),
        },
    }
}

/// History as a table.
fn history_table(events: &[HistoryEvent]) -> String {
    let mut t = Table::new(["ID", "TYPE", "TIMESTAMP", "DETAILS"]).max_cell_width(80);
    for e in events {
        t.row([
            e.event_id.to_string(),
            e.event_type().to_string(),
            ts(e.timestamp),
            event_details(e),
        ]);
    }
    t.render()
}

/// Hub info as a table.
fn hub_table(h: &HubStatus) -> String {
    let mut t = Table::new(["QUEUE", "MESSAGES", "OWNED HERE"]);
    for q in &h.control_queues {
        let owned = if h.owned_partitions.contains(&q.name) { "yes" } else { "" };
        t.row([q.name.clone(), q.approximate_length.to_string(), owned.to_owned()]);
    }
    let lower = h.task_hub.to_ascii_lowercase();
    t.row([format!("{lower}-workitems"), h.work_item_queue_length.to_string(), String::new()]);
    t.row([format!("{lower}-poison"), h.poison_queue_length.to_string(), String::new()]);
    format!(
        "task hub {} ({}; {} partitions)\n{}",
        h.task_hub,
        if h.exists { "exists" } else { "does not exist" },
        h.partition_count,
        t.render()
    )
}

fn partitions_table(parts: &[PartitionStatus]) -> String {
    let mut t = Table::new(["PARTITION", "OWNER", "NEXT OWNER", "EXPIRES"]);
    for p in parts {
        let expires =
            p.expires_at.and_then(|e| e.format(&Rfc3339).ok()).unwrap_or_else(|| "-".to_owned());
        t.row([
            p.control_queue.clone(),
            p.owner.clone().unwrap_or_else(|| "-".to_owned()),
            p.next_owner.clone().unwrap_or_else(|| "-".to_owned()),
            expires,
        ]);
    }
    t.render()
}

fn poison_table(poisoned: &[PoisonMessage]) -> String {
    if poisoned.is_empty() {
        return "no quarantined messages\n".to_owned();
    }
    let mut t = Table::new(["ID", "QUARANTINED", "SOURCE QUEUE", "REASON"]);
    for m in poisoned {
        let field = |k: &str| m.record[k].as_str().unwrap_or("-").to_owned();
        t.row([
            m.id.clone(),
            m.quarantined_at.format(&Rfc3339).unwrap_or_default(),
            field("sourceQueue"),
            field("reason"),
        ]);
    }
    t.render()
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, BoxError> {
    Ok(format!("{}\n", serde_json::to_string_pretty(v)?))
}

fn not_found(id: &str) -> BoxError {
    format!("orchestration instance '{id}' not found").into()
}

/// Runs an `instances` subcommand against `client`; returns what to print.
async fn run_instances(
    cmd: InstancesCommand,
    client: &TaskHubClient,
    json: bool,
) -> Result<String, BoxError> {
    match cmd {
        InstancesCommand::List(args) => {
            let mut query = OrchestrationQuery {
                runtime_status: args.status,
                created_from: args.created_from,
                created_to: args.created_to,
                instance_id_prefix: args.prefix,
                page_size: if args.all { 100 } else { args.top.clamp(1, 100) },
                ..OrchestrationQuery::default()
            };
            let mut states = Vec::new();
            loop {
                let page = client.query(&query).await?;
                states.extend(page.states);
                if !args.all && states.len() >= args.top {
                    states.truncate(args.top);
                    break;
                }
                match page.continuation_token {
                    Some(token) => query.continuation_token = Some(token),
                    None => break,
                }
            }
            if json { to_json(&states) } else { Ok(states_table(&states)) }
        }
        InstancesCommand::Show { id } => {
            let s = client.get_state(&id).await?.ok_or_else(|| not_found(&id))?;
            if json { to_json(&s) } else { Ok(state_details(&s)) }
        }
        InstancesCommand::History { id } => {
            let events = client.get_history(&id).await?;
            if events.is_empty() && client.get_state_with(&id, false).await?.is_none() {
                return Err(not_found(&id));
            }
            if json { to_json(&events) } else { Ok(history_table(&events)) }
        }
        InstancesCommand::Start { name, input, id } => {
            let input = parse_json("--input", input.as_deref())?;
            let opts = StartOptions { instance_id: id, ..StartOptions::default() };
            let instance = client.schedule_new_orchestration(&name, &input, opts).await?;
            if json {
                to_json(&instance)
            } else {
                Ok(format!("started {name} as instance {}\n", instance.instance_id))
            }
        }
        InstancesCommand::Raise { id, event, data } => {
            let data = parse_json("--data", data.as_deref())?;
            client.raise_event(&id, &event, &data).await?;
            done(json, "raised", &id, &format!("raised event {event} on {id}"))
        }
        InstancesCommand::Terminate { id, reason } => {
            client.terminate(&id, reason.as_deref().unwrap_or_default()).await?;
            done(json, "terminated", &id, &format!("terminate sent to {id}"))
        }
        InstancesCommand::Suspend { id, reason } => {
            client.suspend(&id, reason.as_deref()).await?;
            done(json, "suspended", &id, &format!("suspend sent to {id}"))
        }
        InstancesCommand::Resume { id, reason } => {
            client.resume(&id, reason.as_deref()).await?;
            done(json, "resumed", &id, &format!("resume sent to {id}"))
        }
        InstancesCommand::Purge(args) => {
            let result = match (args.id, args.from) {
                (Some(id), _) => match client.purge_instance(&id).await {
                    Ok(r) => r,
                    Err(ClientError::NotTerminal(id)) => {
                        return Err(
                            format!("instance '{id}' is still active; terminate it first").into()
                        );
                    }
                    Err(e) => return Err(e.into()),
                },
                (None, Some(from)) => {
                    let filter = PurgeFilter::new(args.time_filter, from, args.to)
                        .with_statuses(args.status);
                    client.purge_by_filter(&filter).await?
                }
                (None, None) => return Err("give an instance id or --from".into()),
            };
            if json {
                to_json(
                    &serde_json::json!({ "deleted_instance_count": result.deleted_instance_count }),
                )
            } else {
                Ok(format!("purged {} instance(s)\n", result.deleted_instance_count))
            }
        }
    }
}

fn done(json: bool, action: &str, id: &str, text: &str) -> Result<String, BoxError> {
    if json {
        to_json(&serde_json::json!({ "action": action, "instance_id": id }))
    } else {
        Ok(format!("{text}\n"))
    }
}

async fn run(cli: Cli) -> Result<String, BoxError> {
    let settings = cli.conn.settings()?;
    let svc = azure_service(&settings)?;
    match cli.command {
        Command::Hub(HubCommand::Create) => {
            svc.create_if_not_exists().await?;
            let msg = format!(
                "task hub {} ready ({} partitions)",
                settings.provider.task_hub_name.as_str(),
                settings.provider.partition_count
            );
            done(cli.json, "created", settings.provider.task_hub_name.as_str(), &msg)
        }
        Command::Hub(HubCommand::Delete { yes }) => {
            if !yes {
                return Err(format!(
                    "refusing to delete task hub {} and all its data without --yes",
                    settings.provider.task_hub_name.as_str()
                )
                .into());
            }
            svc.delete().await?;
            let msg = format!("task hub {} deleted", settings.provider.task_hub_name.as_str());
            done(cli.json, "deleted", settings.provider.task_hub_name.as_str(), &msg)
        }
        Command::Hub(HubCommand::Info) => {
            let status = svc.hub_status().await?;
            if cli.json { to_json(&status) } else { Ok(hub_table(&status)) }
        }
        Command::Hub(HubCommand::Partitions) => {
            let parts = svc.partitions().await?;
            if cli.json { to_json(&parts) } else { Ok(partitions_table(&parts)) }
        }
        Command::Hub(HubCommand::Poison { max }) => {
            let poisoned = svc.poison_messages(max).await?;
            if cli.json { to_json(&poisoned) } else { Ok(poison_table(&poisoned)) }
        }
        Command::Instances(cmd) => {
            let client = TaskHubClient::new(std::sync::Arc::new(svc));
            run_instances(cmd, &client, cli.json).await
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("durabletask: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("durabletask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use durabletask_testkit::memory::InMemoryOrchestrationService;
    use std::sync::Arc;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("durabletask").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_connection_and_commands() {
        let cli = parse(&["--emulator", "--task-hub", "Samples", "hub", "info"]).unwrap();
        assert_eq!(cli.conn.emulator, Some(true));
        assert_eq!(cli.conn.task_hub, "Samples");
        assert!(matches!(cli.command, Command::Hub(HubCommand::Info)));
        let s = cli.conn.settings().unwrap();
        assert_eq!(s.connection, StorageConnection::Emulator);
        assert_eq!(s.provider.task_hub_name.as_str(), "Samples");

        let cli = parse(&[
            "instances",
            "list",
            "--status",
            "running,Completed",
            "--status",
            "failed",
            "--prefix",
            "abc",
            "--top",
            "5",
            "--emulator",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        let Command::Instances(InstancesCommand::List(args)) = cli.command else {
            panic!("not a list")
        };
        assert_eq!(
            args.status,
            vec![
                OrchestrationStatus::Running,
                OrchestrationStatus::Completed,
                OrchestrationStatus::Failed
            ]
        );
        assert_eq!(args.prefix.as_deref(), Some("abc"));
        assert_eq!(args.top, 5);
    }

    #[test]
    fn bad_arguments_are_rejected() {
        assert!(parse(&["instances", "list", "--status", "Done"]).is_err());
        assert!(parse(&["instances", "list", "--top", "3", "--all"]).is_err());
        assert!(parse(&["instances", "purge"]).is_err(), "purge needs an id or a filter");
        assert!(parse(&["instances", "purge", "x", "--created-from", "1d"]).is_err());
        assert!(parse(&["instances", "purge", "--created-from", "soon"]).is_err());
        let cli = parse(&[
            "--emulator",
            "--connection-string",
            "UseDevelopmentStorage=true",
            "hub",
            "info",
        ])
        .unwrap();
        assert!(cli.conn.settings().is_err(), "two connections");
        let cli = parse(&["--emulator", "--task-hub", "a-b", "hub", "info"]).unwrap();
        assert!(cli.conn.settings().is_err(), "invalid hub name");
        let cli = parse(&["--emulator", "--partition-count", "17", "hub", "info"]).unwrap();
        assert!(cli.conn.settings().is_err(), "partition count out of range");
    }

    #[test]
    fn connection_string_is_never_in_debug_or_help() {
        let cli =
            parse(&["--connection-string", "AccountName=a;AccountKey=c2VjcmV0", "hub", "info"])
                .unwrap();
        let settings = cli.conn.settings().unwrap();
        assert!(!format!("{settings:?}").contains("c2VjcmV0"));
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("DTF_CONNECTION_STRING"), "{help}");
    }

    #[test]
    fn times_parse_as_rfc3339_or_age() {
        let now = OffsetDateTime::parse("2024-05-01T12:00:00Z", &Rfc3339).unwrap();
        assert_eq!(
            parse_time_at("2024-01-02T03:04:05Z", now).unwrap().unix_timestamp(),
            1_704_164_645
        );
        assert_eq!(parse_time_at("2h", now).unwrap(), now - Duration::from_secs(7200));
        assert_eq!(parse_time_at("7d", now).unwrap(), now - Duration::from_secs(7 * 86_400));
        assert!(parse_time_at("7w", now).is_err());
        assert!(parse_time_at("yesterday", now).is_err());
    }

    fn client() -> TaskHubClient {
        TaskHubClient::new(Arc::new(InMemoryOrchestrationService::default()))
    }

    fn cmd(args: &[&str]) -> InstancesCommand {
        let mut full = vec!["--emulator", "instances"];
        full.extend_from_slice(args);
        match parse(&full).unwrap().command {
            Command::Instances(c) => c,
            Command::Hub(_) => panic!("not an instances command"),
        }
    }

    #[tokio::test]
    async fn instance_commands_against_the_memory_provider() {
        let c = client();
        let out = run_instances(
            cmd(&["start", "Hello", "--input", "{\"x\":1}", "--id", "i-1"]),
            &c,
            false,
        )
        .await
        .unwrap();
        assert_eq!(out, "started Hello as instance i-1\n");
        run_instances(cmd(&["start", "Hello", "--id", "i-2"]), &c, true).await.unwrap();

        let table = run_instances(cmd(&["list"]), &c, false).await.unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].starts_with("INSTANCE  NAME   STATUS"), "{table}");
        assert!(lines[2].starts_with("i-1") && lines[2].contains("Pending"), "{table}");

        let json = run_instances(cmd(&["list", "--prefix", "i-2"]), &c, true).await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 1);
        assert_eq!(v[0]["OrchestrationInstance"]["InstanceId"], "i-2");
        assert_eq!(v[0]["OrchestrationStatus"], "Pending");

        let top1 = run_instances(cmd(&["list", "--top", "1"]), &c, false).await.unwrap();
        assert_eq!(top1.lines().count(), 3, "{top1}");

        let shown = run_instances(cmd(&["show", "i-1"]), &c, false).await.unwrap();
        assert!(shown.contains("{\"x\":1}"), "{shown}");
        assert!(run_instances(cmd(&["show", "nope"]), &c, false).await.is_err());
        assert!(run_instances(cmd(&["history", "nope"]), &c, false).await.is_err());

        let out = run_instances(cmd(&["raise", "i-1", "Approval", "--data", "true"]), &c, true)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["action"], "raised");
        assert!(
            run_instances(cmd(&["raise", "i-1", "Approval", "--data", "{bad"]), &c, true)
                .await
                .is_err()
        );

        // Still pending: purge refuses.
        let err = run_instances(cmd(&["purge", "i-1"]), &c, false).await.unwrap_err();
        assert!(err.to_string().contains("still active"), "{err}");
        let out = run_instances(cmd(&["purge", "--created-from", "1d"]), &c, false).await.unwrap();
        assert_eq!(out, "purged 0 instance(s)\n");
    }

    #[test]
    fn history_and_hub_tables() {
        use durabletask_core::{ExecutionStartedEvent, OrchestrationInstance};
        let t = OffsetDateTime::parse("2024-05-01T12:00:00Z", &Rfc3339).unwrap();
        let started =
            ExecutionStartedEvent::new(OrchestrationInstance::new("i"), "Hello", Some("1".into()));
        let events = vec![
            HistoryEvent::new(-1, t, EventKind::ExecutionStarted(started)),
            HistoryEvent::new(
                0,
                t,
                EventKind::TaskScheduled {
                    name: "SayHello".into(),
                    version: None,
                    tags: None,
                    input: Some("\"Tokyo\"".into()),
                },
            ),
        ];
        let table = history_table(&events);
        assert!(table.contains("ExecutionStarted") && table.contains("Hello input=1"), "{table}");
        assert!(table.contains("SayHello input=\"Tokyo\""), "{table}");

        let hub = HubStatus {
            exists: true,
            task_hub: "Samples".into(),
            partition_count: 2,
            control_queues: vec![
                durabletask_worker_host::QueueLength {
                    name: "samples-control-00".into(),
                    approximate_length: 3,
                },
                durabletask_worker_host::QueueLength {
                    name: "samples-control-01".into(),
                    approximate_length: 0,
                },
            ],
            work_item_queue_length: 5,
            poison_queue_length: 0,
            owned_partitions: vec!["samples-control-01".into()],
        };
        let text = hub_table(&hub);
        assert!(text.starts_with("task hub Samples (exists; 2 partitions)\n"), "{text}");
        assert!(text.contains("samples-control-00  3"), "{text}");
        assert!(
            text.lines().any(|l| l.starts_with("samples-control-01") && l.ends_with("yes")),
            "{text}"
        );
        assert!(text.contains("samples-workitems   5"), "{text}");
    }
}
