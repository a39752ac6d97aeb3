//! Pure work-item processing (DTF `TaskOrchestrationDispatcher.OnProcessWorkItemAsync`, minus I/O):
//! reconcile the new messages with the loaded history, replay, turn decisions into history events
//! and outbound messages, run continue-as-new generations in the same work item, and build the
//! instance state to checkpoint.

use time::OffsetDateTime;

use crate::actions::{CompletionAction, OrchestratorAction};
use crate::history::{
    EventKind, ExecutionStartedEvent, FailureDetails, HistoryEvent, NO_EVENT_ID,
    OrchestrationExecutionContext, OrchestrationInstance, ParentInstance, TaskMessage,
};
use crate::registry::Registry;
use crate::replay::{self, ReplayError};
use crate::state::{
    InvalidHistoryError, OrchestrationRuntimeState, OrchestrationState, OrchestrationStatus,
};

/// Knobs for [`process_work_item`].
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Keep activity and sub-orchestration inputs in the history copies of `TaskScheduled` /
    /// `SubOrchestrationInstanceCreated` (DTF `IncludeParameters`, default false).
    pub include_parameters: bool,
    /// How long an entity remembers a sender's stream after its last message, and how long a
    /// message waits for a missing predecessor (DTF `EntityMessageReorderWindowInMinutes`, 30).
    pub entity_reorder_window: std::time::Duration,
    /// The provider's message limit ([`crate::ProviderSettings::max_message_bytes`]; the
    /// dispatchers fill it in when `None`): an entity operation whose result or signal would not
    /// fit fails instead.
    pub max_message_bytes: Option<usize>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            include_parameters: false,
            entity_reorder_window: crate::entity::DEFAULT_REORDER_WINDOW,
            max_message_bytes: None,
        }
    }
}

/// The result of processing one orchestration work item.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkItemResult {
    /// Nothing to execute (no such instance, terminal instance, only stale or duplicate messages):
    /// the provider deletes the work item's messages and writes nothing else.
    Discard {
        /// Why (for logs).
        reason: String,
    },
    /// Persist this checkpoint.
    Checkpoint(Box<Checkpoint>),
}

/// Everything a provider must persist and send when completing an orchestration work item.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The execution's runtime state after this work item. If its `past_events()` is empty the
    /// execution is new (first run, recreation or continue-as-new): the provider **replaces** the
    /// stored history with `new_events()`. Otherwise it appends `new_events()` after the
    /// `past_events().len()` events it handed out.
    pub runtime_state: OrchestrationRuntimeState,
    /// `TaskScheduled` messages for the activity queue.
    pub activity_messages: Vec<TaskMessage>,
    /// Messages to orchestration instances (sub-orchestration starts, sent events, completion
    /// notices to a parent), delivered immediately.
    pub orchestrator_messages: Vec<TaskMessage>,
    /// `TimerFired` messages to this instance, to deliver no earlier than their `fire_at`.
    pub timer_messages: Vec<TaskMessage>,
    /// The instance row to write (status, output, custom status, times).
    pub state: OrchestrationState,
    /// Number of continue-as-new generations that ran inside this work item.
    pub generations_continued: u32,
    /// Write history before sending the outbound messages (the messages are recorded in the
    /// committed state and sent again by the next work item if the checkpoint dies in between).
    /// Entities set it: their outbound messages are numbered from the state of the batch, so a
    /// batch that is re-run in another composition would number them differently.
    pub commit_before_send: bool,
}

/// Why a work item could not be processed (the dispatcher abandons it with back-off).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// Replay could not start.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// The stored history is corrupt.
    #[error(transparent)]
    InvalidHistory(#[from] InvalidHistoryError),
    /// A batch for an entity this worker has not registered.
    #[error("entity '{0}' is not registered")]
    EntityNotRegistered(String),
}

/// Whether `start` is a sub-orchestration start from the same parent execution and task as the
/// execution `state` holds (a resend after the parent's checkpoint failed, not a new request).
fn resent_by_the_same_parent_task(
    state: &OrchestrationRuntimeState,
    start: &crate::history::ExecutionStartedEvent,
) -> bool {
    crate::admission::resent_by_the_same_parent_task(state.execution_started(), start)
}

