//! `durabletask`: operate a durabletask-rs task hub in Azure Storage.
//!
//! ```text
//! durabletask [--connection-string CS | --emulator | --storage-account NAME] [--task-hub HUB] [--json] <COMMAND>
//!   hub create | delete --yes | info
//!   instances list [--status S]... [--prefix P] [--created-from T] [--created-to T] [--include-entities] [--top N | --all]
//!   instances show ID | history ID
//!   instances start NAME [--input JSON] [--id ID]
//!   instances raise ID EVENT [--data JSON]
//!   instances terminate ID [--reason TEXT] | suspend ID [--reason TEXT] | resume ID [--reason TEXT]
//!   instances purge ID | purge --from T [--to T] [--time-filter created|completed|last-updated] [--status S]...
//!   entities list [--name PREFIX] [--include-deleted] [--with-state] [--top N | --all]
//!   entities show @name@key | show --name N --key K
//!   entities signal @name@key OPERATION [--input JSON] | signal --name N --key K OPERATION [--input JSON]
//!   entities clean [--remove-empty] [--release-orphaned-locks] [--wait SECS]
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
use durabletask_core::client::{CleanEntityStorageResult, EntityQuery};
use durabletask_core::entity::SchedulerState;
use durabletask_core::{
    ClientError, EntityId, EntityMetadata, EventKind, HistoryEvent, OrchestrationQuery,
    OrchestrationService, OrchestrationState, OrchestrationStatus, PurgeFilter, PurgeTimeFilter,
    StartOptions, TaskHubClient,
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
#[command(
    name = "durabletask",
    version,
    about = "Operate a durabletask-rs task hub in Azure Storage: its queues and partitions, \
             orchestration instances and durable entities",
    long_about = "Operate a durabletask-rs task hub in Azure Storage (or Azurite): create or delete \
                  the hub, see its queues, partition owners and poison messages; list, inspect, \
                  start, raise events on, suspend, resume, terminate and purge orchestration \
                  instances; list, show, signal and clean up durable entities. The hub's \
                  partition count is read from the hub. Output is a table, or JSON with --json; \
                  logs go to stderr (RUST_LOG).",
    max_term_width = 100
)]
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
    /// Number of control queues of the task hub. By default read from the hub itself; when
    /// given it must match the hub's (a different count is refused). `hub create` uses it for a
    /// new hub (default 4).
    #[arg(long, env = "DTF_PARTITION_COUNT", global = true)]
    partition_count: Option<u8>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, delete or inspect the task hub.
    #[command(subcommand)]
    Hub(HubCommand),
    /// List, inspect and manage orchestration instances.
    #[command(subcommand)]
    Instances(InstancesCommand),
    /// List, inspect, signal and clean up durable entities (instances named @name@key).
    #[command(subcommand)]
    Entities(EntitiesCommand),
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
    /// List instances, newest created first.
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
    /// Also list entities (instances named @name@key; see `entities list`).
    #[arg(long)]
    include_entities: bool,
    /// At most this many instances.
    #[arg(long, default_value_t = 100, conflicts_with = "all")]
    top: usize,
    /// Every matching instance (follows continuation tokens to the end).
    #[arg(long)]
    all: bool,
}

