//! The DTF history model: [`HistoryEvent`], its [`EventKind`]s, [`EventType`] ordinals and the
//! supporting data types ([`OrchestrationInstance`], [`ParentInstance`], [`FailureDetails`],
//! [`TaskMessage`]).
//!
//! Serde uses DTF member names (PascalCase) and writes the event type by *name*
//! (`"EventType":"TaskScheduled"`), as the Azure Storage History table does; the queue wire format
//! uses the number, available through [`EventType::as_i32`]. Payloads (inputs, outputs, results)
//! are JSON text produced by `serde_json` from the user's type, or `None` for a null value.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::state::OrchestrationStatus;

/// `EventId` used for events that *arrive* (responses, client messages, markers).
pub const NO_EVENT_ID: i32 = -1;

/// Timer id DTF uses to split a decision set (`FrameworkConstants.FakeTimerIdToSplitDecision`).
/// The replay engine skips echoes carrying it.
pub const FAKE_TIMER_ID_TO_SPLIT_DECISION: i32 = -100;

/// One entry of an orchestration's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HistoryEvent {
    /// Sequence number: the action id for decision events, `-1` for arriving events and markers.
    pub event_id: i32,
    /// Set once the replay engine has processed the event (persisted, never read back by logic).
    #[serde(default)]
    pub is_played: bool,
    /// When the event object was built (UTC). `OrchestratorStarted`'s timestamp is the episode's
    /// deterministic "now".
    #[serde(with = "time::serde::rfc3339")]
    pub timestamp: OffsetDateTime,
    /// The event type and its fields.
    #[serde(flatten)]
    pub kind: EventKind,
}

impl HistoryEvent {
    /// A new event with the given id, timestamp and kind, not yet played.
    pub fn new(event_id: i32, timestamp: OffsetDateTime, kind: EventKind) -> Self {
        Self { event_id, is_played: false, timestamp, kind }
    }

    /// The DTF event type of this event.
    pub fn event_type(&self) -> EventType {
        self.kind.event_type()
    }

    /// DTF's `Utils.GetTaskEventId`: `TaskScheduledId`/`TimerId` for responses, `EventId` for
    /// everything else.
    pub fn task_event_id(&self) -> i32 {
        match &self.kind {
            EventKind::TaskCompleted { task_scheduled_id, .. }
            | EventKind::TaskFailed { task_scheduled_id, .. }
            | EventKind::SubOrchestrationInstanceCompleted { task_scheduled_id, .. }
            | EventKind::SubOrchestrationInstanceFailed { task_scheduled_id, .. } => {
                *task_scheduled_id
            }
            EventKind::TimerFired { timer_id, .. } => *timer_id,
            _ => self.event_id,
        }
    }
}