/// Processes an orchestration work item: `state` is the history the provider loaded, `messages`
/// the batch, `now` the episode time and `new_id` a source of fresh execution ids.
///
/// Reconciliation follows DTF 2.2.3: the first `ExecutionStarted` is processed first; a duplicate
/// start (same execution id) is dropped; a start with a different execution id replaces a
/// terminal execution (recreation; not when it is a sub-orchestration start that the same parent
/// execution and task sent again) or, for top-level starts, any execution; other messages whose
/// non-empty execution id differs from the current execution are dropped.
///
/// # Errors
/// [`ProcessError`] when the orchestration is not registered or the history is corrupt.
pub fn process_work_item(
    registry: &Registry,
    state: OrchestrationRuntimeState,
    messages: Vec<TaskMessage>,
    now: OffsetDateTime,
    options: &RuntimeOptions,
    new_id: &mut dyn FnMut() -> String,
) -> Result<WorkItemResult, ProcessError> {
    process_work_item_after(registry, state, messages, now, options, new_id, false)
}

/// [`process_work_item`] for a locked work item: also knows whether the instance's last
/// checkpoint finished ([`crate::OrchestrationWorkItem::previous_checkpoint_finished`]).
///
/// # Errors
/// As [`process_work_item`].
pub fn process_locked_work_item(
    registry: &Registry,
    work_item: &crate::OrchestrationWorkItem,
    now: OffsetDateTime,
    options: &RuntimeOptions,
    new_id: &mut dyn FnMut() -> String,
) -> Result<WorkItemResult, ProcessError> {
    process_work_item_after(
        registry,
        work_item.runtime_state.clone(),
        work_item.new_messages.clone(),
        now,
        options,
        new_id,
        work_item.previous_checkpoint_finished,
    )
}

fn process_work_item_after(
    registry: &Registry,
    state: OrchestrationRuntimeState,
    messages: Vec<TaskMessage>,
    now: OffsetDateTime,
    options: &RuntimeOptions,
    new_id: &mut dyn FnMut() -> String,
    previous_checkpoint_finished: bool,
) -> Result<WorkItemResult, ProcessError> {
    let now = crate::clock::storage_precision(now);
    if messages
        .first()
        .is_some_and(|m| crate::entity::is_entity_instance(&m.orchestration_instance.instance_id))
    {
        return crate::entity::process_entity_work_item(
            registry,
            state,
            messages,
            now,
            options,
            previous_checkpoint_finished,
            new_id,
        );
    }
    process_orchestration(registry, state, messages, now, options, new_id)
}