#[derive(Debug, Subcommand)]
enum EntitiesCommand {
    /// List entities (ordered by entity id); by default only those with state.
    List(EntityListArgs),
    /// Show one entity: lock, backlog and its whole state. An entity without state is an error.
    Show {
        #[command(flatten)]
        entity: EntityArgs,
    },
    /// Signal an operation on an entity (one-way; the entity is created by its first signal).
    #[command(allow_missing_positional = true)]
    Signal {
        #[command(flatten)]
        entity: EntityArgs,
        /// Operation name.
        #[arg(value_parser = parse_operation)]
        operation: String,
        /// Operation input as JSON (default null).
        #[arg(long)]
        input: Option<String>,
    },
    /// Remove empty entities and release locks held by orchestrations that no longer run.
    ///
    /// An empty entity (no state, lock or backlog) is removed only once it has had no message
    /// for longer than the workers' entity reorder window (30 minutes by default); a worker must
    /// be running to complete it.
    Clean {
        /// Remove entities without state, lock or backlog.
        #[arg(long)]
        remove_empty: bool,
        /// Release locks whose holding orchestration is no longer running.
        #[arg(long)]
        release_orphaned_locks: bool,
        /// Seconds to wait for empty entities to complete before they are removed (the rest
        /// are removed by a later clean-up).
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
}

/// Which entity: `@name@key`, or `--name` and `--key`.
#[derive(Debug, Args)]
struct EntityArgs {
    /// Entity id, `@name@key` (the name is case-insensitive; the key is everything after the
    /// second '@').
    #[arg(value_name = "@NAME@KEY", value_parser = parse_entity_id, required_unless_present = "name")]
    entity: Option<EntityId>,
    /// Entity name (instead of @NAME@KEY).
    #[arg(long, conflicts_with = "entity", requires = "key")]
    name: Option<String>,
    /// Entity key (with --name).
    #[arg(long, requires = "name")]
    key: Option<String>,
}

impl EntityArgs {
    /// The validated entity id.
    fn id(&self) -> Result<EntityId, BoxError> {
        match (&self.entity, &self.name, &self.key) {
            (Some(id), None, None) => Ok(id.clone()),
            (None, Some(name), Some(key)) => EntityId::try_new(name, key.as_str())
                .map_err(|e| format!("invalid entity id: {e}").into()),
            _ => Err("give the entity as @name@key, or as --name N --key K".into()),
        }
    }
}

#[derive(Debug, Args)]
struct EntityListArgs {
    /// Entity name prefix (case-insensitive).
    #[arg(long)]
    name: Option<String>,
    /// Also list entities without state (deleted, or only holding a lock or a backlog).
    #[arg(long)]
    include_deleted: bool,
    /// Read and print each entity's state (cut in the table, whole with --json).
    #[arg(long)]
    with_state: bool,
    /// At most this many entities.
    #[arg(long, default_value_t = 100, conflicts_with = "all")]
    top: usize,
    /// Every matching entity (follows continuation tokens to the end).
    #[arg(long)]
    all: bool,
}

/// An operation name: not empty, and not an entity id (`signal @name@key` without an operation
/// puts the id here).
fn parse_operation(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("the operation name must not be empty".into())
    } else if s.starts_with('@') {
        Err(format!("{s:?} is an entity id, not an operation: give both, @name@key OPERATION"))
    } else {
        Ok(s.to_owned())
    }
}