/// One variant per DTF `EventType`, carrying that event class's `[DataMember]` fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "EventType", rename_all_fields = "PascalCase")]
#[non_exhaustive]
pub enum EventKind {
    /// First event of an execution.
    ExecutionStarted(ExecutionStartedEvent),
    /// The execution ended (Completed, Failed or Terminated).
    ExecutionCompleted {
        /// Final status.
        orchestration_status: OrchestrationStatus,
        /// Serialized output, or the reason for Terminated.
        #[serde(default)]
        result: Option<String>,
        /// Failure details when Failed.
        #[serde(default)]
        failure_details: Option<FailureDetails>,
    },
    /// Unused by DTF (ordinal 2), kept for completeness.
    ExecutionFailed,
    /// A terminate request (client or parent).
    ExecutionTerminated {
        /// The reason (DTF stores it in `Input`).
        #[serde(default)]
        input: Option<String>,
    },
    /// Decision echo: an activity was scheduled.
    TaskScheduled {
        /// Activity name.
        name: String,
        /// Activity version.
        #[serde(default)]
        version: Option<String>,
        /// Input; dropped from the history copy unless `include_parameters`.
        #[serde(default)]
        input: Option<String>,
        /// Tags.
        #[serde(default)]
        tags: Option<BTreeMap<String, String>>,
    },
    /// An activity completed.
    TaskCompleted {
        /// `EventId` of the matching `TaskScheduled`.
        task_scheduled_id: i32,
        /// Serialized result.
        #[serde(default)]
        result: Option<String>,
    },
    /// An activity failed.
    TaskFailed {
        /// `EventId` of the matching `TaskScheduled`.
        task_scheduled_id: i32,
        /// Failure message.
        #[serde(default)]
        reason: Option<String>,
        /// Optional details.
        #[serde(default)]
        details: Option<String>,
        /// Structured failure.
        #[serde(default)]
        failure_details: Option<FailureDetails>,
    },
    /// Decision echo: a sub-orchestration was started.
    SubOrchestrationInstanceCreated {
        /// Orchestration name.
        name: String,
        /// Orchestration version.
        #[serde(default)]
        version: Option<String>,
        /// Child instance id.
        instance_id: String,
        /// Input; dropped from the history copy unless `include_parameters`.
        #[serde(default)]
        input: Option<String>,
        /// Tags.
        #[serde(default)]
        tags: Option<BTreeMap<String, String>>,
    },
    /// A sub-orchestration completed.
    SubOrchestrationInstanceCompleted {
        /// `EventId` of the matching `SubOrchestrationInstanceCreated`.
        task_scheduled_id: i32,
        /// Serialized output.
        #[serde(default)]
        result: Option<String>,
    },
    /// A sub-orchestration failed or was terminated.
    SubOrchestrationInstanceFailed {
        /// `EventId` of the matching `SubOrchestrationInstanceCreated`.
        task_scheduled_id: i32,
        /// Failure message.
        #[serde(default)]
        reason: Option<String>,
        /// Optional details.
        #[serde(default)]
        details: Option<String>,
        /// Structured failure.
        #[serde(default)]
        failure_details: Option<FailureDetails>,
    },
    /// Decision echo: a durable timer was created.
    TimerCreated {
        /// When it fires (UTC).
        #[serde(with = "time::serde::rfc3339")]
        fire_at: OffsetDateTime,
    },
    /// A durable timer fired.
    TimerFired {
        /// `EventId` of the matching `TimerCreated`.
        timer_id: i32,
        /// When it was due (UTC).
        #[serde(with = "time::serde::rfc3339")]
        fire_at: OffsetDateTime,
    },
    /// Episode start marker; its timestamp is the episode's `current_utc_datetime`.
    OrchestratorStarted,
    /// Episode end marker.
    OrchestratorCompleted,
    /// Decision echo: an event was sent to another instance.
    EventSent {
        /// Target instance id.
        instance_id: String,
        /// Event name.
        name: String,
        /// Serialized payload.
        #[serde(default)]
        input: Option<String>,
    },
    /// An external event arrived.
    EventRaised {
        /// Event name.
        name: String,
        /// Serialized payload.
        #[serde(default)]
        input: Option<String>,
    },
    /// The execution continued as new (never persisted by the dispatcher; see DTF 1.10).
    ContinueAsNew {
        /// The new generation's input.
        #[serde(default)]
        result: Option<String>,
    },
    /// Free-form event, ignored by replay.
    GenericEvent {
        /// Data.
        #[serde(default)]
        data: Option<String>,
    },
    /// Legacy state snapshot, ignored by replay.
    HistoryState {
        /// The snapshot (JSON).
        #[serde(default)]
        state: Option<serde_json::Value>,
    },
    /// The instance was suspended.
    ExecutionSuspended {
        /// Reason.
        #[serde(default)]
        reason: Option<String>,
    },
    /// The instance was resumed.
    ExecutionResumed {
        /// Reason.
        #[serde(default)]
        reason: Option<String>,
    },
    /// Rewind request (not supported by this engine; ignored by replay).
    ExecutionRewound {
        /// Reason.
        #[serde(default)]
        reason: Option<String>,
        /// Parent execution id.
        #[serde(default)]
        parent_execution_id: Option<String>,
        /// Instance id.
        #[serde(default)]
        instance_id: Option<String>,
    },
}

