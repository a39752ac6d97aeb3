//! Message admission: the one place that decides, for the messages pending for one instance,
//! its stored history and its Instances row, which messages run, which are deleted, which wait
//! (and for how long) and why. Both providers call [`admit`]; neither keeps a copy of the rules.
//!
//! The rules (DTF 2.x with DurableTask.AzureStorage's start de-duplication):
//! * **Top-level starts** are checked against the Instances row, which the client writes *after*
//!   it enqueues the start: a start of the row's execution runs (unless the row is terminal and
//!   the execution never started: terminated before it started); a start of another execution
//!   older than the row is stale and deleted; a start without a row, or newer than the row,
//!   waits for the client's row write (on its first delivery the row is read once more after a
//!   moment) and is deleted as an orphan after [`AdmissionRules::orphan_start_deliveries`].
//! * **Responses** (task, sub-orchestration, timer) whose scheduling event is not in the history
//!   arrived before the checkpoint that scheduled them became visible: they wait (DTF
//!   `ReceivedOutOfOrderMessage`), unless they belong to another execution or the instance has
//!   no history after [`AdmissionRules::zombie_deliveries`] (then the dispatcher drops them).
//! * **No history and no start**: an instance created with a delayed start (`Pending` row) is
//!   terminated directly when a terminate is among the messages, and otherwise the messages wait
//!   until its start is due; without such a row there is no instance and they are deleted.
//! * **Terminal history**: the messages are deleted, unless replaying terminal instances is
//!   allowed. When the row of the same execution disagrees with the terminal history (a worker
//!   died between the two writes) the row is rewritten from history first; if that fails the
//!   messages wait, because they are what brings the instance back for another repair.
//!
//! * **Entities** (`@name@key`) skip the last two rules: an entity starts with its first message
//!   and starts afresh after a clean-up completed it.
//!
//! Waits that grow with the delivery count use DTF's back-off ([`dtf_abandon`]).
//!
//! A start of another execution (a new instance, a recreation) bypasses the last two rules: the
//! dispatcher decides recreations ([`crate::runtime::process_work_item`]). A sub-orchestration
//! start that the same parent task sent again does not: the dispatcher would drop it, and with
//! it a response batched beside it that was needed to repair a terminal instance's row.

use std::fmt;
use std::time::Duration;

use time::OffsetDateTime;

use crate::history::{EventKind, HistoryEvent, TaskMessage};
use crate::state::{OrchestrationState, OrchestrationStatus};

use crate::backoff::dtf_abandon;

/// The provider-specific knobs of the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionRules {
    /// De-duplicate top-level starts against the Instances row (DTF
    /// `DisableExecutionStartedDeduplication` off, the default).
    pub dedupe_starts: bool,
    /// Let messages to a terminal instance run (`AllowReplayingTerminalInstances`).
    pub allow_replaying_terminal: bool,
    /// Deliveries after which a start whose row never appears (or never catches up) is deleted.
    pub orphan_start_deliveries: u64,
    /// Deliveries after which a response to an instance without history is left to the
    /// dispatcher (which drops it) instead of waiting for its scheduling event.
    pub zombie_deliveries: u64,
    /// The longest wait one deferral may ask for (the queue's visibility limit).
    pub max_defer: Duration,
}

impl Default for AdmissionRules {
    fn default() -> Self {
        Self {
            dedupe_starts: true,
            allow_replaying_terminal: false,
            orphan_start_deliveries: 10,
            zombie_deliveries: 5,
            max_defer: Duration::from_secs(7 * 24 * 3600 - 60),
        }
    }
}

/// What the admission needs to know of the Instances row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowView {
    /// The row's execution.
    pub execution_id: Option<String>,
    /// Its status.
    pub status: OrchestrationStatus,
    /// Its `CreatedTime` (the newest start's timestamp).
    pub created_time: OffsetDateTime,
    /// A delayed start's due time.
    pub scheduled_start_time: Option<OffsetDateTime>,
}

impl From<&OrchestrationState> for RowView {
    fn from(s: &OrchestrationState) -> Self {
        Self {
            execution_id: s.orchestration_instance.execution_id.clone(),
            status: s.orchestration_status,
            created_time: s.created_time,
            scheduled_start_time: s.scheduled_start_time,
        }
    }
}

/// The Instances row as far as the provider knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowState {
    /// Not read (the provider reads it only when [`admit`] asks).
    Unknown,
    /// Read: there is none.
    Absent,
    /// Read.
    Present(RowView),
}