/// `@name@key`, validated as [`EntityId::try_new`] does.
fn parse_entity_id(s: &str) -> Result<EntityId, String> {
    let id = EntityId::from_instance_id(s).map_err(|e| {
        if s.starts_with('@') {
            format!("invalid entity id: {e}")
        } else {
            format!("{s:?} is not an entity id: write @name@key, or use --name and --key")
        }
    })?;
    id.validate().map_err(|e| format!("invalid entity id: {e}"))?;
    Ok(id)
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
    #[arg(long, value_delimiter = ',', value_parser = parse_terminal_status)]
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

/// A terminal status (purge removes only terminal instances).
fn parse_terminal_status(s: &str) -> Result<OrchestrationStatus, String> {
    let status = parse_status(s)?;
    if !status.is_terminal() {
        return Err(format!(
            "{status} is not a terminal status: purge removes only Completed, Failed, Canceled or \
             Terminated instances (terminate active ones first)"
        ));
    }
    Ok(status)
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
        settings.provider.partition_count = self.partition_count.unwrap_or(4);
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
        EventKind::TaskFailed { task_scheduled_id, reason, failure_details, .. } => {
            format!(
                "task {task_scheduled_id} failed: {}",
                failure_text(reason.as_deref(), failure_details.as_ref())
            )
        }
        EventKind::SubOrchestrationInstanceCreated { name, instance_id, .. } => {
            format!("{name} as instance {instance_id}")
        }
        EventKind::SubOrchestrationInstanceCompleted { task_scheduled_id, result } => {
            format!("task {task_scheduled_id} result={}", result.as_deref().unwrap_or("null"))
        }
        EventKind::SubOrchestrationInstanceFailed {
            task_scheduled_id,
            reason,
            failure_details,
            ..
        } => {
            format!(
                "task {task_scheduled_id} failed: {}",
                failure_text(reason.as_deref(), failure_details.as_ref())
            )
        }
        EventKind::EventSent { instance_id, name, input } => {
            format!("{name} to {instance_id} data={}", input.as_deref().unwrap_or("null"))
        }
        EventKind::ExecutionSuspended { reason } => {
            format!("suspended{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())
        }
        EventKind::ExecutionResumed { reason } => {
            format!("resumed{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())
        }
        EventKind::ExecutionTerminated { input } => {
            format!("terminated{}", input.as_deref().map(|r| format!(": {r}")).unwrap_or_default())
        }
        EventKind::TimerCreated { fire_at } => format!("fire_at={}", ts(*fire_at)),
        EventKind::TimerFired { timer_id, .. } => format!("timer {timer_id}"),
        EventKind::EventRaised { name, input } => {
            format!("{name} data={}", input.as_deref().unwrap_or("null"))
        }
        EventKind::ExecutionCompleted { orchestration_status, result, failure_details } => {
            match failure_details {
                Some(fd) => format!("{orchestration_status}: {}", failure_text(None, Some(fd))),
                None => {
                    format!("{orchestration_status} result={}", result.as_deref().unwrap_or("null"))
                }
            }
        }
        other => match serde_json::to_value(other) {
            // Marker events (OrchestratorStarted, ...) carry nothing but their type.
            Ok(serde_json::Value::Object(map)) if map.len() <= 1 => String::new(),
            Ok(v) => v.to_string(),
            Err(_) => String::new(),
        },
    }
}

/// A failure as `Type: message` (with its causes), or the bare reason.
fn failure_text(
    reason: Option<&str>,
    details: Option<&durabletask_core::FailureDetails>,
) -> String {
    match details {
        Some(fd) => {
            let mut text = format!("{}: {}", fd.error_type, fd.error_message);
            let mut cause = fd.inner_failure.as_deref();
            while let Some(c) = cause {
                text.push_str(&format!(" (caused by {}: {})", c.error_type, c.error_message));
                cause = c.inner_failure.as_deref();
            }
            text
        }
        None => reason.unwrap_or("").to_owned(),
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
/// How many instances `instances list` reads at most to order them newest first.
const LIST_SCAN_LIMIT: usize = 10_000;

/// Newest created first; ties by instance id.
fn newest_first(states: &mut [OrchestrationState]) {
    states.sort_by(|a, b| {
        b.created_time.cmp(&a.created_time).then_with(|| a.instance_id().cmp(b.instance_id()))
    });
}

/// Queue depths, with each control queue's owner as the lease store records it (a CLI process
/// owns no partition itself, so "owned here" would always be empty).
fn hub_table(h: &HubStatus, owners: &[PartitionStatus]) -> String {
    let mut t = Table::new(["QUEUE", "MESSAGES", "OWNER"]);
    for q in &h.control_queues {
        let owner = owners
            .iter()
            .find(|p| p.control_queue == q.name)
            .and_then(|p| p.owner.clone())
            .unwrap_or_else(|| "(none)".to_owned());
        t.row([q.name.clone(), q.approximate_length.to_string(), owner]);
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

/// An entity as the CLI prints it (`EntityMetadata` plus, for one without state, its scheduler).
#[derive(Debug, serde::Serialize)]
struct EntityView {
    /// `@name@key`.
    entity: String,
    name: String,
    key: String,
    exists: bool,
    locked_by: Option<String>,
    backlog: usize,
    #[serde(with = "time::serde::rfc3339")]
    last_modified: OffsetDateTime,
    /// The state, when read (`null` is a state too).
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<serde_json::Value>,
    /// Messages waiting for a predecessor from their sender (read from the scheduler state).
    #[serde(skip_serializing_if = "Option::is_none")]
    waiting_for_predecessor: Option<usize>,
    /// The entity instance's runtime status (for an entity without state).
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_status: Option<OrchestrationStatus>,
}

impl EntityView {
    fn new(m: EntityMetadata<serde_json::Value>) -> Self {
        Self {
            entity: m.id.instance_id(),
            name: m.id.name().to_owned(),
            key: m.id.key().to_owned(),
            exists: m.exists,
            locked_by: m.locked_by,
            backlog: m.backlog,
            last_modified: m.last_modified,
            state: m.state,
            waiting_for_predecessor: None,
            instance_status: None,
        }
    }

    /// An entity instance that has no state: what its scheduler holds.
    fn without_state(id: &EntityId, instance: &OrchestrationState, s: &SchedulerState) -> Self {
        Self {
            entity: id.instance_id(),
            name: id.name().to_owned(),
            key: id.key().to_owned(),
            exists: s.exists(),
            locked_by: s.locked_by().map(str::to_owned),
            backlog: s.backlog(),
            last_modified: instance.last_updated_time,
            state: None,
            waiting_for_predecessor: Some(s.out_of_order()),
            instance_status: Some(instance.orchestration_status),
        }
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

/// The entity list as a table (with a cut STATE column when `with_state`).
fn entities_table(entities: &[EntityView], with_state: bool) -> String {
    let mut headers =
        vec!["ENTITY", "NAME", "KEY", "EXISTS", "LOCKED BY", "BACKLOG", "LAST MODIFIED"];
    if with_state {
        headers.push("STATE");
    }
    let mut t = Table::new(headers);
    for e in entities {
        let mut row = vec![
            e.entity.clone(),
            e.name.clone(),
            e.key.clone(),
            yes_no(e.exists),
            e.locked_by.clone().unwrap_or_default(),
            e.backlog.to_string(),
            ts(e.last_modified),
        ];
        if with_state {
            row.push(e.state.as_ref().map(ToString::to_string).unwrap_or_default());
        }
        t.row(row);
    }
    t.render()
}

/// One entity as `key: value` lines, then its whole state (pretty JSON).
fn entity_details(e: &EntityView) -> String {
    let mut t = Table::new(["FIELD", "VALUE"]).max_cell_width(400);
    t.row(["entity".to_owned(), e.entity.clone()]);
    t.row(["name".to_owned(), e.name.clone()]);
    t.row(["key".to_owned(), e.key.clone()]);
    if let Some(status) = e.instance_status {
        t.row(["instance status".to_owned(), status.to_string()]);
    }
    t.row(["exists".to_owned(), yes_no(e.exists)]);
    t.row(["locked by".to_owned(), e.locked_by.clone().unwrap_or_default()]);
    t.row(["backlog".to_owned(), e.backlog.to_string()]);
    if let Some(n) = e.waiting_for_predecessor {
        t.row(["out of order".to_owned(), format!("{n} message(s) waiting for a predecessor")]);
    }
    t.row(["last modified".to_owned(), ts(e.last_modified)]);
    let mut out = t.render();
    if let Some(state) = &e.state {
        let pretty = serde_json::to_string_pretty(state).unwrap_or_else(|_| state.to_string());
        out.push_str("state:\n");
        out.push_str(&pretty);
        out.push('\n');
    }
    out
}

/// A failure that still prints something on stdout before its message goes to stderr.
#[derive(Debug)]
struct FailedWithOutput {
    stdout: String,
    message: String,
}

impl std::fmt::Display for FailedWithOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FailedWithOutput {}

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
                page_size: 1000,
                exclude_entities: !args.include_entities,
                ..OrchestrationQuery::default()
            };
            // The store lists by instance id; newest first needs every match (up to a bound).
            let mut states = Vec::new();
            let mut truncated = false;
            loop {
                let page = client.query(&query).await?;
                states.extend(page.states);
                match page.continuation_token {
                    Some(_) if states.len() >= LIST_SCAN_LIMIT => {
                        truncated = true;
                        break;
                    }
                    Some(token) => query.continuation_token = Some(token),
                    None => break,
                }
            }
            if truncated {
                eprintln!(
                    "durabletask: more than {LIST_SCAN_LIMIT} instances match: showing the newest \
                     of the first {LIST_SCAN_LIMIT} by instance id; narrow the filter (--status, \
                     --prefix, --created-from) for an exact answer"
                );
            }
            newest_first(&mut states);
            if !args.all {
                states.truncate(args.top);
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

/// Runs an `entities` subcommand against `client`; returns what to print. Entity ids are
/// validated before anything is sent.
async fn run_entities(
    cmd: EntitiesCommand,
    client: &TaskHubClient,
    json: bool,
) -> Result<String, BoxError> {
    match cmd {
        EntitiesCommand::List(args) => {
            let mut query = EntityQuery {
                name_prefix: args.name,
                include_state: args.with_state,
                include_deleted: args.include_deleted,
                page_size: if args.all { 100 } else { args.top.clamp(1, 100) },
                continuation_token: None,
            };
            let mut entities = Vec::new();
            loop {
                // A page may hold fewer entities than asked for (those without state are
                // skipped); only a missing token ends the listing.
                let page = client.query_entities::<serde_json::Value>(&query).await?;
                entities.extend(page.entities.into_iter().map(EntityView::new));
                if !args.all && entities.len() >= args.top {
                    entities.truncate(args.top);
                    break;
                }
                match page.continuation_token {
                    Some(token) => query.continuation_token = Some(token),
                    None => break,
                }
            }
            if json { to_json(&entities) } else { Ok(entities_table(&entities, args.with_state)) }
        }
        EntitiesCommand::Show { entity } => {
            let id = entity.id()?;
            if let Some(meta) = client.get_entity::<serde_json::Value>(&id).await? {
                let mut view = EntityView::new(meta);
                // A state of JSON `null` is still a state.
                view.state.get_or_insert(serde_json::Value::Null);
                return if json { to_json(&view) } else { Ok(entity_details(&view)) };
            }
            let Some(instance) = client.get_state(&id.instance_id()).await? else {
                return Err(format!("entity '{id}' not found").into());
            };
            let scheduler = SchedulerState::from_input(instance.input.as_deref())
                .map_err(|e| format!("entity '{id}': {e}"))?;
            let view = EntityView::without_state(&id, &instance, &scheduler);
            let stdout = if json {
                to_json(&view)?
            } else {
                format!("entity {id} has no state; its scheduler:\n{}", entity_details(&view))
            };
            Err(Box::new(FailedWithOutput {
                stdout,
                message: format!("entity '{id}' has no state (deleted, or never had any)"),
            }))
        }
        EntitiesCommand::Signal { entity, operation, input } => {
            let id = entity.id()?;
            let input = parse_json("--input", input.as_deref())?;
            client.signal_entity(&id, &operation, &input).await?;
            if json {
                to_json(&serde_json::json!({
                    "action": "signaled",
                    "entity": id.instance_id(),
                    "operation": operation,
                }))
            } else {
                Ok(format!("signal {operation} sent to {id}\n"))
            }
        }
        EntitiesCommand::Clean { remove_empty, release_orphaned_locks, wait } => {
            if !remove_empty && !release_orphaned_locks {
                return Err(
                    "nothing to clean: pass --remove-empty and/or --release-orphaned-locks".into(),
                );
            }
            let CleanEntityStorageResult {
                empty_entities_removed,
                orphaned_locks_released,
                empty_entities_kept,
            } = client
                .clean_entity_storage(
                    remove_empty,
                    release_orphaned_locks,
                    Duration::from_secs(wait),
                )
                .await?;
            if json {
                to_json(&serde_json::json!({
                    "empty_entities_removed": empty_entities_removed,
                    "orphaned_locks_released": orphaned_locks_released,
                    "empty_entities_kept": empty_entities_kept,
                }))
            } else {
                let kept = if empty_entities_kept > 0 {
                    format!(
                        "; kept {empty_entities_kept} empty entit{} (active within the workers' \
                         reorder window, or no worker completed them in time; run again later)",
                        if empty_entities_kept == 1 { "y" } else { "ies" }
                    )
                } else {
                    String::new()
                };
                Ok(format!(
                    "removed {empty_entities_removed} empty entit{}, released \
                     {orphaned_locks_released} orphaned lock(s){kept}\n",
                    if empty_entities_removed == 1 { "y" } else { "ies" }
                ))
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

/// Reads the hub's real partition count from storage and checks it against the one given:
/// every command but `hub create` needs an existing hub, and all need the right count (a wrong
/// one lists queues that do not exist, or sends messages to the wrong control queue).
async fn hub_settings(cli: &Cli) -> Result<HostSettings, BoxError> {
    let mut settings = cli.conn.settings()?;
    let hub = settings.provider.task_hub_name.as_str().to_owned();
    let stored = azure_service(&settings)?.stored_partition_count().await?;
    let creating = matches!(cli.command, Command::Hub(HubCommand::Create));
    match (stored, cli.conn.partition_count) {
        (None, _) if creating => {}
        (None, _) => {
            return Err(format!(
                "task hub {hub} does not exist in this storage account (check --task-hub and \
                 the connection, or create it with `durabletask hub create`)"
            )
            .into());
        }
        (Some(0), _) => {
            return Err(format!(
                "task hub {hub} has a work-item queue but no control queue: it is incomplete \
                 (run `durabletask hub create --partition-count N` to repair it)"
            )
            .into());
        }
        (Some(n), Some(given)) if n != given => {
            return Err(format!(
                "task hub {hub} has {n} control queues, but --partition-count (or \
                 DTF_PARTITION_COUNT) says {given}; refusing: messages would go to the wrong \
                 control queue (omit it to use the hub's count)"
            )
            .into());
        }
        (Some(n), _) => settings.provider.partition_count = n,
    }
    Ok(settings)
}

async fn run(cli: Cli) -> Result<String, BoxError> {
    let settings = hub_settings(&cli).await?;
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
            if cli.json {
                to_json(&status)
            } else {
                Ok(hub_table(&status, &svc.partitions().await?))
            }
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
        Command::Entities(cmd) => {
            let client = TaskHubClient::new(std::sync::Arc::new(svc));
            run_entities(cmd, &client, cli.json).await
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    durabletask_cli::init_stderr_logging("warn");
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
            if let Some(partial) = e.downcast_ref::<FailedWithOutput>() {
                print!("{}", partial.stdout);
            }
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
    fn history_rows_show_failures_and_suspend_resume_reasons() {
        use durabletask_core::{FailureDetails, HistoryEvent};
        let at = OffsetDateTime::UNIX_EPOCH;
        let mut fd = FailureDetails::new("TaskFailedException", "Task 'Charge' (#2) failed");
        fd.inner_failure = Some(Box::new(FailureDetails::new("ActivityFailure", "card declined")));
        let rows = [
            EventKind::TaskFailed {
                task_scheduled_id: 2,
                reason: Some("card declined".into()),
                details: None,
                failure_details: Some(FailureDetails::new("ActivityFailure", "card declined")),
            },
            EventKind::ExecutionSuspended { reason: Some("maintenance".into()) },
            EventKind::ExecutionResumed { reason: None },
            EventKind::ExecutionCompleted {
                orchestration_status: OrchestrationStatus::Failed,
                result: None,
                failure_details: Some(fd),
            },
        ];
        let texts: Vec<String> =
            rows.into_iter().map(|k| event_details(&HistoryEvent::new(-1, at, k))).collect();
        assert_eq!(texts[0], "task 2 failed: ActivityFailure: card declined");
        assert_eq!(texts[1], "suspended: maintenance");
        assert_eq!(texts[2], "resumed");
        assert_eq!(
            texts[3],
            "Failed: TaskFailedException: Task 'Charge' (#2) failed (caused by ActivityFailure: card declined)"
        );
    }

    #[test]
    fn help_says_what_the_tool_does() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Operate a durabletask-rs task hub"), "{help}");
        assert!(!help.contains("and the demo"), "the crate description is not the tool's: {help}");
        for sub in ["hub", "instances", "entities"] {
            assert!(help.contains(sub), "{help}");
        }
    }

    #[test]
    fn purge_refuses_non_terminal_statuses() {
        let err = parse(&["instances", "purge", "--from", "7d", "--status", "Completed,Running"])
            .expect_err("Running is not terminal");
        assert!(err.to_string().contains("Running is not a terminal status"), "{err}");
        assert!(parse(&["instances", "purge", "--from", "7d", "--status", "Failed"]).is_ok());
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
            _ => panic!("not an instances command"),
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
        // Newest first.
        assert!(lines[2].starts_with("i-2") && lines[2].contains("Pending"), "{table}");
        assert!(lines[3].starts_with("i-1"), "{table}");

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

    fn entities(args: &[&str]) -> EntitiesCommand {
        let mut full = vec!["--emulator", "entities"];
        full.extend_from_slice(args);
        match parse(&full).unwrap().command {
            Command::Entities(c) => c,
            _ => panic!("not an entities command"),
        }
    }

    #[test]
    fn entity_ids_parse_or_are_refused() {
        let EntitiesCommand::Signal { entity, operation, input } =
            entities(&["signal", "@Counter@a@b", "add", "--input", "5"])
        else {
            panic!("not a signal")
        };
        let id = entity.id().unwrap();
        assert_eq!((id.name(), id.key()), ("counter", "a@b"));
        assert_eq!((operation.as_str(), input.as_deref()), ("add", Some("5")));
        let EntitiesCommand::Signal { entity, operation, .. } =
            entities(&["signal", "add", "--name", "Counter", "--key", "x y"])
        else {
            panic!("not a signal")
        };
        assert_eq!(entity.id().unwrap().instance_id(), "@counter@x y");
        assert_eq!(operation, "add");
        let EntitiesCommand::Show { entity } = entities(&["show", "--name", "a@b", "--key", "k"])
        else {
            panic!("not a show")
        };
        assert!(entity.id().unwrap_err().to_string().contains("must not contain '@'"));
        let EntitiesCommand::Show { entity } = entities(&["show", "--name", "", "--key", "k"])
        else {
            panic!("not a show")
        };
        assert!(entity.id().unwrap_err().to_string().contains("must not be empty"));

        let refused = |args: &[&str]| {
            let mut full = vec!["--emulator", "entities"];
            full.extend_from_slice(args);
            parse(&full).unwrap_err().to_string()
        };
        assert!(refused(&["show", "@@k"]).contains("entity name must not be empty"));
        assert!(refused(&["show", "counter@k"]).contains("write @name@key"));
        assert!(refused(&["show", "@counter"]).contains("expected \"@name@key\""));
        assert!(refused(&["show", "@counter@a\u{1}"]).contains("forbidden character"));
        assert!(refused(&["show"]).contains("required"));
        assert!(refused(&["show", "@a@b", "--name", "a", "--key", "b"]).contains("cannot be used"));
        assert!(refused(&["show", "--name", "a"]).contains("--key"));
        assert!(refused(&["signal", "@a@b"]).contains("is an entity id, not an operation"));
        assert!(refused(&["signal", "@a@b", ""]).contains("must not be empty"));
        assert!(refused(&["list", "--top", "3", "--all"]).contains("cannot be used"));
    }

    fn counter(ctx: &mut durabletask_core::EntityContext<i64>) -> Result<(), EntityError> {
        match ctx.operation() {
            "add" => {
                let n: i64 = ctx.input()?;
                *ctx.state_mut() += n;
                Ok(())
            }
            "delete" => {
                ctx.delete_state();
                Ok(())
            }
            other => Err(EntityError::new(format!("Counter has no operation '{other}'"))),
        }
    }

    use durabletask_core::EntityError;

    #[tokio::test]
    async fn entity_commands_against_the_memory_provider() {
        use durabletask_core::{Dispatchers, Registry, RuntimeOptions, WorkerOptions};
        use durabletask_testkit::wait::wait_until;
        let svc = Arc::new(InMemoryOrchestrationService::default());
        let c = TaskHubClient::new(svc.clone());
        let options = WorkerOptions {
            fetch_timeout: Duration::from_millis(100),
            // Short, so that the clean-up may remove an entity deleted a moment ago.
            runtime: RuntimeOptions {
                entity_reorder_window: Duration::from_millis(300),
                ..RuntimeOptions::default()
            },
            ..WorkerOptions::default()
        };
        let worker = Dispatchers::start(
            svc,
            Registry::builder().entity("Counter", counter).build(),
            options,
        )
        .await
        .unwrap();
        let timeout = Duration::from_secs(30);

        let out =
            run_entities(entities(&["signal", "@Counter@a", "add", "--input", "5"]), &c, false)
                .await
                .unwrap();
        assert_eq!(out, "signal add sent to @counter@a\n");
        let out = run_entities(
            entities(&["signal", "add", "--name", "counter", "--key", "a", "--input", "2"]),
            &c,
            true,
        )
        .await
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"action": "signaled", "entity": "@counter@a", "operation": "add"})
        );
        let err =
            run_entities(entities(&["signal", "@counter@a", "add", "--input", "{x"]), &c, false)
                .await
                .unwrap_err();
        assert!(err.to_string().contains("--input is not valid JSON"), "{err}");
        for args in [
            ["signal", "@counter@b", "add", "--input", "1"],
            ["signal", "@counter@b", "delete", "--input", "null"],
        ] {
            run_entities(entities(&args), &c, false).await.unwrap();
        }

        let shown = wait_until(timeout, "@counter@a to reach 7", || async {
            let out = run_entities(entities(&["show", "@counter@a"]), &c, true).await.ok()?;
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            (v["state"] == 7).then_some(v)
        })
        .await;
        assert_eq!(shown["entity"], "@counter@a");
        assert_eq!(shown["exists"], true);
        assert_eq!(shown["backlog"], 0);
        assert!(shown["locked_by"].is_null(), "{shown}");
        let text = run_entities(entities(&["show", "@counter@a"]), &c, false).await.unwrap();
        assert!(text.contains("exists         yes"), "{text}");
        assert!(text.ends_with("state:\n7\n"), "{text}");

        // @counter@b was deleted: no state, an error that still prints its scheduler.
        let err = wait_until(timeout, "@counter@b to be deleted", || async {
            run_entities(entities(&["show", "@counter@b"]), &c, false).await.err()
        })
        .await;
        assert_eq!(err.to_string(), "entity '@counter@b' has no state (deleted, or never had any)");
        let partial = err.downcast_ref::<FailedWithOutput>().expect("prints the scheduler");
        assert!(partial.stdout.starts_with("entity @counter@b has no state"), "{}", partial.stdout);
        assert!(partial.stdout.contains("instance status  Running"), "{}", partial.stdout);
        let err = run_entities(entities(&["show", "@counter@nope"]), &c, false).await.unwrap_err();
        assert_eq!(err.to_string(), "entity '@counter@nope' not found");

        let table = run_entities(entities(&["list", "--with-state"]), &c, false).await.unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(
            lines[0]
                .starts_with("ENTITY      NAME     KEY  EXISTS  LOCKED BY  BACKLOG  LAST MODIFIED"),
            "{table}"
        );
        assert!(lines[0].ends_with("STATE"), "{table}");
        assert!(lines[2].starts_with("@counter@a  counter  a    yes"), "{table}");
        assert!(lines[2].ends_with("  7"), "{table}");
        let json = run_entities(entities(&["list", "--include-deleted"]), &c, true).await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let listed: Vec<(&str, bool)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["entity"].as_str().unwrap(), e["exists"].as_bool().unwrap()))
            .collect();
        assert_eq!(listed, [("@counter@a", true), ("@counter@b", false)]);
        assert!(v[0].get("state").is_none(), "no state without --with-state: {v}");
        let none = run_entities(entities(&["list", "--name", "other"]), &c, true).await.unwrap();
        assert_eq!(none, "[]\n");

        // Entities are instances, but `instances list` leaves them out unless asked.
        run_instances(cmd(&["start", "Hello", "--id", "o-1"]), &c, false).await.unwrap();
        let ids = |json: String| -> Vec<String> {
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            v.as_array()
                .unwrap()
                .iter()
                .map(|s| s["OrchestrationInstance"]["InstanceId"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(ids(run_instances(cmd(&["list"]), &c, true).await.unwrap()), ["o-1"]);
        let mut all =
            ids(run_instances(cmd(&["list", "--include-entities"]), &c, true).await.unwrap());
        all.sort();
        assert_eq!(all, ["@counter@a", "@counter@b", "o-1"]);

        let err = run_entities(entities(&["clean"]), &c, false).await.unwrap_err();
        assert!(err.to_string().contains("nothing to clean"), "{err}");
        // Summed over the calls: a call may ask the entity to complete and a later one purge it.
        let removed = std::cell::Cell::new(0);
        wait_until(timeout, "the clean-up to remove @counter@b", || async {
            let args = ["clean", "--remove-empty", "--wait", "5"];
            let out = run_entities(entities(&args), &c, true).await.unwrap();
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["orphaned_locks_released"], 0, "{v}");
            removed.set(removed.get() + v["empty_entities_removed"].as_u64().unwrap());
            (removed.get() >= 1).then_some(())
        })
        .await;
        assert_eq!(removed.get(), 1);
        let out = run_entities(
            entities(&["clean", "--remove-empty", "--release-orphaned-locks", "--wait", "0"]),
            &c,
            false,
        )
        .await
        .unwrap();
        assert_eq!(out, "removed 0 empty entities, released 0 orphaned lock(s)\n");
        let err = run_entities(entities(&["show", "@counter@b"]), &c, false).await.unwrap_err();
        assert_eq!(err.to_string(), "entity '@counter@b' not found");
        let text = run_entities(entities(&["show", "@counter@a"]), &c, false).await.unwrap();
        assert!(text.ends_with("state:\n7\n"), "{text}");

        worker.shutdown(Duration::from_secs(5)).await.unwrap();
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
        let owners = [PartitionStatus {
            control_queue: "samples-control-01".into(),
            owner: Some("worker-7".into()),
            next_owner: None,
            expires_at: None,
        }];
        let text = hub_table(&hub, &owners);
        assert!(text.starts_with("task hub Samples (exists; 2 partitions)\n"), "{text}");
        assert!(text.contains("samples-control-00  3"), "{text}");
        assert!(
            text.lines().any(|l| l.starts_with("samples-control-00") && l.ends_with("(none)")),
            "{text}"
        );
        assert!(
            text.lines().any(|l| l.starts_with("samples-control-01") && l.ends_with("worker-7")),
            "{text}"
        );
        assert!(text.contains("samples-workitems   5"), "{text}");
    }
}