impl EventKind {
    /// The DTF event type of this kind.
    pub fn event_type(&self) -> EventType {
        match self {
            EventKind::ExecutionStarted(_) => EventType::ExecutionStarted,
            EventKind::ExecutionCompleted { .. } => EventType::ExecutionCompleted,
            EventKind::ExecutionFailed => EventType::ExecutionFailed,
            EventKind::ExecutionTerminated { .. } => EventType::ExecutionTerminated,
            EventKind::TaskScheduled { .. } => EventType::TaskScheduled,
            EventKind::TaskCompleted { .. } => EventType::TaskCompleted,
            EventKind::TaskFailed { .. } => EventType::TaskFailed,
            EventKind::SubOrchestrationInstanceCreated { .. } => {
                EventType::SubOrchestrationInstanceCreated
            }
            EventKind::SubOrchestrationInstanceCompleted { .. } => {
                EventType::SubOrchestrationInstanceCompleted
            }
            EventKind::SubOrchestrationInstanceFailed { .. } => {
                EventType::SubOrchestrationInstanceFailed
            }
            EventKind::TimerCreated { .. } => EventType::TimerCreated,
            EventKind::TimerFired { .. } => EventType::TimerFired,
            EventKind::OrchestratorStarted => EventType::OrchestratorStarted,
            EventKind::OrchestratorCompleted => EventType::OrchestratorCompleted,
            EventKind::EventSent { .. } => EventType::EventSent,
            EventKind::EventRaised { .. } => EventType::EventRaised,
            EventKind::ContinueAsNew { .. } => EventType::ContinueAsNew,
            EventKind::GenericEvent { .. } => EventType::GenericEvent,
            EventKind::HistoryState { .. } => EventType::HistoryState,
            EventKind::ExecutionSuspended { .. } => EventType::ExecutionSuspended,
            EventKind::ExecutionResumed { .. } => EventType::ExecutionResumed,
            EventKind::ExecutionRewound { .. } => EventType::ExecutionRewound,
        }
    }
}

/// Fields of DTF's `ExecutionStartedEvent`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExecutionStartedEvent {
    /// The instance and the new execution id.
    pub orchestration_instance: OrchestrationInstance,
    /// Set when started as a sub-orchestration.
    #[serde(default)]
    pub parent_instance: Option<ParentInstance>,
    /// Orchestration name.
    pub name: String,
    /// Orchestration version.
    #[serde(default)]
    pub version: Option<String>,
    /// Serialized input.
    #[serde(default)]
    pub input: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
    /// Legacy correlation.
    #[serde(default)]
    pub correlation: Option<String>,
    /// W3C trace context of the caller.
    #[serde(default)]
    pub parent_trace_context: Option<DistributedTraceContext>,
    /// Delayed start (UTC); the provider delays delivery until then.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub scheduled_start_time: Option<OffsetDateTime>,
    /// Generation counter (set by the client; used by the Azure start de-duplication).
    #[serde(default)]
    pub generation: Option<i32>,
    /// Start a new trace on continue-as-new.
    #[serde(default)]
    pub generate_new_trace: bool,
}

impl ExecutionStartedEvent {
    /// A start event for `instance` running `name` with `input`; the other fields empty.
    pub fn new(
        instance: OrchestrationInstance,
        name: impl Into<String>,
        input: Option<String>,
    ) -> Self {
        Self {
            orchestration_instance: instance,
            parent_instance: None,
            name: name.into(),
            version: None,
            input,
            tags: None,
            correlation: None,
            parent_trace_context: None,
            scheduled_start_time: None,
            generation: None,
            generate_new_trace: false,
        }
    }
}

/// DTF `EventType` with its ordinals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum EventType {
    ExecutionStarted = 0,
    ExecutionCompleted = 1,
    ExecutionFailed = 2,
    ExecutionTerminated = 3,
    TaskScheduled = 4,
    TaskCompleted = 5,
    TaskFailed = 6,
    SubOrchestrationInstanceCreated = 7,
    SubOrchestrationInstanceCompleted = 8,
    SubOrchestrationInstanceFailed = 9,
    TimerCreated = 10,
    TimerFired = 11,
    OrchestratorStarted = 12,
    OrchestratorCompleted = 13,
    EventSent = 14,
    EventRaised = 15,
    ContinueAsNew = 16,
    GenericEvent = 17,
    HistoryState = 18,
    ExecutionSuspended = 19,
    ExecutionResumed = 20,
    ExecutionRewound = 21,
}