impl RowState {
    fn view(&self) -> Option<&RowView> {
        match self {
            Self::Present(r) => Some(r),
            _ => None,
        }
    }
}

/// One pending message.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The message.
    pub message: &'a TaskMessage,
    /// How often it has been delivered (1 on its first delivery).
    pub deliveries: u64,
}

/// Everything [`admit`] looks at.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionInput<'a> {
    /// The pending messages, in delivery order.
    pub messages: &'a [Candidate<'a>],
    /// The stored history of the current execution (empty: none).
    pub history: &'a [HistoryEvent],
    /// The Instances row.
    pub row: &'a RowState,
    /// Whether the row was already read again after [`Admission::NeedsRow`] asked for a moment's
    /// wait.
    pub row_reread: bool,
    /// Now.
    pub now: OffsetDateTime,
    /// The knobs.
    pub rules: &'a AdmissionRules,
}

/// Why a message is deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiscardReason {
    /// A start of another execution older than the row: superseded.
    StaleStart,
    /// A start whose row never appeared or never caught up.
    OrphanStart,
    /// A start of an execution that was terminated before it started.
    TerminatedBeforeStart,
    /// No history, no start and no pending row.
    NoSuchInstance,
    /// The instance is terminal.
    InstanceTerminal(OrchestrationStatus),
    /// Consumed by terminating a created-but-not-started instance directly.
    TerminatedWhilePending,
}

impl DiscardReason {
    /// The DTF log event name.
    pub fn event_name(&self) -> &'static str {
        match self {
            Self::StaleStart | Self::OrphanStart => "DuplicateMessageDetected",
            _ => "DiscardingWorkItem",
        }
    }
}

impl fmt::Display for DiscardReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StaleStart => {
                f.write_str("stale ExecutionStarted (older than the Instances row)")
            }
            Self::OrphanStart => f.write_str("start without an Instances row"),
            Self::TerminatedBeforeStart => f.write_str("instance was terminated before it started"),
            Self::NoSuchInstance => f.write_str("no such instance"),
            Self::InstanceTerminal(s) => write!(f, "instance is {}", s.as_str()),
            Self::TerminatedWhilePending => f.write_str("terminated before its delayed start"),
        }
    }
}

/// Why a message waits.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeferReason {
    /// A start whose Instances row is not written yet.
    StartAwaitingRow,
    /// A start newer than the row (the client has not replaced the row yet).
    StartNewerThanRow,
    /// A response whose scheduling event (`task_event_id`) is not in the history yet.
    OutOfOrder {
        /// The scheduling event's id.
        task_event_id: i32,
    },
    /// The instance was created with a delayed start that is not due.
    StartNotDue,
    /// The row of a terminal instance must be repaired first and the repair failed.
    RowRepairPending,
}

impl DeferReason {
    /// The DTF log event name.
    pub fn event_name(&self) -> &'static str {
        match self {
            Self::OutOfOrder { .. } => "ReceivedOutOfOrderMessage",
            _ => "AbandoningMessage",
        }
    }
}

impl DeferReason {
    /// A wait of ordinary operation, not a sign of trouble.
    pub fn is_routine(&self) -> bool {
        matches!(self, Self::StartAwaitingRow | Self::StartNewerThanRow | Self::StartNotDue)
    }
}

impl fmt::Display for DeferReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StartAwaitingRow => f.write_str("start waits for its Instances row"),
            Self::StartNewerThanRow => f.write_str("start waits for the Instances row to catch up"),
            Self::OutOfOrder { task_event_id } => {
                write!(f, "response to event {task_event_id}, not in history yet")
            }
            Self::StartNotDue => f.write_str("delayed start not due"),
            Self::RowRepairPending => f.write_str("Instances row repair pending"),
        }
    }
}

/// The fate of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to the dispatcher.
    Run,
    /// Delete it.
    Discard(DiscardReason),
    /// Make it visible again after `after`.
    Defer {
        /// The wait.
        after: Duration,
        /// Why.
        reason: DeferReason,
    },
}

/// A write the provider performs for the instance as part of the decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceAction {
    /// Terminate the created-but-not-started instance: row status `Terminated`, output
    /// `reason`, completed now.
    TerminatePending {
        /// The terminate's reason.
        reason: Option<String>,
    },
    /// Rewrite the Instances row from the terminal history; on failure call
    /// [`Decision::repair_failed`].
    RepairRow {
        /// The history's terminal status.
        status: OrchestrationStatus,
    },
}