fn process_orchestration(
    registry: &Registry,
    mut state: OrchestrationRuntimeState,
    mut messages: Vec<TaskMessage>,
    now: OffsetDateTime,
    options: &RuntimeOptions,
    new_id: &mut dyn FnMut() -> String,
) -> Result<WorkItemResult, ProcessError> {
    // 1. ExecutionStarted first.
    if let Some(pos) =
        messages.iter().position(|m| matches!(m.event.kind, EventKind::ExecutionStarted(_)))
        && pos > 0
    {
        let m = messages.remove(pos);
        messages.insert(0, m);
    }

    // 2. Recreation: a start for a different execution replaces a finished (or, top-level, any)
    //    execution; the provider persists the new execution from row 0. Not a sub-orchestration
    //    start sent again by the same parent task: a parent whose checkpoint failed after sending
    //    re-runs its episode and sends the start once more with a new execution id; the child it
    //    already ran to completion answered that task, so running it again would repeat its work.
    if let Some(EventKind::ExecutionStarted(s)) = messages.first().map(|m| &m.event.kind)
        && let Some(current) = state.execution_id()
        && s.orchestration_instance.execution_id.as_deref() != Some(current)
        && (state.is_completed() || s.parent_instance.is_none())
        && !resent_by_the_same_parent_task(&state, s)
    {
        state = OrchestrationRuntimeState::new();
    }

    if state.execution_started().is_none()
        && !messages.iter().any(|m| matches!(m.event.kind, EventKind::ExecutionStarted(_)))
    {
        return Ok(WorkItemResult::Discard {
            reason: "No such instance (no ExecutionStarted in history or batch)".into(),
        });
    }
    if let Some(status) = state.status()
        && state.is_completed()
    {
        return Ok(WorkItemResult::Discard { reason: format!("Instance is {status}") });
    }

    // 3. Episode marker, then the messages that belong to this execution.
    state.add_event(HistoryEvent::new(NO_EVENT_ID, now, EventKind::OrchestratorStarted))?;
    let mut applied = 0usize;
    for m in messages {
        match &m.event.kind {
            EventKind::ExecutionStarted(_) if state.execution_started().is_some() => {
                tracing::debug!(instance_id = %m.orchestration_instance.instance_id, "Dropping duplicate ExecutionStarted");
                continue;
            }
            _ => {}
        }
        if let (Some(target), Some(current)) =
            (m.orchestration_instance.execution_id.as_deref(), state.execution_id())
            && !target.is_empty()
            && target != current
            && !matches!(m.event.kind, EventKind::ExecutionStarted(_))
        {
            tracing::debug!(
                instance_id = %m.orchestration_instance.instance_id,
                execution_id = %current,
                message_execution_id = %target,
                event_type = %m.event.event_type(),
                "DiscardingMessage: ExecutionId does not match current executionId"
            );
            continue;
        }
        state.add_event(m.event)?;
        applied += 1;
    }
    if applied == 0 {
        return Ok(WorkItemResult::Discard {
            reason: "All messages were stale or duplicates".into(),
        });
    }

    let mut activity_messages = Vec::new();
    let mut orchestrator_messages = Vec::new();
    let mut timer_messages = Vec::new();
    let mut generations_continued = 0u32;

    loop {
        let result = replay::execute(registry, state.past_events(), state.new_events())?;
        // As DTF's executor: every event it processed is marked played, except
        // `OrchestratorStarted`, which only sets the orchestration's clock (DTF skips it).
        for e in state.new_events_mut() {
            if !matches!(e.kind, EventKind::OrchestratorStarted | EventKind::OrchestratorCompleted)
            {
                e.is_played = true;
            }
        }
        let started = state
            .execution_started()
            .cloned()
            .ok_or_else(|| InvalidHistoryError("missing ExecutionStarted".into()))?;
        let instance = started.orchestration_instance.clone();
        let mut continued: Option<OrchestrationRuntimeState> = None;
        for action in result.actions {
            match action {
                OrchestratorAction::ScheduleTask { id, name, version, input } => {
                    state.add_event(HistoryEvent::new(
                        id,
                        now,
                        EventKind::TaskScheduled {
                            name: name.clone(),
                            version: version.clone(),
                            input: if options.include_parameters { input.clone() } else { None },
                            tags: None,
                        },
                    ))?;
                    let mut msg = TaskMessage::new(
                        instance.clone(),
                        HistoryEvent::new(
                            id,
                            now,
                            EventKind::TaskScheduled { name, version, input, tags: None },
                        ),
                    );
                    msg.orchestration_execution_context = started
                        .tags
                        .clone()
                        .map(|t| OrchestrationExecutionContext { orchestration_tags: t });
                    activity_messages.push(msg);
                }
                OrchestratorAction::CreateTimer { id, fire_at } => {
                    state.add_event(HistoryEvent::new(
                        id,
                        now,
                        EventKind::TimerCreated { fire_at },
                    ))?;
                    timer_messages.push(TaskMessage::new(
                        instance.clone(),
                        HistoryEvent::new(
                            NO_EVENT_ID,
                            now,
                            EventKind::TimerFired { timer_id: id, fire_at },
                        ),
                    ));
                }
                OrchestratorAction::CreateSubOrchestration {
                    id,
                    name,
                    version,
                    instance_id,
                    input,
                } => {
                    state.add_event(HistoryEvent::new(
                        id,
                        now,
                        EventKind::SubOrchestrationInstanceCreated {
                            name: name.clone(),
                            version: version.clone(),
                            instance_id: instance_id.clone(),
                            input: if options.include_parameters { input.clone() } else { None },
                            tags: None,
                        },
                    ))?;
                    let child = OrchestrationInstance::with_execution(instance_id, new_id());
                    let mut start = ExecutionStartedEvent::new(child.clone(), name, input);
                    start.version = version;
                    start.parent_instance = Some(ParentInstance {
                        name: Some(started.name.clone()),
                        version: started.version.clone(),
                        orchestration_instance: instance.clone(),
                        task_schedule_id: id,
                    });
                    start.tags = started.tags.clone().map(|mut t| {
                        t.remove("FireAndForget");
                        t
                    });
                    let mut msg = TaskMessage::new(
                        child,
                        HistoryEvent::new(NO_EVENT_ID, now, EventKind::ExecutionStarted(start)),
                    );
                    msg.orchestration_execution_context = started
                        .tags
                        .clone()
                        .map(|t| OrchestrationExecutionContext { orchestration_tags: t });
                    orchestrator_messages.push(msg);
                }
                OrchestratorAction::SendEvent { id, instance: target, name, data } => {
                    state.add_event(HistoryEvent::new(
                        id,
                        now,
                        EventKind::EventSent {
                            instance_id: target.instance_id.clone(),
                            name: name.clone(),
                            input: data.clone(),
                        },
                    ))?;
                    // No instance can have an invalid id: drop the event here (recorded as sent,
                    // so replay stays deterministic) rather than hand every provider a message
                    // it would refuse or could never deliver.
                    if let Err(e) = crate::ids::validate_instance_id(&target.instance_id) {
                        tracing::warn!(instance_id = %instance.instance_id, target = ?target.instance_id, error = %e, "DiscardingMessage: event to an invalid instance id");
                        continue;
                    }
                    orchestrator_messages.push(TaskMessage::new(
                        target,
                        HistoryEvent::new(
                            NO_EVENT_ID,
                            now,
                            EventKind::EventRaised { name, input: data },
                        ),
                    ));
                }
                OrchestratorAction::Complete(c) => {
                    if c.status == OrchestrationStatus::ContinuedAsNew {
                        continued = Some(new_generation(&started, &c, now, new_id)?);
                    } else {
                        if let Some(parent) = &started.parent_instance {
                            orchestrator_messages.push(parent_notice(parent, &c, now));
                        }
                        state.add_event(HistoryEvent::new(
                            c.id,
                            now,
                            EventKind::ExecutionCompleted {
                                orchestration_status: c.status,
                                result: c.result,
                                failure_details: c.failure_details,
                            },
                        ))?;
                    }
                }
            }
        }
        match continued {
            Some(next) => {
                generations_continued += 1;
                tracing::debug!(
                    instance_id = %instance.instance_id,
                    execution_id = next.execution_id().unwrap_or_default(),
                    "Continuing as new in the same work item"
                );
                state = next;
            }
            None => {
                state.add_event(HistoryEvent::new(
                    NO_EVENT_ID,
                    now,
                    EventKind::OrchestratorCompleted,
                ))?;
                let orchestration_state = state
                    .to_state(result.custom_status, now)
                    .ok_or_else(|| InvalidHistoryError("missing ExecutionStarted".into()))?;
                return Ok(WorkItemResult::Checkpoint(Box::new(Checkpoint {
                    runtime_state: state,
                    activity_messages,
                    orchestrator_messages,
                    timer_messages,
                    state: orchestration_state,
                    generations_continued,
                    commit_before_send: false,
                })));
            }
        }
    }
}