impl EventType {
    /// Every event type, in ordinal order.
    pub const ALL: [EventType; 22] = [
        EventType::ExecutionStarted,
        EventType::ExecutionCompleted,
        EventType::ExecutionFailed,
        EventType::ExecutionTerminated,
        EventType::TaskScheduled,
        EventType::TaskCompleted,
        EventType::TaskFailed,
        EventType::SubOrchestrationInstanceCreated,
        EventType::SubOrchestrationInstanceCompleted,
        EventType::SubOrchestrationInstanceFailed,
        EventType::TimerCreated,
        EventType::TimerFired,
        EventType::OrchestratorStarted,
        EventType::OrchestratorCompleted,
        EventType::EventSent,
        EventType::EventRaised,
        EventType::ContinueAsNew,
        EventType::GenericEvent,
        EventType::HistoryState,
        EventType::ExecutionSuspended,
        EventType::ExecutionResumed,
        EventType::ExecutionRewound,
    ];

    /// The DTF ordinal (queue JSON writes this).
    pub fn as_i32(self) -> i32 {
        self as i32
    }

    /// The type with DTF ordinal `v`.
    pub fn from_i32(v: i32) -> Option<Self> {
        usize::try_from(v).ok().and_then(|i| Self::ALL.get(i).copied())
    }

    /// The DTF name (the History table's `EventType` column).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ExecutionStarted => "ExecutionStarted",
            EventType::ExecutionCompleted => "ExecutionCompleted",
            EventType::ExecutionFailed => "ExecutionFailed",
            EventType::ExecutionTerminated => "ExecutionTerminated",
            EventType::TaskScheduled => "TaskScheduled",
            EventType::TaskCompleted => "TaskCompleted",
            EventType::TaskFailed => "TaskFailed",
            EventType::SubOrchestrationInstanceCreated => "SubOrchestrationInstanceCreated",
            EventType::SubOrchestrationInstanceCompleted => "SubOrchestrationInstanceCompleted",
            EventType::SubOrchestrationInstanceFailed => "SubOrchestrationInstanceFailed",
            EventType::TimerCreated => "TimerCreated",
            EventType::TimerFired => "TimerFired",
            EventType::OrchestratorStarted => "OrchestratorStarted",
            EventType::OrchestratorCompleted => "OrchestratorCompleted",
            EventType::EventSent => "EventSent",
            EventType::EventRaised => "EventRaised",
            EventType::ContinueAsNew => "ContinueAsNew",
            EventType::GenericEvent => "GenericEvent",
            EventType::HistoryState => "HistoryState",
            EventType::ExecutionSuspended => "ExecutionSuspended",
            EventType::ExecutionResumed => "ExecutionResumed",
            EventType::ExecutionRewound => "ExecutionRewound",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for an unknown event type or status name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} name {name:?}")]
pub struct UnknownNameError {
    what: &'static str,
    name: String,
}

impl UnknownNameError {
    pub(crate) fn new(what: &'static str, name: &str) -> Self {
        Self { what, name: name.to_owned() }
    }
}

impl FromStr for EventType {
    type Err = UnknownNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownNameError::new("event type", s))
    }
}

/// DTF `OrchestrationInstance`: an instance id and (optionally) one execution of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct OrchestrationInstance {
    /// Instance id (user-chosen or 32 hex chars).
    pub instance_id: String,
    /// Execution id (32 hex chars). `None` in messages means "the current execution".
    #[serde(default)]
    pub execution_id: Option<String>,
}

impl OrchestrationInstance {
    /// An instance reference with no execution id.
    pub fn new(instance_id: impl Into<String>) -> Self {
        Self { instance_id: instance_id.into(), execution_id: None }
    }

    /// An instance reference to one execution.
    pub fn with_execution(instance_id: impl Into<String>, execution_id: impl Into<String>) -> Self {
        Self { instance_id: instance_id.into(), execution_id: Some(execution_id.into()) }
    }
}