/// A decision: one verdict per message, in input order, and at most one instance write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// One per input message.
    pub verdicts: Vec<Verdict>,
    /// The instance write to perform.
    pub action: Option<InstanceAction>,
    deliveries: Vec<u64>,
}

impl Decision {
    /// Whether anything runs.
    pub fn runs(&self) -> bool {
        self.verdicts.contains(&Verdict::Run)
    }

    /// The row repair of [`InstanceAction::RepairRow`] failed: the messages it would have
    /// deleted wait instead (back-off by delivery count, at most 10 s), so that they bring the
    /// instance back for another repair.
    pub fn repair_failed(&mut self) {
        if !matches!(self.action, Some(InstanceAction::RepairRow { .. })) {
            return;
        }
        self.action = None;
        for (v, d) in self.verdicts.iter_mut().zip(&self.deliveries) {
            if matches!(v, Verdict::Discard(DiscardReason::InstanceTerminal(_))) {
                *v = Verdict::Defer {
                    after: dtf_abandon(*d).min(Duration::from_secs(10)),
                    reason: DeferReason::RowRepairPending,
                };
            }
        }
    }

    /// Logs every message that does not run, under its DTF event name: at warn level, except
    /// the waits of ordinary operation (a start whose row write is in flight, a delayed start
    /// not due yet), which are debug.
    pub fn log(&self, instance_id: &str, messages: &[Candidate<'_>]) {
        for (v, c) in self.verdicts.iter().zip(messages) {
            let event_type = c.message.event.event_type();
            match v {
                Verdict::Run => {}
                Verdict::Discard(r) => tracing::warn!(
                    instance_id,
                    event_type = %event_type,
                    deliveries = c.deliveries,
                    "{}: {r}; deleting the message",
                    r.event_name()
                ),
                Verdict::Defer { after, reason } => {
                    let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
                    if reason.is_routine() {
                        tracing::debug!(
                            instance_id, event_type = %event_type, deliveries = c.deliveries,
                            after_ms, "{}: {reason}; deferring the message", reason.event_name()
                        );
                    } else {
                        tracing::warn!(
                            instance_id, event_type = %event_type, deliveries = c.deliveries,
                            after_ms, "{}: {reason}; deferring the message", reason.event_name()
                        );
                    }
                }
            }
        }
    }
}

/// What [`admit`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Read the Instances row (again) after waiting `after`, then ask again with it (and
    /// `row_reread` set when `after` was not zero).
    NeedsRow {
        /// How long to wait before reading (a moment for a client's row write in flight).
        after: Duration,
    },
    /// The decision.
    Decided(Decision),
}

/// A top-level start (not a sub-orchestration's).
pub fn is_top_level_start(m: &TaskMessage) -> bool {
    matches!(&m.event.kind, EventKind::ExecutionStarted(s) if s.parent_instance.is_none())
}

/// The scheduling event a response answers: `(event id, is a timer)`.
pub fn response_target(m: &TaskMessage) -> Option<(i32, bool)> {
    match &m.event.kind {
        EventKind::TaskCompleted { task_scheduled_id, .. }
        | EventKind::TaskFailed { task_scheduled_id, .. }
        | EventKind::SubOrchestrationInstanceCompleted { task_scheduled_id, .. }
        | EventKind::SubOrchestrationInstanceFailed { task_scheduled_id, .. } => {
            Some((*task_scheduled_id, false))
        }
        EventKind::TimerFired { timer_id, .. } => Some((*timer_id, true)),
        _ => None,
    }
}

/// Whether `events` hold the scheduling event (`TaskScheduled`, `SubOrchestrationInstanceCreated`
/// or, for timers, `TimerCreated`) with id `target`.
pub fn scheduled_in(events: &[HistoryEvent], target: i32, is_timer: bool) -> bool {
    events.iter().any(|e| {
        e.event_id == target
            && if is_timer {
                matches!(e.kind, EventKind::TimerCreated { .. })
            } else {
                matches!(
                    e.kind,
                    EventKind::TaskScheduled { .. }
                        | EventKind::SubOrchestrationInstanceCreated { .. }
                )
            }
    })
}