fn new_generation(
    started: &ExecutionStartedEvent,
    c: &CompletionAction,
    now: OffsetDateTime,
    new_id: &mut dyn FnMut() -> String,
) -> Result<OrchestrationRuntimeState, InvalidHistoryError> {
    let mut next = started.clone();
    next.orchestration_instance = OrchestrationInstance::with_execution(
        started.orchestration_instance.instance_id.clone(),
        new_id(),
    );
    next.input = c.result.clone();
    if let Some(v) = &c.new_version {
        next.version = Some(v.clone());
    }
    next.scheduled_start_time = None;
    next.generation = Some(started.generation.unwrap_or(0) + 1);
    let mut state = OrchestrationRuntimeState::new();
    state.add_event(HistoryEvent::new(NO_EVENT_ID, now, EventKind::OrchestratorStarted))?;
    state.add_event(HistoryEvent::new(NO_EVENT_ID, now, EventKind::ExecutionStarted(next)))?;
    for e in &c.carryover_events {
        let mut e = e.clone();
        e.event_id = NO_EVENT_ID;
        e.is_played = false;
        state.add_event(e)?;
    }
    Ok(state)
}

fn parent_notice(
    parent: &ParentInstance,
    c: &CompletionAction,
    now: OffsetDateTime,
) -> TaskMessage {
    let tsid = parent.task_schedule_id;
    let kind = match c.status {
        OrchestrationStatus::Completed => EventKind::SubOrchestrationInstanceCompleted {
            task_scheduled_id: tsid,
            result: c.result.clone(),
        },
        OrchestrationStatus::Terminated => {
            let reason = c.result.clone().unwrap_or_default();
            EventKind::SubOrchestrationInstanceFailed {
                task_scheduled_id: tsid,
                reason: Some(reason.clone()),
                details: None,
                failure_details: Some(FailureDetails::new(
                    "OrchestrationTerminated",
                    format!("The sub-orchestration was terminated: {reason}"),
                )),
            }
        }
        _ => {
            let fd = c
                .failure_details
                .clone()
                .unwrap_or_else(|| FailureDetails::new("OrchestrationFailure", "failed"));
            EventKind::SubOrchestrationInstanceFailed {
                task_scheduled_id: tsid,
                reason: Some(fd.error_message.clone()),
                details: None,
                failure_details: Some(fd),
            }
        }
    };
    TaskMessage::new(
        parent.orchestration_instance.clone(),
        HistoryEvent::new(NO_EVENT_ID, now, kind),
    )
}