impl fmt::Display for OrchestrationInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[InstanceId: {}, ExecutionId: {}]",
            self.instance_id,
            self.execution_id.as_deref().unwrap_or("")
        )
    }
}

/// DTF `ParentInstance` (note DTF's spelling `TaskScheduleId`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ParentInstance {
    /// Parent orchestration name.
    #[serde(default)]
    pub name: Option<String>,
    /// Parent orchestration version.
    #[serde(default)]
    pub version: Option<String>,
    /// Parent instance and execution.
    pub orchestration_instance: OrchestrationInstance,
    /// Id of the parent's `SubOrchestrationInstanceCreated` event.
    pub task_schedule_id: i32,
}

/// DTF `DistributedTraceContext`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct DistributedTraceContext {
    /// W3C traceparent.
    #[serde(default)]
    pub trace_parent: Option<String>,
    /// W3C tracestate.
    #[serde(default)]
    pub trace_state: Option<String>,
}

/// DTF `FailureDetails`: a structured, serializable description of an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FailureDetails {
    /// Error type name (DTF default `"None"`).
    pub error_type: String,
    /// Error message.
    pub error_message: String,
    /// Stack trace or other details.
    #[serde(default)]
    pub stack_trace: Option<String>,
    /// The cause.
    #[serde(default)]
    pub inner_failure: Option<Box<FailureDetails>>,
    /// When true, retry policies do not retry.
    #[serde(default)]
    pub is_non_retriable: bool,
    /// Extra properties.
    #[serde(default)]
    pub properties: Option<BTreeMap<String, serde_json::Value>>,
}

impl FailureDetails {
    /// Failure details with a type and message.
    pub fn new(error_type: impl Into<String>, error_message: impl Into<String>) -> Self {
        Self {
            error_type: error_type.into(),
            error_message: error_message.into(),
            stack_trace: None,
            inner_failure: None,
            is_non_retriable: false,
            properties: None,
        }
    }

    /// True when this failure, or one of its inner failures, has `error_type`.
    pub fn is_caused_by(&self, error_type: &str) -> bool {
        self.error_type == error_type
            || self.inner_failure.as_ref().is_some_and(|f| f.is_caused_by(error_type))
    }
}

impl fmt::Display for FailureDetails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_type, self.error_message)
    }
}

/// DTF `OrchestrationExecutionContext`: tags attached to activity and sub-orchestration messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct OrchestrationExecutionContext {
    /// Orchestration tags.
    #[serde(default)]
    pub orchestration_tags: BTreeMap<String, String>,
}

/// DTF `TaskMessage`: a history event addressed to an orchestration instance (or, for
/// `TaskScheduled`, to the activity queue on behalf of that instance).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskMessage {
    /// The event to deliver.
    pub event: HistoryEvent,
    /// Not used by core (DTF keeps it for compatibility).
    #[serde(default)]
    pub sequence_number: i64,
    /// Target instance (for activities: the scheduling instance).
    pub orchestration_instance: OrchestrationInstance,
    /// Tags, for activity and sub-orchestration messages.
    #[serde(default)]
    pub orchestration_execution_context: Option<OrchestrationExecutionContext>,
}

impl TaskMessage {
    /// A message carrying `event` to `instance`.
    pub fn new(instance: OrchestrationInstance, event: HistoryEvent) -> Self {
        Self {
            event,
            sequence_number: 0,
            orchestration_instance: instance,
            orchestration_execution_context: None,
        }
    }

    /// The earliest time a provider may deliver this message: a timer's fire time, a delayed
    /// start's start time, a scheduled entity signal's due time (`op@{time}`); `None`: now.
    pub fn deliver_at(&self) -> Option<OffsetDateTime> {
        match &self.event.kind {
            EventKind::TimerFired { fire_at, .. } => Some(*fire_at),
            EventKind::ExecutionStarted(s) => s.scheduled_start_time,
            EventKind::EventRaised { name, .. } => crate::entity::scheduled_time_of(name),
            _ => None,
        }
    }
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod tests;