/// Whether a response in `messages` answers a scheduling event missing from `history` (a
/// cached history may be stale: read storage before deciding).
pub fn answers_unknown_events(history: &[HistoryEvent], messages: &[Candidate<'_>]) -> bool {
    messages
        .iter()
        .filter_map(|c| response_target(c.message))
        .any(|(target, is_timer)| !scheduled_in(history, target, is_timer))
}

/// The `ExecutionStarted` of the execution the history holds.
pub fn history_start(events: &[HistoryEvent]) -> Option<&crate::history::ExecutionStartedEvent> {
    events.iter().find_map(|e| match &e.kind {
        EventKind::ExecutionStarted(s) => Some(s),
        _ => None,
    })
}

/// The execution the history holds.
pub fn history_execution(events: &[HistoryEvent]) -> Option<&str> {
    history_start(events).and_then(|s| s.orchestration_instance.execution_id.as_deref())
}

/// The terminal status of the history, if it has completed.
pub fn history_terminal_status(events: &[HistoryEvent]) -> Option<OrchestrationStatus> {
    events.iter().rev().find_map(|e| match &e.kind {
        EventKind::ExecutionCompleted { orchestration_status, .. } => Some(*orchestration_status),
        _ => None,
    })
}

/// Whether `start` is a sub-orchestration start from the same parent execution and task as
/// `current` (the stored execution's start): a resend after the parent's checkpoint failed, not
/// a request for a new execution.
pub fn resent_by_the_same_parent_task(
    current: Option<&crate::history::ExecutionStartedEvent>,
    start: &crate::history::ExecutionStartedEvent,
) -> bool {
    let (Some(new), Some(old)) =
        (start.parent_instance.as_ref(), current.and_then(|s| s.parent_instance.as_ref()))
    else {
        return false;
    };
    new.orchestration_instance == old.orchestration_instance
        && new.task_schedule_id == old.task_schedule_id
}

/// Whether `m` asks for a new execution the dispatcher will start: a start of another execution
/// than the stored one, unless it is the same parent task's sub-orchestration start sent again
/// (which the dispatcher drops, so it must not exempt the batch from the instance rules).
fn starts_new_execution(m: &TaskMessage, history: &[HistoryEvent], current: Option<&str>) -> bool {
    let EventKind::ExecutionStarted(s) = &m.event.kind else { return false };
    if current.is_some() && s.orchestration_instance.execution_id.as_deref() == current {
        return false;
    }
    !resent_by_the_same_parent_task(history_start(history), s)
}

fn start_execution(m: &TaskMessage) -> Option<Option<&str>> {
    match &m.event.kind {
        EventKind::ExecutionStarted(s) => Some(s.orchestration_instance.execution_id.as_deref()),
        _ => None,
    }
}

/// Decides the fate of an instance's pending messages (see the module docs for the rules).
pub fn admit(input: &AdmissionInput<'_>) -> Admission {
    let rules = input.rules;
    let current = history_execution(input.history);
    let mut verdicts = Vec::with_capacity(input.messages.len());
    for c in input.messages {
        let verdict = if rules.dedupe_starts && is_top_level_start(c.message) {
            match start_verdict(input, c, current) {
                Ok(v) => v,
                Err(need) => return need,
            }
        } else {
            response_verdict(input, c, current)
        };
        verdicts.push(verdict);
    }
    let mut decision = Decision {
        verdicts,
        action: None,
        deliveries: input.messages.iter().map(|c| c.deliveries).collect(),
    };
    // A start of another execution (new instance, recreation) is the dispatcher's to decide.
    let starts_another = input.messages.iter().zip(&decision.verdicts).any(|(c, v)| {
        *v == Verdict::Run && starts_new_execution(c.message, input.history, current)
    });
    if decision.runs()
        && !starts_another
        && let Err(need) = executability(input, current, &mut decision)
    {
        return need;
    }
    Admission::Decided(decision)
}

fn start_verdict(
    input: &AdmissionInput<'_>,
    c: &Candidate<'_>,
    current: Option<&str>,
) -> Result<Verdict, Admission> {
    let rules = input.rules;
    let exec = start_execution(c.message).flatten();
    let wait = || Duration::from_millis(500 * c.deliveries.max(1));
    Ok(match input.row {
        RowState::Unknown => return Err(Admission::NeedsRow { after: Duration::ZERO }),
        RowState::Absent if c.deliveries <= 1 && !input.row_reread => {
            // The client enqueues before it writes the row: give it a moment, once.
            return Err(Admission::NeedsRow { after: Duration::from_millis(30) });
        }
        RowState::Absent if c.deliveries >= rules.orphan_start_deliveries => {
            Verdict::Discard(DiscardReason::OrphanStart)
        }
        RowState::Absent => Verdict::Defer { after: wait(), reason: DeferReason::StartAwaitingRow },
        RowState::Present(r) if r.execution_id.as_deref() == exec => {
            if r.status.is_terminal() && current != exec {
                Verdict::Discard(DiscardReason::TerminatedBeforeStart)
            } else {
                Verdict::Run
            }
        }
        RowState::Present(r)
            if r.created_time > c.message.event.timestamp
                || c.deliveries >= rules.orphan_start_deliveries =>
        {
            Verdict::Discard(DiscardReason::StaleStart)
        }
        RowState::Present(_) => {
            Verdict::Defer { after: wait(), reason: DeferReason::StartNewerThanRow }
        }
    })
}

fn response_verdict(
    input: &AdmissionInput<'_>,
    c: &Candidate<'_>,
    current: Option<&str>,
) -> Verdict {
    let Some((target, is_timer)) = response_target(c.message) else { return Verdict::Run };
    let in_order = scheduled_in(input.history, target, is_timer);
    let zombie = input.history.is_empty() && c.deliveries > input.rules.zombie_deliveries;
    let other_exec = c
        .message
        .orchestration_instance
        .execution_id
        .as_deref()
        .is_some_and(|e| !e.is_empty() && current.is_some_and(|cur| cur != e));
    if in_order || zombie || other_exec {
        return Verdict::Run;
    }
    Verdict::Defer {
        after: dtf_abandon(c.deliveries).min(Duration::from_secs(30)),
        reason: DeferReason::OutOfOrder { task_event_id: target },
    }
}

/// The instance-level rules for the messages that would run: no history, terminal history.
fn executability(
    input: &AdmissionInput<'_>,
    current: Option<&str>,
    decision: &mut Decision,
) -> Result<(), Admission> {
    // Entities start on their first message and start afresh after a clean-up completed them.
    if input.messages.first().is_some_and(|c| {
        crate::entity::is_entity_instance(&c.message.orchestration_instance.instance_id)
    }) {
        return Ok(());
    }
    let running = |d: &mut Decision, to: &dyn Fn(&Candidate<'_>) -> Verdict| {
        for (v, c) in d.verdicts.iter_mut().zip(input.messages) {
            if *v == Verdict::Run {
                *v = to(c);
            }
        }
    };
    if current.is_none() {
        let row = match input.row {
            RowState::Unknown => return Err(Admission::NeedsRow { after: Duration::ZERO }),
            r => r.view(),
        };
        match row {
            Some(r) if r.status == OrchestrationStatus::Pending => {
                let terminate = input.messages.iter().zip(&decision.verdicts).find_map(|(c, v)| {
                    match (&c.message.event.kind, v) {
                        (EventKind::ExecutionTerminated { input }, Verdict::Run) => {
                            Some(input.clone())
                        }
                        _ => None,
                    }
                });
                if let Some(reason) = terminate {
                    decision.action = Some(InstanceAction::TerminatePending { reason });
                    running(decision, &|_| Verdict::Discard(DiscardReason::TerminatedWhilePending));
                } else {
                    let due = r
                        .scheduled_start_time
                        .and_then(|t| Duration::try_from(t - input.now).ok())
                        .unwrap_or(Duration::from_secs(1))
                        .clamp(Duration::from_millis(500), input.rules.max_defer);
                    running(decision, &|_| Verdict::Defer {
                        after: due,
                        reason: DeferReason::StartNotDue,
                    });
                }
            }
            _ => running(decision, &|_| Verdict::Discard(DiscardReason::NoSuchInstance)),
        }
        return Ok(());
    }
    let Some(status) = history_terminal_status(input.history) else { return Ok(()) };
    if input.rules.allow_replaying_terminal {
        return Ok(());
    }
    let agrees = match input.row {
        RowState::Unknown => return Err(Admission::NeedsRow { after: Duration::ZERO }),
        RowState::Absent => false,
        RowState::Present(r) => r.execution_id.as_deref() != current || r.status == status,
    };
    if !agrees {
        decision.action = Some(InstanceAction::RepairRow { status });
    }
    running(decision, &|_| Verdict::Discard(DiscardReason::InstanceTerminal(status)));
    Ok(())
}

#[cfg(test)]
#[path = "admission_tests.rs"]
mod tests;
